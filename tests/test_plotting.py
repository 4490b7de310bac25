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


def _summary(errors: dict, seeds: int = 1):
    """A :func:`summarize`-like table of test errors (%), std NaN with one seed."""
    import pandas as pd

    frame = pd.DataFrame({("seeds", "n"): seeds,
                          ("test_error_pct", "mean"): list(errors.values()),
                          ("test_error_pct", "std"): [float("nan") if seeds == 1 else 0.1] * len(errors)},
                         index=list(errors))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def test_each_value_label_sits_on_its_own_bar_not_on_the_reference(two_methods):
    summary = summarize(two_methods)
    reference = {"a": 80.0, "b": 0.5}
    fig = plotting.plot_error_bars(summary, "test_error_pct", reference=reference)
    ax = fig.axes[0]
    mean, std = summary[("test_error_pct", "mean")], summary[("test_error_pct", "std")]
    # method i's bar is centred at i - 0.2, its reference's at i + 0.2
    expected = {}
    for i, name in enumerate(summary.index):
        expected[round(i - 0.2, 6)] = (mean[name], mean[name] + std[name])
        expected[round(i + 0.2, 6)] = (reference[name], reference[name])
    pad = 0.1 * ax.get_ylim()[1]
    assert len(ax.texts) == 4
    for text in ax.texts:
        x, y = text.get_position()
        value, top = expected[round(x, 6)]
        assert text.get_text() == f"{value:.2f}" and top < y < top + pad, "on its own bar, just above"
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "mean ± std over 2 seeds" in legend


def test_one_seed_draws_a_two_standard_error_band_instead_of_error_bars():
    fig = plotting.plot_error_bars(_summary({"L2": 1.3, "max-norm": 1.4}), n_test=10_000)
    ax = fig.axes[0]
    bands = [p for p in ax.patches if p.get_alpha() is not None and p.get_height() > 0]
    se = 100 * (0.013 * 0.987 / 10_000) ** 0.5
    assert len(bands) == 2 and abs(bands[0].get_height() - 4 * se) < 1e-9  # 1.3 ± 2 s.e.
    assert not any(line.get_linestyle() != "None" for line in ax.lines), "no error bars drawn"
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "std over" not in legend and "± 2 s.e." in legend and "10,000" in legend
    for text, bar_top in zip(ax.texts, (1.3 + 2 * se, 1.4 + 2 * 100 * (0.014 * 0.986 / 10_000) ** 0.5)):
        assert text.get_position()[1] > bar_top, "the label clears the band"


def _history(val_error, penalty=None, iterations=12_000):
    from hwutils.training import History

    n = len(val_error)
    return History(iter_loss=list(np.linspace(2, 0.1, iterations)), train_loss=list(np.linspace(2, 0.1, n)),
                   penalty=penalty or [0.0] * n, val_loss=list(np.linspace(1, 0.5, n)),
                   val_error=list(val_error), small_weights=[0.0] * n, best_epoch=n)


def _run(method, history, seed=0):
    from hwutils.experiments import RunResult

    return RunResult(method, seed, "k", history, history.val_error[-1], history.val_error[-1])


def test_method_panels_draw_the_penalty_only_where_there_is_one_and_ticks_do_not_collide():
    with_penalty = _run("L2", _history(np.linspace(0.5, 0.02, 30), penalty=list(np.linspace(1, 2, 30))))
    without = _run("max-norm", _history(np.linspace(0.5, 0.02, 30)))
    fig = plotting.plot_method_panels([with_penalty, without], "L2")
    legends = " ".join(t.get_text() for ax in fig.axes if ax.get_legend()
                       for t in ax.get_legend().get_texts())
    assert "weighted penalty" in legends and len(fig.axes) == 5  # the penalty's own right axis
    fig = plotting.plot_method_panels([with_penalty, without], "max-norm")
    assert len(fig.axes) == 4 and "no penalty term" in [ax.get_title() for ax in fig.axes]
    fig.canvas.draw()
    iterations = fig.axes[0]
    low, high = iterations.get_xlim()
    labels = [t.get_text() for t in iterations.xaxis.get_ticklabels() if low <= t.get_position()[0] <= high]
    assert len(labels) <= 6 and "12,000" in labels, "few ticks, thousands separated"


def test_the_validation_panel_zooms_onto_a_small_late_spread():
    start = np.linspace(0.075, 0.016, 10)
    runs = [_run("L2", _history(np.r_[start, np.full(40, 0.0144)])),
            _run("L2 + KL-sparsity", _history(np.r_[start, np.full(40, 0.0159)]))]
    fig = plotting.plot_training_curves(runs, panels=("val_loss", "val_error"))
    val_error = next(ax for ax in fig.axes if ax.get_ylabel().startswith("validation error"))
    low, high = val_error.get_ylim()
    assert low < 1.44 and 1.59 < high < 2.0, "1.44 % and 1.59 % apart, not squeezed under 7.5 %"
    assert "zoomed" in val_error.get_ylabel()


def test_methods_that_coincide_are_drawn_so_that_the_one_beneath_shows():
    styles = plotting.method_styles(PART3 + ["L2, dropout's epochs"])
    assert styles["L2 + KL-sparsity"]["ls"] != styles["L2"]["ls"]
    assert styles["L2, dropout's epochs"]["ls"] != styles["L2"]["ls"]


def _lr_table():
    import pandas as pd

    rows = []
    for method, field, values in (("L2", "l2", (1e-5, 1e-4)), ("max-norm", "max_norm", (2.0, 3.5)),
                                  ("dropout + L2", "l2", (1e-5,)),
                                  ("dropout + max-norm", "max_norm", (3.5,))):
        for value in values:
            for lr, err in ((0.01, 5.0), (0.1, 3.0), (1.0, 2.0)):  # every method alike: lines coincide
                rows.append({"method": method, "lr": lr, "field": field, "value": value,
                             "val_error_pct": err, "diverged": False, "at_cap_peak_pct": 50.0,
                             "dead_pct": 0.0})
    return pd.DataFrame(rows)


def test_the_learning_rate_study_separates_equal_lines_and_labels_its_log_axis_readably():
    fig = plotting.plot_lr_study(_lr_table(), chosen={"L2": (1.0, 1e-4), "max-norm": (1.0, 2.0)})
    without, with_dropout = fig.axes[0], fig.axes[1]
    assert without.get_title() == "without dropout" and with_dropout.get_title() == "with dropout"
    lines = [line for line in without.lines if line.get_label() and not line.get_label().startswith("_")]
    assert len(lines) == 4  # two methods × two constants, each its own line
    xs = {tuple(np.round(line.get_xdata(), 6)) for line in lines}
    assert len(xs) == 4, "lines with the same values are side by side, not on top of each other"
    fig.canvas.draw()
    ticks = [t.get_text() for t in without.yaxis.get_ticklabels() if t.get_text()]
    assert {"2", "3", "5"} <= set(ticks), "3–5 % can be read off the log axis"
    stars = [line for line in without.lines if line.get_marker() == "*"]
    colours = plotting.method_colors(["L2", "max-norm"])
    assert sorted(matplotlib.colors.to_hex(s.get_color()) for s in stars) == sorted(colours.values())


def test_the_activity_legend_gives_the_means_the_activity_table_gives(moons):
    from hwutils.diagnostics import end_of_training

    models = {"L2": MLP(2, (16, 16), 2), "L2 + KL-sparsity": MLP(2, (16, 16), 2)}
    measured = {name: end_of_training(m, moons.val.X) for name, m in models.items()}
    for source in (models, measured):
        fig = plotting.plot_activity(source, moons.val.X, rho=0.05)
        legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
        for m in measured.values():
            assert f"ρ̂ = {m['rho_hat']:.3f}" in legend and f"{m['active_fraction']:.3f}" in legend
        assert "ρ = 0.05" in legend
