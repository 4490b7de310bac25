"""Figures for the page: distinct method colours, honest percentages and axes, numbered captions."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from hwutils import plotting
from hwutils.experiments import Method, run_sweep, summarize
from hwutils.models import MLP, ModelConfig
from hwutils.training import TrainConfig

PART2 = ["no penalty", "L1", "L2", "early stopping", "L1 (proximal)"]
PART3 = ["L2", "L2 + L1 (late)", "L2 + KL-sparsity", "max-norm", "dropout + L2",
         "dropout + max-norm"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def two_methods(moons):
    methods = [Method("a", ModelConfig(hidden=(8,)), TrainConfig(epochs=2, l2=1e-3)),
               Method("b", ModelConfig(hidden=(8,)), TrainConfig(epochs=2, patience=1))]
    return run_sweep(methods, moons, seeds=(0, 1), results_dir=None, progress=False)


def labelled(fig) -> bool:
    """Every axis with data has an x and a y label (on itself or a shared/twin sibling)."""
    for ax in fig.axes:
        if ax.has_data():
            xs = ax.get_shared_x_axes().get_siblings(ax)
            ys = ax.get_shared_y_axes().get_siblings(ax)
            if not (any(a.get_xlabel() for a in xs) and any(a.get_ylabel() for a in ys)):
                return False
    return True


@pytest.mark.parametrize("names", [PART2, PART3, [f"method {i}" for i in range(6)]],
                         ids=["part2", "part3", "new"])
def test_distinct_methods_never_share_a_colour(names):
    colors = plotting.method_colors(names)
    assert len(set(colors.values())) == len(names)


def test_a_method_keeps_its_colour_and_style_in_every_figure():
    max_norm = plotting.method_colors(PART3)["max-norm"]
    assert plotting.method_colors(["L2", "max-norm"])["max-norm"] == max_norm
    assert plotting.method_colors(["z", "y"])["y"] == plotting.method_colors(["y"])["y"]
    # a method that coincides with another for a while is drawn dashed, so the one beneath shows
    styles = plotting.method_styles(PART3)
    assert styles["L2 + L1 (late)"]["ls"] != styles["L2"]["ls"]


def test_unit_norm_axis_always_shows_the_max_norm_radius():
    model = MLP(3, (5,), 2)
    with torch.no_grad():
        model.layers[0].weight.mul_(0.01)  # every unit far inside the ball
    fig = plotting.plot_unit_norms({"L2": model}, c=3.5)
    lo, hi = fig.axes[0].get_xlim()
    assert lo <= 3.5 <= hi
    assert "caps" not in fig.axes[0].get_title()


def test_exact_zeros_are_drawn_and_counted(moons):
    dense, sparse = MLP(2, (8,), 2), MLP(2, (8,), 2)
    with torch.no_grad():
        for layer in sparse.layers:
            layer.weight[1:] = 0  # most weights exactly zero
    fig = plotting.plot_weight_histograms({"dense": dense, "sparse": sparse})
    zero_ax = fig.axes[0]
    heights = [p.get_height() for p in zero_ax.patches]
    assert heights[0] == 0 and 0 < heights[1] < 100
    assert labelled(fig)


def test_bar_labels_sit_above_the_error_bars(two_methods):
    summary = summarize(two_methods)
    fig = plotting.plot_error_bars(summary, "test_error_pct")
    mean, std = summary[("test_error_pct", "mean")], summary[("test_error_pct", "std")].fillna(0)
    top = (mean + std).to_numpy()
    label_y = [t.get_position()[1] for t in fig.axes[0].texts]
    assert np.all(np.array(label_y) > top)


def test_every_figure_is_page_sized_with_labelled_axes_and_few_panels_per_row(two_methods, moons):
    models = {r.method: r.model for r in two_methods if r.seed == 0}
    t = np.arange(1, 51)
    mean, se = np.ones((2, 50)), np.full((2, 50), 0.01)
    figures = [
        plotting.plot_training_curves(two_methods), plotting.plot_iteration_loss(two_methods),
        plotting.plot_method_panels(two_methods, "b"),
        plotting.plot_decision_boundaries(models, moons.train),
        plotting.plot_weight_histograms(models), plotting.plot_error_bars(summarize(two_methods)),
        plotting.plot_unit_norms(models, c=1.0), plotting.plot_activity(models, moons.val.X),
        plotting.plot_point_cloud(moons),
        plotting.plot_second_moment_check(t, mean, se, (0.9, 0.99)),
        plotting.plot_second_moment_deviation(t, mean, mean, (0.9, 0.99), z_accept=5.0),
        plotting.plot_uncorrected_steps(t, np.ones(50), np.full(50, 2.0), lr=1.0),
        plotting.plot_nonstationary(t, {"shrinking": (mean, se, mean)}, (0.9, 0.99),
                                    {"shrinking": 0.99}),
    ]
    for fig in figures:
        assert isinstance(fig, matplotlib.figure.Figure)
        assert labelled(fig)
        assert fig.get_figwidth() <= 8, "wider than the page: fonts would shrink"
        plotting_axes = [ax for ax in fig.axes if ax.has_data()]
        rows = {round(ax.get_position().y0, 2) for ax in plotting_axes}
        assert len(plotting_axes) <= 3 * len(rows), "more than three panels in a row"


def test_training_curves_keep_two_panels_per_row_and_no_empty_axes(two_methods):
    fig = plotting.plot_training_curves(two_methods)
    assert len(fig.axes) == 5  # the spare slot of the 3 x 2 grid holds the legend, not an axis
    assert max(sum(1 for b in fig.axes if abs(b.get_position().y0 - a.get_position().y0) < 1e-3)
               for a in fig.axes) == 2
