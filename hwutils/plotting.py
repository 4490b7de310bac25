"""Plotting: one seaborn style, and the figures the notebooks share.

Every function takes already-computed results (histories, models, tables), draws on new or given
axes, labels every axis with its unit, and returns the matplotlib Figure. Showing a figure with
its numbered caption, tables and number formatting are :mod:`hwutils.display`'s.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import seaborn as sns
import torch

from .diagnostics import WEIGHT_LOG10_BINS, flat_weights, hidden_activity, unit_norms, unit_values
from .display import format_percent
from .profiles import CONSTANT_LABELS
from .optim import bias_correction, uncorrected_step_ratio
from .profiles import LONG_L2
from .thresholds import AT_CAP, NEAR_ZERO, at_cap_text, near_zero_text, power_of_ten

__all__ = [
    "PAGE_WIDTH", "use_style", "method_colors", "method_styles",
    "plot_training_curves", "plot_iteration_loss", "plot_decision_boundaries",
    "plot_weight_histograms", "plot_error_bars", "plot_sweep", "plot_method_panels",
    "plot_unit_norms", "plot_activity", "plot_point_cloud", "plot_second_moment_check",
    "plot_second_moment_deviation", "plot_uncorrected_steps", "plot_nonstationary",
    "plot_lr_study", "plot_l1_tradeoff", "plot_paired_differences",
]

#: Width (inches) of a figure that spans the text column: the PDF shows it at ≈ 6.3 in, so the
#: font sizes of :func:`use_style` come out at 8–9 pt on the page.
PAGE_WIDTH = 7.0

#: The per-epoch panels and their axis labels (losses: cross-entropy in nats, without the penalty).
EPOCH_PANELS = {
    "train_loss": "training data loss",
    "penalty": "weighted penalty",
    "val_loss": "validation loss",
    "val_error": "validation error (%)",
    "small_weights": f"weights with {near_zero_text()} (%)",
}

#: Ten clearly different colours (matplotlib's tab10): no two methods of a figure share one.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
#: The report's methods: one colour and line style each, the same in every figure. A method that
#: coincides with another for a while (early stopping; L2 + L1 before L1 starts; L2 + KL, whose
#: small penalty keeps it near L2; L2 trained longer) is dashed, so that the line beneath shows.
METHOD_STYLES = {
    "no penalty": {"color": "#4d4d4d", "ls": "-"},
    "L1": {"color": PALETTE[1], "ls": "-"},
    "L2": {"color": PALETTE[0], "ls": "-"},
    "early stopping": {"color": PALETTE[2], "ls": "--"},
    "L1 (proximal)": {"color": PALETTE[4], "ls": "-"},
    "L2 + L1 (late)": {"color": PALETTE[1], "ls": "--"},
    "L2 + KL-sparsity": {"color": PALETTE[2], "ls": (0, (5, 2))},
    "max-norm": {"color": PALETTE[3], "ls": "-"},
    "dropout + L2": {"color": PALETTE[4], "ls": "-"},
    "dropout + max-norm": {"color": PALETTE[5], "ls": "-"},
    LONG_L2: {"color": PALETTE[7], "ls": "-."},
}
_assigned_styles: dict[str, dict] = {}  # methods outside METHOD_STYLES, in order of first use


def use_style() -> None:
    """The report's one figure style, sized for the page (call once at the top of a notebook)."""
    sns.set_theme(style="whitegrid", context="paper", palette="colorblind")
    plt.rcParams.update({
        "figure.dpi": 120, "figure.figsize": (PAGE_WIDTH, 3.2),
        "figure.autolayout": False, "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 9.5,
        "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 8.5,
        "legend.title_fontsize": 8.5, "figure.titlesize": 11, "lines.linewidth": 1.5,
        # Figures are SVG (hwutils.display.caption): text as paths (the same glyphs in every
        # browser and in Typst), ids that do not change between runs; anything rasterized in
        # them, and a figure that falls back to PNG, at print resolution.
        "svg.fonttype": "path", "svg.hashsalt": "hw3", "savefig.dpi": 300,
    })


def method_styles(names) -> dict[str, dict]:
    """Colour and line style (``{"color", "ls"}``) per method: fixed for the report's methods
    (:data:`METHOD_STYLES`), else the next unused colour; distinct methods of one call never
    share a colour."""
    styles, used = {}, set()
    for name in dict.fromkeys(names):
        style = METHOD_STYLES.get(name) or _assigned_styles.get(name)
        if style is None or style["color"] in used:
            free = [c for c in PALETTE if c not in used and c not in
                    {s["color"] for n, s in _assigned_styles.items() if n != name}]
            style = {"color": (free or [c for c in PALETTE if c not in used] or PALETTE)[0],
                     "ls": "-" if style is None else style["ls"]}
            _assigned_styles.setdefault(name, style)
        styles[name] = style
        used.add(style["color"])
    return styles


def method_colors(names) -> dict:
    """A fixed colour per method, so a method has the same colour in every figure."""
    return {name: style["color"] for name, style in method_styles(names).items()}


def _legend_below(fig, handles, labels, ncol: int = 3) -> None:
    """One legend for the whole figure, under its axes."""
    rows = math.ceil(len(labels) / ncol)
    height = (0.2 * rows + 0.08) / fig.get_figheight()
    fig.tight_layout(rect=(0, height, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)


def _grid(n: int, height: float, ncols: int = 2, **kwargs):
    """A figure of ``n`` panels, at most ``ncols`` per row, page-wide; unused slots removed."""
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PAGE_WIDTH, height * nrows + 0.5),
                             squeeze=False, **kwargs)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n]), list(axes.flat[n:])


def _legend_in_spare_slot(fig, spare, handles, labels, ncol_below: int = 3, **kwargs) -> None:
    """The legend in the grid's first unused slot (removed), else under the axes."""
    if not spare:
        _legend_below(fig, handles, labels, ncol=ncol_below)
        return
    fig.tight_layout()
    box = spare[0].get_position()
    center = (box.x0 + box.width / 2, box.y0 + box.height / 2)
    fig.legend(handles, labels, loc="center", bbox_to_anchor=center, **kwargs)
    fig.delaxes(spare[0])


def _by_method(results) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for r in results:
        grouped.setdefault(r.method, []).append(r)
    return grouped


def _mean_band(ax, curves, label, style, scale=1.0) -> np.ndarray:
    """Mean over seeds with a min-max band; seeds may have run different numbers of epochs.
    Returns the mean curve."""
    length = max(len(c) for c in curves)
    arr = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        arr[i, :len(c)] = np.asarray(c) * scale
    x = np.arange(1, length + 1)
    mean = np.nanmean(arr, 0)
    ax.plot(x, mean, label=label, color=style["color"], ls=style["ls"])
    if len(curves) > 1:
        ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), color=style["color"], alpha=0.15,
                        lw=0)
    return mean


#: The share of its epochs a curve is given to settle before :func:`_zoom_on_late_epochs` looks.
SETTLE = 0.2


def _zoom_on_late_epochs(ax, curves) -> bool:
    """Zoom the y axis onto the curves' values after their first :data:`SETTLE` epochs when those
    span under a third of the whole range (so that a spread of 0.1 points is not one line); the
    early epochs then leave the panel at the top. Returns whether it zoomed."""
    late = np.concatenate([c[int(SETTLE * len(c)):] for c in curves])
    late, whole = late[np.isfinite(late)], np.concatenate(curves)
    whole = whole[np.isfinite(whole)]
    if not len(late) or np.ptp(whole) == 0 or np.ptp(late) > np.ptp(whole) / 3:
        return False
    pad = 0.12 * max(np.ptp(late), 1e-3 * abs(late.max()))
    ax.set_ylim(late.min() - pad, late.max() + pad)
    return True


def plot_training_curves(results, panels=tuple(EPOCH_PANELS), title=None, log_loss=True,
                         log_epochs=False, zoom: bool = True, mark_epoch: int | None = None):
    """Per-epoch curves of every method (mean over seeds, band = min-max): training data loss,
    penalty, validation loss, validation error — two panels per row. The penalty is its own panel,
    so methods are compared by data loss. A dot marks each method's best epoch (first seed).
    ``log_epochs``: a log epoch axis, for runs whose early epochs matter most. ``zoom``: the
    validation-error panel zooms onto the later epochs where the methods lie close together
    (its axis label says so). ``mark_epoch``: a dotted vertical line after that epoch in every
    panel (e.g. where late L1 switches on)."""
    grouped = _by_method(results)
    styles = method_styles(grouped)
    fig, axes, spare = _grid(len(panels), 2.2, sharex=True)
    for ax, panel in zip(axes, panels):
        curves = []
        for name, runs in grouped.items():
            scale = 100.0 if panel in ("val_error", "small_weights") else 1.0
            curves.append(_mean_band(ax, [getattr(r.history, panel) for r in runs], name,
                                     styles[name], scale))
            best = runs[0].history.best_epoch
            if panel in ("val_loss", "val_error") and best:
                y_best = getattr(runs[0].history, panel)[best - 1] * scale
                ax.plot(best, y_best, "o", color=styles[name]["color"], ms=4)
        ax.set_xlabel("epoch (log scale)" if log_epochs else "epoch")
        ax.set_xscale("log" if log_epochs else "linear")
        if not log_epochs:
            _count_ticks(ax.xaxis, nbins=6)
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_ylabel(EPOCH_PANELS[panel])
        if mark_epoch is not None:
            ax.axvline(mark_epoch + 0.5, color="gray", ls=":", lw=1.2)
        if zoom and panel == "val_error" and _zoom_on_late_epochs(ax, curves):
            ax.set_ylabel(f"{EPOCH_PANELS[panel]},\nzoomed: early epochs above")
        if log_loss and panel in ("train_loss", "val_loss", "penalty"):
            if all(min(getattr(r.history, panel)) > 0 for runs in grouped.values() for r in runs):
                ax.set_yscale("log")
                _log_ticks_for(ax.yaxis, np.concatenate(curves))
    fig.suptitle(title or "Training data loss falls for every method; "
                          "validation curves show which generalizes")
    seeds = max(len(runs) for runs in grouped.values())
    _legend_in_spare_slot(fig, spare, *axes[0].get_legend_handles_labels(),
                          title=f"mean over {seeds} seeds (band: min–max)" if seeds > 1 else None)
    return fig


def _running_mean(values, window: int):
    """(x, mean over the last ``window`` values) for every full window."""
    values = np.asarray(values)
    k = max(1, min(window, len(values)))
    return np.arange(k - 1, len(values)), np.convolve(values, np.ones(k) / k, mode="valid")


def _iteration_curves(history, smooth: int):
    """A history's minibatch losses against the iteration, raw and as a running mean over
    ``smooth`` iterations: ((x, loss), (x, mean)). A coarsened history (``iter_loss_every`` = s)
    holds means of s minibatches, drawn at their iterations."""
    every = history.iter_loss_every
    loss = np.asarray(history.iter_loss)
    x, mean = _running_mean(loss, max(1, round(smooth / every)))
    return (np.arange(len(loss)) * every, loss), (x * every, mean)


def plot_iteration_loss(results, smooth: int = 50, title=None):
    """Training data loss of every minibatch (first seed per method), with a running mean of
    ``smooth`` iterations on top of the raw (faint) values; log scale."""
    grouped = _by_method(results)
    styles = method_styles(grouped)
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.4))
    for name, runs in grouped.items():
        raw, mean = _iteration_curves(runs[0].history, smooth)
        ax.plot(*raw, color=styles[name]["color"], alpha=0.12, lw=0.5)
        ax.plot(*mean, **styles[name], label=name)
    ax.set_yscale("log")
    _count_ticks(ax.xaxis)
    ax.set_xlabel("iteration (minibatch update)")
    ax.set_ylabel("training data loss (cross-entropy)")
    ax.set_title(title or f"Per-iteration training loss (running mean over {smooth} updates)")
    _legend_below(fig, *ax.get_legend_handles_labels())
    return fig


@torch.no_grad()
def plot_decision_boundaries(models: dict, split, errors: dict | None = None, grid: int = 250,
                             title=None):
    """Each model's decision regions (probability of class 1) over the 2-D points of ``split``,
    two panels per row."""
    X, y = split.X.cpu().numpy(), split.y.cpu().numpy()
    pad = 0.5
    xs = np.linspace(X[:, 0].min() - pad, X[:, 0].max() + pad, grid)
    ys = np.linspace(X[:, 1].min() - pad, X[:, 1].max() + pad, grid)
    gx, gy = np.meshgrid(xs, ys)
    points = torch.tensor(np.c_[gx.ravel(), gy.ravel()], dtype=torch.float32)
    fig, axes, _ = _grid(len(models), 2.7, sharex=True, sharey=True)
    ncols = min(2, len(models))
    for i, (ax, (name, model)) in enumerate(zip(axes, models.items())):
        model.eval()
        device = next(model.parameters()).device
        prob = torch.softmax(model(points.to(device)), 1)[:, 1].cpu().numpy().reshape(gx.shape)
        ax.contourf(gx, gy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.2)
        ax.scatter(X[:, 0], X[:, 1], c=y, cmap="RdBu_r", edgecolors="k", s=12, lw=0.4)
        ax.set_title(name if errors is None else f"{name} (test error {100 * errors[name]:.1f} %)")
        ax.set_xlabel("$x_1$" if i >= len(models) - ncols else "")
        ax.set_ylabel("$x_2$" if i % ncols == 0 else "")
    fig.suptitle(title or "Decision boundaries (black: p = 0.5) over the training points")
    fig.tight_layout()
    return fig


def _weight_magnitudes(source, tol: float) -> dict:
    """Exactly-zero and below-``tol`` shares (%) of a model's weights and the histogram of log10 |w|
    of the non-zero ones over :data:`~hwutils.diagnostics.WEIGHT_LOG10_BINS`: measured on a model,
    or read from a run's end-of-training measurements (which hold exactly these)."""
    lo, hi, bins = WEIGHT_LOG10_BINS
    if isinstance(source, torch.nn.Module):
        w = flat_weights(source).abs().numpy()
        nonzero = w[w > 0]
        counts, _ = np.histogram(np.clip(np.log10(nonzero), lo, hi), bins=bins, range=(lo, hi))
        return {"zero_pct": 100 * float((w == 0).mean()), "below_pct": 100 * float((w < tol).mean()),
                "counts": counts}
    if not math.isclose(tol, NEAR_ZERO):
        raise ValueError(f"end-of-training measurements count weights below {NEAR_ZERO:g}, not "
                         f"{tol:g}: pass models to plot_weight_histograms for another tol")
    return {"zero_pct": source["zero_pct"], "below_pct": source["near_zero_pct"],
            "counts": np.asarray(source["abs_weight_histogram"])}


def plot_weight_histograms(models: dict, tol: float = NEAR_ZERO, title=None):
    """Weights per method: left, the share that is exactly zero (bars); right, the histogram of
    the non-zero |w| on log axes, with the share of weights below ``tol``. ``models`` maps a
    method to a model or to a run's end-of-training measurements."""
    styles = method_styles(models)
    weights = {name: _weight_magnitudes(m, tol) for name, m in models.items()}
    fig, (zero_ax, ax) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.4), width_ratios=(1, 4))
    for i, (name, w) in enumerate(weights.items()):
        zero = w["zero_pct"]
        zero_ax.bar(i, zero, color=styles[name]["color"], width=0.8)
        inside = zero > 55
        zero_ax.text(i, zero - 3 if inside else zero + 3, format_percent(zero), rotation=90,
                     ha="center", va="top" if inside else "bottom", fontsize=8,
                     color="white" if inside else "black")
    zero_ax.set(xticks=[], ylim=(0, 100), xlabel="method (colour)",
                ylabel="exactly zero (% of weights)")
    lo, hi, bins = WEIGHT_LOG10_BINS
    edges = np.logspace(lo, hi, bins + 1)
    filled = np.flatnonzero(np.sum([w["counts"] for w in weights.values()], axis=0))
    for name, w in weights.items():
        below = format_percent(w["below_pct"])
        ax.stairs(w["counts"], edges, lw=1.5, **styles[name],
                  label=f"{name}: {below} % below {power_of_ten(tol)}")
    if len(filled):
        ax.set_xlim(edges[filled[0]], edges[filled[-1] + 1])
    ax.axvline(tol, color="gray", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="|weight| of the non-zero weights (log scale)",
           ylabel="number of weights (log scale)")
    fig.suptitle(title or "Weight magnitudes: a sparse solution puts mass far left of the dotted "
                          "line")
    handles, labels = ax.get_legend_handles_labels()
    _legend_below(fig, handles, labels, ncol=2)
    return fig


def _binomial_se_pct(error_pct, n: int):
    """Standard error (percentage points) of an error rate measured on ``n`` independent images."""
    p = np.asarray(error_pct, dtype=float) / 100
    return 100 * np.sqrt(p * (1 - p) / n)


def plot_error_bars(summary, column: str = "test_error_pct", reference: dict | None = None,
                    reference_label: str = "reference", title=None, ylabel="test error (%)",
                    n_test: int | None = None):
    """A bar per method of a :func:`hwutils.experiments.summarize` column (mean over seeds), and
    the spread that goes with it: with several seeds an error bar of ± 1 std over seeds; with one
    seed and ``n_test`` (the images the error was measured on) a band of ± 2 binomial standard
    errors around the top of the bar, the noise of one measurement. ``reference`` values (e.g.
    Table 9) are grey bars beside the method's own. Each bar's value is written above it (and above
    its error bar or band)."""
    names = list(summary.index)
    mean = summary[(column, "mean")].to_numpy(dtype=float)
    std = summary[(column, "std")].to_numpy(dtype=float)
    seeds = int(summary[("seeds", "n")].max()) if ("seeds", "n") in summary.columns else 1
    colors = method_colors(names)
    fig, ax = plt.subplots(figsize=(0.85 * PAGE_WIDTH, 3.4))
    x = np.arange(len(names), dtype=float)
    width = 0.8
    if reference:
        width = 0.4
        ref = np.array([reference.get(n, np.nan) for n in names], dtype=float)
        ref_x = x + width / 2
        ax.bar(ref_x, ref, width=width, color="0.82", edgecolor="0.35", lw=0.6,
               label=reference_label)
        x = x - width / 2
    spread = np.zeros_like(mean)
    if seeds > 1:
        spread = np.nan_to_num(std)
        ax.bar(x, mean, width=width, yerr=spread, color=[colors[n] for n in names], capsize=3,
               error_kw={"lw": 1.1}, label=f"this run: mean ± std over {seeds} seeds")
    else:
        ax.bar(x, mean, width=width, color=[colors[n] for n in names], label="this run (one seed)")
        if n_test:
            spread = 2 * _binomial_se_pct(mean, n_test)
            for xi, m, s in zip(x, mean, spread):
                ax.add_patch(plt.Rectangle((xi - width / 2, m - s), width, 2 * s, color="k",
                                           alpha=0.22, lw=0))
            ax.add_patch(plt.Rectangle((0, 0), 0, 0, color="k", alpha=0.22, lw=0,
                                       label=f"± 2 s.e. of one measurement on {n_test:,} images"))
    top = mean + spread
    tops = [top] + ([ref] if reference else [])
    highest = np.nanmax(np.concatenate(tops))
    pad = 0.025 * highest
    for xs, ys, values in ([(x, top, mean)] + ([(ref_x, ref, ref)] if reference else [])):
        for xi, yi, v in zip(xs, ys, values):
            if np.isfinite(v):
                ax.text(xi, yi + pad, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.14 * highest + pad)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    ax.set_xlabel("method")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Test error per method")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: not labels[k].startswith("this run"))
    if len(labels) > 1:
        _legend_below(fig, [handles[k] for k in order], [labels[k] for k in order],
                      ncol=min(3, len(labels)))
    else:
        fig.tight_layout()
    return fig


def plot_sweep(frame, x: str, y: str, hue: str, chosen: dict | None = None, title=None,
               xlabel=None, ylabel=None, logx: bool = True):
    """``y`` against ``x`` for each ``hue`` group (mean over seeds, band = ±1 std), e.g. validation
    error against the penalty coefficient λ; ``chosen`` marks the selected x per group."""
    fig, ax = plt.subplots(figsize=(0.85 * PAGE_WIDTH, 3.3))
    sns.lineplot(frame, x=x, y=y, hue=hue, marker="o", errorbar="sd", ax=ax,
                 palette=method_colors(frame[hue].unique()))
    for name, value in (chosen or {}).items():
        row = frame[(frame[hue] == name) & (frame[x] == value)][y].mean()
        ax.plot(value, row, "k*", ms=12, zorder=5)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"{ylabel or y} against {xlabel or x} (star: chosen)")
    fig.tight_layout()
    return fig


def _count_ticks(axis, nbins: int = 5) -> None:
    """At most ``nbins`` whole-number ticks written with thousands separators ("12,000"), so that
    neighbouring labels never run into each other ("1000012000")."""
    axis.set_major_locator(mticker.MaxNLocator(nbins, integer=True))
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:,.0f}".replace("-", "\u2212")))


def plot_method_panels(results, method: str | None = None, smooth: int = 50, title=None):
    """One method on its own (first seed; ``None``: the first method of ``results``), 2×2 panels:
    per-iteration training data loss; per-epoch training data loss, with the weighted penalty
    dashed on a right axis where the method has one (the panel's legend says which); validation
    loss; validation error. Call it once per method."""
    grouped = _by_method(results)
    method = method or next(iter(grouped))
    h, color = grouped[method][0].history, method_colors(grouped)[method]
    fig, axes = plt.subplots(2, 2, figsize=(PAGE_WIDTH, 3.9))
    (iters, data_loss), (val_loss, val_error) = axes
    raw, mean = _iteration_curves(h, smooth)
    iters.plot(*raw, color=color, alpha=0.2, lw=0.5)
    iters.plot(*mean, color=color, label=f"running mean of {smooth}")
    iters.set(yscale="log", xlabel="iteration (minibatch update)", ylabel="training data loss")
    iters.legend(loc="upper right")
    epochs = np.arange(1, h.epochs_run + 1)
    lines = data_loss.plot(epochs, h.train_loss, color=color, label="training data loss")
    data_loss.set(yscale="log", xlabel="epoch", ylabel="training data loss")
    if any(h.penalty):
        twin = data_loss.twinx()
        lines += twin.plot(epochs, h.penalty, color="gray", ls="--",
                           label="weighted penalty (right axis)")
        twin.set_ylabel("weighted penalty")
        twin.grid(False)
        data_loss.legend(lines, [line.get_label() for line in lines], loc="best")
    else:
        data_loss.set_title("no penalty term", fontsize=9)
    val_loss.plot(epochs, h.val_loss, color=color)
    val_loss.set(xlabel="epoch", ylabel="validation loss")
    val_error.plot(epochs, 100 * np.asarray(h.val_error), color=color)
    val_error.axvline(h.best_epoch, color="gray", ls=":", lw=1,
                      label=f"best epoch ({h.best_epoch})")
    val_error.set(xlabel="epoch", ylabel="validation error (%)")
    val_error.legend(loc="upper right")
    _count_ticks(iters.xaxis)
    for ax in (data_loss, val_loss, val_error):
        _count_ticks(ax.xaxis, nbins=6)
    for ax, values in ((iters, h.iter_loss), (data_loss, h.train_loss)):
        _log_ticks_for(ax.yaxis, values)
    fig.suptitle(title or f"{method} on its own (first seed)")
    fig.tight_layout()
    return fig


def plot_unit_norms(models: dict, c: float | None = None, title=None):
    """Distribution of the hidden units' incoming weight norms per method, with the max-norm
    radius ``c`` (always inside the x-range); the legend counts the units at the cap
    (:data:`~hwutils.thresholds.AT_CAP`). ``models`` maps a method to a model or to its units'
    norms (an array, e.g. from a run's end-of-training measurements)."""
    styles = method_styles(models)
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.4))
    norms = {name: unit_norms(m).numpy() if isinstance(m, torch.nn.Module) else np.asarray(m, float)
             for name, m in models.items()}
    hi = max([float(n.max()) for n in norms.values()] + ([c] if c is not None else []))
    bins = np.linspace(0, 1.05 * hi, 60)
    for name, n in norms.items():
        n_capped = 0 if c is None else int((n >= AT_CAP * c).sum())
        at_cap = "" if c is None else f": {n_capped} of {len(n)} units at {at_cap_text()}"
        ax.hist(n, bins=bins, histtype="step", lw=1.5, **styles[name], label=name + at_cap)
    if c is not None:
        ax.axvline(c, color="k", ls=":", lw=1.2, label=f"max-norm radius c = {c:g}")
    ax.set_xlim(0, 1.08 * hi)
    ax.set_xlabel("‖incoming weight vector‖₂ of a hidden unit")
    ax.set_ylabel("number of hidden units")
    ax.set_title(title or "Norms of the hidden units' incoming weights"
                 + ("" if c is None else f" against the max-norm radius c = {c:g}"))
    _legend_below(fig, *ax.get_legend_handles_labels(), ncol=2)
    return fig


def _unit_activity(source, X) -> dict:
    """Per hidden unit, the share of inputs it fires on and its ρ̂ (mean tanh activation), with
    their means over units: from a model measured on ``X`` (:func:`hidden_activity`), or from a
    run's end-of-training measurements (the same quantities, stored when the run ended)."""
    if isinstance(source, torch.nn.Module):
        if X is None:
            raise ValueError("plot_activity needs X (e.g. data.val.X) to measure a model's activity")
        stats = hidden_activity(source, X)
        frac, rho = stats["active_fraction"].numpy(), stats["mean_tanh"].numpy()
        return {"frac": frac, "rho": rho, "mean_frac": float(frac.mean()),
                "mean_rho": float(rho.mean())}
    return {"frac": unit_values(source, "active_fraction"), "rho": unit_values(source, "rho_hat"),
            "mean_frac": source["active_fraction"], "mean_rho": source["rho_hat"]}


def plot_activity(models: dict, X=None, rho: float | None = None, title=None):
    """Per hidden unit: the share of inputs on which it is active (top) and ρ̂, its mean tanh
    activation, the quantity the KL penalty pulls towards ``rho`` (bottom, log axis; the target
    dotted). ``models`` maps a method to a model (measured on ``X``) or to a run's end-of-training
    measurements; the legend's means are the ones :func:`hwutils.diagnostics.regularizer_activity`
    tabulates."""
    styles = method_styles(models)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(PAGE_WIDTH, 5.0))
    floor = 1e-4
    for name, source in models.items():
        units = _unit_activity(source, X)
        style = {"histtype": "step", "lw": 1.5, **styles[name]}
        ax1.hist(units["frac"], bins=np.linspace(0, 1, 41), **style,
                 label=f"{name}: a unit fires on {units['mean_frac']:.3f} of the inputs, "
                       f"ρ̂ = {units['mean_rho']:.3f} (means over units)")
        ax2.hist(np.clip(units["rho"], floor, None), bins=np.logspace(-4, 0, 50), **style)
    handles, labels = ax1.get_legend_handles_labels()
    if rho is not None:
        handles.append(ax2.axvline(rho, color="k", ls=":", lw=1.2))
        labels.append(f"the KL penalty's target ρ = {rho:g}")
    ax1.set(xlabel="share of validation inputs on which the unit is active",
            ylabel="number of hidden units")
    ax2.set(xscale="log", ylabel="number of hidden units",
            xlabel=f"ρ̂ of the unit: mean tanh(activation) (log; ≤ {floor:g} at the left edge)")
    _plain_log_ticks(ax2.xaxis)
    fig.suptitle(title or "Hidden-unit activity: a sparsity penalty moves units towards rarely "
                          "active")
    _legend_below(fig, handles, labels, ncol=1)
    return fig


def plot_point_cloud(data, title=None):
    """The training points next to the (larger) validation sample of the same distribution."""
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.4), sharex=True, sharey=True)
    for ax, (name, split) in zip(axes, (("training", data.train), ("validation", data.val))):
        X, y = split.X.cpu().numpy(), split.y.cpu().numpy()
        ax.scatter(X[:, 0], X[:, 1], c=y, cmap="RdBu_r", edgecolors="k", s=14, lw=0.4)
        ax.set_title(f"{name} split ({len(split)} points)")
        ax.set_xlabel("$x_1$")
    axes[0].set_ylabel("$x_2$")
    fig.suptitle(title or "Few noisy training points: a wide MLP can fit the noise")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- Part 1: Adam
def plot_second_moment_check(t, mean, se, beta2s, title=None):
    """Monte-Carlo mean of v_t / V (band: ± 2 s.e.) per β₂ against the derived factor 1 − β₂ᵗ
    (dashed) and the off-by-one 1 − β₂ᵗ⁺¹ (dotted); ``mean`` and ``se``: one row per β₂."""
    fig, axes = plt.subplots(1, len(beta2s), figsize=(PAGE_WIDTH, 3.3), sharey=True)
    for ax, beta2, m, s in zip(np.atleast_1d(axes), beta2s, mean, se):
        ax.plot(t, m, color="C0", lw=4, alpha=0.4, label="measured")  # wide: visible under the lines
        ax.fill_between(t, m - 2 * s, m + 2 * s, color="C0", alpha=0.35, label="± 2 s.e.")
        ax.plot(t, bias_correction(beta2, t), "k--", lw=1, label=r"$1-\beta_2^t$ (derived)")
        ax.plot(t, bias_correction(beta2, t + 1), color="C3", ls=":", lw=1.6,
                label=r"$1-\beta_2^{t+1}$ (slip)")
        ax.set(xscale="log", yscale="log", xlabel="step $t$", title=rf"$\beta_2 = {beta2}$")
    np.atleast_1d(axes)[0].set_ylabel(r"$\mathbb{E}[v_t]\,/\,V$")
    fig.suptitle(title or r"The measured second moment follows $1-\beta_2^t$")
    _legend_below(fig, *np.atleast_1d(axes)[0].get_legend_handles_labels())
    return fig


def plot_second_moment_deviation(t, z_derived, z_slip, beta2s, z_accept: float, title=None):
    """(measured − candidate) / s.e. over the steps, one line per β₂: left against the derived
    factor (grey band: ± ``z_accept``), right against the off-by-one factor (symlog axis)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.3), sharex=True)
    for ax, z, name in ((left, z_derived, r"$1-\beta_2^t$"), (right, z_slip, r"$1-\beta_2^{t+1}$")):
        ax.axhspan(-z_accept, z_accept, color="0.88", label=f"± {z_accept:g} s.e.")
        for k, beta2 in enumerate(beta2s):
            ax.plot(t, z[k], color=f"C{k}", lw=0.8, label=rf"$\beta_2 = {beta2}$")
        ax.set(xscale="log", xlabel="step $t$", ylabel="(measured − candidate) / s.e.",
               title=f"candidate {name}")
    right.set_yscale("symlog", linthresh=z_accept)
    ticks = [-1000, -300, -100, -30, -10, 0, 10, 30, 100, 300, 1000]  # ± z_accept: the band
    right.yaxis.set_major_locator(mticker.FixedLocator(ticks))
    right.yaxis.set_major_formatter("{x:g}")
    fig.suptitle(title or r"Deviations stay inside the band for $1-\beta_2^t$ only")
    _legend_below(fig, *left.get_legend_handles_labels(), ncol=4)
    return fig


def plot_uncorrected_steps(steps, with_bc, without_bc, lr: float, beta1=0.9, beta2=0.999,
                           long_steps: int = 20_000, title=None):
    """Left: mean |Δθ| per coordinate of the first steps with and without bias correction.
    Right: their ratio against the constant-gradient prediction (1 − β₁ᵗ) / √(1 − β₂ᵗ)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.3))
    ax1.plot(steps, with_bc, "o-", ms=2.5, label="with bias correction")
    ax1.plot(steps, without_bc, "s-", ms=2.5, label="without bias correction")
    ax1.axhline(lr, color="k", ls="--", lw=1, label="lr")
    ax1.set(yscale="log", xlabel="step $t$", ylabel=r"mean $|\Delta\theta|$ per coordinate",
            title="first steps several times too large")
    long_t = np.arange(1, long_steps + 1)
    predicted = uncorrected_step_ratio(beta1, beta2, long_t)
    ax2.plot(long_t, predicted, "k--", lw=1, label="constant gradient")
    measured = np.asarray(without_bc) / np.asarray(with_bc)
    ax2.plot(steps, measured, "o", ms=2.5, color="C1", label="measured")
    ax2.axhline(1, color="0.5", lw=0.8)
    ax2.set(xscale="log", xlabel="step $t$", ylabel="step without / with correction",
            title=r"excess fades after $\sim 1/(1-\beta_2)$ steps")
    ax1.legend(loc="center right")
    ax2.legend(loc="upper right")
    fig.suptitle(title or "Without the correction Adam's first steps are too large, not too small")
    fig.tight_layout()
    return fig


def plot_nonstationary(t, curves: dict, beta2s, drifts: dict, title=None):
    """E[v_t] / ((1 − β₂ᵗ) E[g_t²]) for drifting gradient scales, one panel per β₂ (2 per row; the
    legend in the spare slot): measured (band ± 2 s.e.) and exact; 1 means ζ = 0. ``curves`` maps
    a drift name to (mean, s.e., exact), one row per β₂; ``drifts`` maps it to its factor r."""
    fig, axes, spare = _grid(len(beta2s), 2.7, sharex=True)
    for k, (ax, beta2) in enumerate(zip(axes, beta2s)):
        stationary = bias_correction(beta2, t)  # divide by it: 1 means "no zeta"
        for c, (name, (m, s, exact)) in enumerate(curves.items()):
            low, high = (m[k] - 2 * s[k]) / stationary, (m[k] + 2 * s[k]) / stationary
            ax.fill_between(t, low, high, color=f"C{c}", alpha=0.3,
                            label=f"{name} (r = {drifts[name]}): measured ± 2 s.e.")
            ax.plot(t, exact[k] / stationary, color=f"C{c}", lw=1, label=f"{name}: exact")
        ax.axhline(1, color="k", ls="--", lw=1, label=r"stationary gradients ($\zeta = 0$)")
        shown = np.concatenate([e[k] / stationary for *_, e in curves.values()])
        if shown.max() / shown.min() > 5:  # spans orders of magnitude: log scale
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter("{x:g}")
            ax.yaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set(xscale="log", xlabel="step $t$", title=rf"$\beta_2 = {beta2}$",
               ylabel=r"$\mathbb{E}[v_t]\,/\,((1-\beta_2^t)\,\mathbb{E}[g_t^2])$")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(title or r"With drifting gradients $\zeta \neq 0$, the more the closer $\beta_2$ "
                          "is to 1")
    _legend_in_spare_slot(fig, spare, *axes[0].get_legend_handles_labels(), ncol_below=2)
    return fig


# --------------------------------------------------------------------------- Part 3: the studies
def _lr_panels(methods) -> dict[str, list[str]]:
    """The learning-rate study's panels: the methods without dropout, then those with it."""
    panels = {"without dropout": [m for m in methods if "dropout" not in m],
              "with dropout": [m for m in methods if "dropout" in m]}
    return {title: names for title, names in panels.items() if names}


def _readable_log_ticks(axis, lo: float, hi: float) -> None:
    """Ticks of a log axis from ``lo`` to ``hi`` at 1, 1.5, 2, 3, 5, 7 × 10ᵏ (fewer when the range
    is wide), written as plain numbers, so that a value such as 3–5 % can be read off."""
    for mantissas in ((1, 1.5, 2, 3, 4, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1,)):
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) <= 8:
            break
    if len(ticks) < 2:  # a range narrower than 1 to 1.5: evenly spaced round numbers instead
        ticks = [t for t in mticker.MaxNLocator(4).tick_values(lo, hi) if lo <= t <= hi and t > 0]
    axis.set_major_locator(mticker.FixedLocator(ticks))
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(mticker.NullFormatter())


def _log_ticks_for(axis, values) -> None:
    """:func:`_readable_log_ticks` over the positive finite ``values``' range."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if len(values):
        _readable_log_ticks(axis, values.min(), values.max())


#: Sideways offset (in decades of the learning rate) between the lines of one panel of the
#: learning-rate study, so that lines with the same values do not hide each other.
LR_DODGE = 0.035


def plot_lr_study(table, chosen: dict | None = None, title=None):
    """The learning-rate study, from a search table (one row per run: ``method``, ``lr``, its
    constant ``field``/``value``, ``val_error_pct``, ``diverged``, ``at_cap_peak_pct``,
    ``dead_pct``). A line per method and value of its constant (colour: method; marker and line
    style: the value), in four panels:

    * validation error against the learning rate, the methods without dropout (top left) and with
      dropout (top right), on one log axis with ticks at 1, 2, 3, 5, … (runs that diverged to NaN
      are crosses at the top edge; ★ in the method's colour: its chosen combination, ``chosen``
      mapping a method to its ``(lr, value)``);
    * the largest share of hidden units at the max-norm cap during training (max-norm methods);
    * dead hidden units (never active on the validation images).

    The points of one learning rate are spread sideways by :data:`LR_DODGE` decades per line, so
    that lines with equal values stay visible side by side."""
    methods = list(dict.fromkeys(table["method"]))
    panels = _lr_panels(methods)
    styles = method_styles(methods)
    fig, axes = plt.subplots(2, 2, figsize=(PAGE_WIDTH, 5.6))
    err_axes = dict(zip(panels, axes[0]))
    cap_ax, dead_ax = axes[1]
    ok_err = table.loc[~table["diverged"], "val_error_pct"]
    top = min(100.0, ok_err.max() * 1.25) if len(ok_err) else 100.0
    bottom = max(ok_err.min() / 1.15, 1e-2) if len(ok_err) else 1.0
    markers = ["o", "s", "^", "D"]
    values = {name: sorted(table.loc[table["method"] == name, "value"].unique()) for name in methods}
    for ax in axes[0][len(panels):]:
        fig.delaxes(ax)
    for panel, names in panels.items():
        ax = err_axes[panel]
        in_panel = [(name, j, value) for name in names for j, value in enumerate(values[name])]
        for k, (name, j, value) in enumerate(in_panel):
            rows = table[(table["method"] == name) & (table["value"] == value)]
            sub = rows.groupby("lr").agg(err=("val_error_pct", "mean"), diverged=("diverged", "any"),
                                         cap=("at_cap_peak_pct", "mean"),
                                         dead=("dead_pct", "mean")).reset_index()
            shift = 10 ** (LR_DODGE * (k - (len(in_panel) - 1) / 2))
            lr = sub["lr"] * shift
            field = rows["field"].iloc[0]
            style = dict(color=styles[name]["color"], marker=markers[j % 4], ms=4.5,
                         ls="-" if j == 0 else ":", lw=1.4, mfc="white" if j else styles[name]["color"])
            label = f"{name}, {CONSTANT_LABELS.get(field, field)} = {value:g}"
            ok = ~sub["diverged"]
            ax.plot(lr[ok], sub.loc[ok, "err"].clip(upper=top), label=label, **style)
            ax.plot(lr[~ok], [top] * int((~ok).sum()), "x", color=style["color"], ms=7, mew=2)
            if field == "max_norm":
                cap_ax.plot(lr, sub["cap"], **style)
            dead_ax.plot(lr, sub["dead"], **style)
            if chosen and name in chosen and chosen[name][1] == value:
                pick = sub[np.isclose(sub["lr"], chosen[name][0])]
                ax.plot(pick["lr"] * shift, pick["err"], "*", color=style["color"], mec="k",
                        mew=0.8, ms=13, zorder=5)
        ax.set(yscale="log", ylim=(bottom, top * 1.08), title=panel,
               ylabel="validation error (%, log)")
        _readable_log_ticks(ax.yaxis, bottom, top * 1.08)
    cap_ax.set(ylabel="units at the cap, peak (%)", title="max-norm: does the cap bind?",
               ylim=(-3, 103))
    dead_ax.set(ylabel="dead hidden units (%)", title="units that never fire on validation",
                ylim=(-3, 103))
    for ax in [*err_axes.values(), cap_ax, dead_ax]:
        ax.set(xscale="log", xlabel="learning rate (log)")
        ax.xaxis.set_major_locator(mticker.FixedLocator(sorted(table["lr"].unique())))
        _plain_log_ticks(ax.xaxis)
    handles, labels = [], []
    for ax in err_axes.values():
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.append(h)
            labels.append(l)
    handles += [plt.Line2D([], [], ls="none", marker="x", color="0.3", mew=2),
                plt.Line2D([], [], ls="none", marker="*", color="0.6", mec="k", ms=11)]
    labels += ["diverged (NaN loss)", "chosen (★ in the method's colour)"]
    if title:
        fig.suptitle(title)
    _legend_below(fig, handles, labels, ncol=2)
    return fig


def _plain_log_ticks(axis) -> None:
    """Tick labels of a log axis as plain numbers (0.01, 0.3, 1), without minor-tick labels."""
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(mticker.NullFormatter())


def plot_l1_tradeoff(table, title=None):
    """Late L1's sparsity against accuracy: near-zero weights (%) against validation error (%), one
    point per λ₁ (labelled; λ₁ = 0 is the L2 run it starts from). ``table``: ``l1``,
    ``near_zero_pct``, ``val_error_pct``."""
    frame = table.groupby("l1", as_index=False)[["near_zero_pct", "val_error_pct"]].mean().sort_values("l1")
    fig, ax = plt.subplots(figsize=(0.75 * PAGE_WIDTH, 3.2))
    color = method_styles(["L2 + L1 (late)"])["L2 + L1 (late)"]["color"]
    ax.plot(frame["near_zero_pct"], frame["val_error_pct"], "o-", color=color)
    for k, row in enumerate(frame.itertuples()):  # labels alternate above and below the line
        ax.annotate(f"λ₁ = {row.l1:g}", (row.near_zero_pct, row.val_error_pct), textcoords="offset points",
                    xytext=(6, 6 if k % 2 == 0 else -12), fontsize=8)
    ax.set(xlabel=f"weights with {near_zero_text()} at the end (%)", ylabel="validation error (%)",
           title=title or "What late L1 buys (sparsity) and costs (error)")
    ax.margins(x=0.15, y=0.15)
    fig.tight_layout()
    return fig


def plot_paired_differences(table, title=None, split: str = "test"):
    """One row per pair of a :func:`hwutils.stats.pairwise` table: the difference of error A − B
    (points) with its paired 95 % interval, filled where Holm's correction resolves it; the zero line
    is "no difference". Pairs are drawn in the table's order, the first at the top."""
    n = len(table)
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 0.8 + 0.24 * n))
    y = np.arange(n)[::-1]
    for yi, row in zip(y, table.to_dict("records")):
        color = PALETTE[3] if row["resolved"] else "#4d4d4d"
        ax.plot([row["low"], row["high"]], [yi, yi], color=color, lw=1.4)
        ax.plot(row["difference"], yi, "o", color=color, mfc=color if row["resolved"] else "white", ms=4.5)
    ax.axvline(0.0, color="#999999", lw=0.8, ls="--")
    ax.set_yticks(y, [f"{row['a']}  −  {row['b']}" for row in table.to_dict("records")], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"difference of {split} error, A − B (percentage points; 95 % paired interval)")
    ax.grid(axis="y", visible=False)
    handles = [plt.Line2D([], [], color=PALETTE[3], marker="o", lw=1.4, label="resolved (Holm)"),
               plt.Line2D([], [], color="#4d4d4d", marker="o", mfc="white", lw=1.4, label="not resolved")]
    ax.legend(handles=handles, loc="lower right", frameon=True)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
