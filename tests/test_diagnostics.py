import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from hwutils.diagnostics import hidden_activity, near_zero_fraction, unit_norms
from hwutils.experiments import Method, run_sweep, summarize
from hwutils.models import MLP, ModelConfig
from hwutils import plotting
from hwutils.training import TrainConfig


def test_near_zero_fraction_counts_small_weights_but_not_biases():
    model = MLP(2, (2,), 2)
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[0.0, 1.0], [1e-4, -2.0]]))
        model.layers[1].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        for layer in model.layers:
            layer.bias.zero_()
    assert near_zero_fraction(model, tol=1e-3) == pytest.approx(2 / 8)


def test_unit_norms_and_activity_are_per_hidden_unit():
    model = MLP(3, (5, 4), 2)
    assert unit_norms(model).shape == (9,)
    stats = hidden_activity(model, torch.randn(50, 3))
    assert stats["active_fraction"].shape == (9,)
    assert ((stats["active_fraction"] >= 0) & (stats["active_fraction"] <= 1)).all()


def test_every_figure_labels_its_axes(moons):
    results = run_sweep([Method("a", ModelConfig(hidden=(8,)), TrainConfig(epochs=2, l2=1e-3)),
                         Method("b", ModelConfig(hidden=(8,)), TrainConfig(epochs=2))],
                        moons, seeds=(0, 1), results_dir=None, progress=False)
    models = {r.method: r.model for r in results if r.seed == 0}
    figures = [
        plotting.plot_training_curves(results), plotting.plot_iteration_loss(results),
        plotting.plot_method_panels(results), plotting.plot_decision_boundaries(models, moons.train),
        plotting.plot_weight_histograms(models), plotting.plot_error_bars(summarize(results)),
        plotting.plot_unit_norms(models, c=1.0), plotting.plot_activity(models, moons.val.X),
        plotting.plot_point_cloud(moons),
    ]
    for fig in figures:
        for ax in fig.axes:
            if ax.has_data():  # twin and shared axes carry their label on one sibling
                xs, ys = ax.get_shared_x_axes().get_siblings(ax), ax.get_shared_y_axes().get_siblings(ax)
                assert any(a.get_xlabel() for a in xs) and any(a.get_ylabel() for a in ys), f"unlabelled axis: {ax}"
    matplotlib.pyplot.close("all")
