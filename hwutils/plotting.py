"""Plotting: one seaborn style, and the figures the notebooks share.

Every function takes already-computed results (histories, models, tables), draws on new or given
axes, labels every axis with its unit, and returns the matplotlib Figure.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from .diagnostics import flat_weights, hidden_activity, unit_norms

__all__ = [
    "use_style", "method_colors", "plot_training_curves", "plot_iteration_loss",
    "plot_decision_boundaries", "plot_weight_histograms", "plot_error_bars", "plot_sweep",
    "plot_method_panels", "plot_unit_norms", "plot_activity", "plot_point_cloud", "show_table",
]

EPOCH_PANELS = {
    "train_loss": "training data loss (cross-entropy)",
    "penalty": "penalty term (weighted, apart)",
    "val_loss": "validation loss (cross-entropy)",
    "val_error": "validation error (%)",
    "small_weights": "weights with |w| < 10⁻³ (%)",
}


def use_style() -> None:
    """The report's one figure style (call once at the top of a notebook)."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "figure.autolayout": False,
                         "axes.titlesize": "medium", "legend.fontsize": "small"})


def method_colors(names) -> dict:
    """A fixed color per method, so a method has the same color in every figure."""
    return dict(zip(names, sns.color_palette("colorblind", len(list(names)))))


def _by_method(results) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for r in results:
        grouped.setdefault(r.method, []).append(r)
    return grouped


def _mean_band(ax, curves, label, color, scale=1.0):
    """Mean over seeds with a min-max band; seeds may have run different numbers of epochs."""
    length = max(len(c) for c in curves)
    arr = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        arr[i, :len(c)] = np.asarray(c) * scale
    x = np.arange(1, length + 1)
    ax.plot(x, np.nanmean(arr, 0), label=label, color=color)
    if len(curves) > 1:
        ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), color=color, alpha=0.2, lw=0)


def plot_training_curves(results, panels=tuple(EPOCH_PANELS), title=None, log_loss=True):
    """Per-epoch curves of every method (mean over seeds, band = min-max): training data loss,
    penalty, validation loss, validation error. The penalty is its own panel, so methods are
    compared by data loss. A dot marks each method's best epoch (first seed)."""
    grouped = _by_method(results)
    colors = method_colors(grouped)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for name, runs in grouped.items():
            scale = 100.0 if panel in ("val_error", "small_weights") else 1.0
            _mean_band(ax, [getattr(r.history, panel) for r in runs], name, colors[name], scale)
            best = runs[0].history.best_epoch
            if panel in ("val_loss", "val_error") and best:
                ax.plot(best, getattr(runs[0].history, panel)[best - 1] * scale, "o", color=colors[name], ms=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(EPOCH_PANELS[panel])
        if log_loss and panel in ("train_loss", "val_loss", "penalty"):
            if all(min(getattr(r.history, panel)) > 0 for runs in grouped.values() for r in runs):
                ax.set_yscale("log")
    axes[0][0].legend(loc="best")
    fig.suptitle(title or "Training data loss falls for every method; validation curves show which generalizes")
    fig.tight_layout()
    return fig


def plot_iteration_loss(results, smooth: int = 50, title=None):
    """Training data loss of every minibatch (first seed per method), with a running mean of
    ``smooth`` iterations on top of the raw (faint) values; log scale."""
    grouped = _by_method(results)
    colors = method_colors(grouped)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for name, runs in grouped.items():
        loss = np.asarray(runs[0].history.iter_loss)
        ax.plot(loss, color=colors[name], alpha=0.15, lw=0.5)
        k = max(1, min(smooth, len(loss)))
        running = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k - 1, len(loss)), running, color=colors[name], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration (minibatch update)")
    ax.set_ylabel("training data loss (cross-entropy)")
    ax.legend(loc="best")
    ax.set_title(title or f"Per-iteration training loss (running mean over {smooth} updates)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_decision_boundaries(models: dict, split, errors: dict | None = None, grid: int = 250, title=None):
    """Each model's decision regions (probability of class 1) over the 2-D points of ``split``."""
    X, y = split.X.cpu().numpy(), split.y.cpu().numpy()
    pad = 0.5
    xs = np.linspace(X[:, 0].min() - pad, X[:, 0].max() + pad, grid)
    ys = np.linspace(X[:, 1].min() - pad, X[:, 1].max() + pad, grid)
    gx, gy = np.meshgrid(xs, ys)
    points = torch.tensor(np.c_[gx.ravel(), gy.ravel()], dtype=torch.float32)
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.6), squeeze=False,
                             sharex=True, sharey=True)
    for ax, (name, model) in zip(axes[0], models.items()):
        model.eval()
        device = next(model.parameters()).device
        prob = torch.softmax(model(points.to(device)), 1)[:, 1].cpu().numpy().reshape(gx.shape)
        ax.contourf(gx, gy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.2)
        ax.scatter(X[:, 0], X[:, 1], c=y, cmap="RdBu_r", edgecolors="k", s=14, lw=0.4)
        label = name if errors is None else f"{name}\n(test error {100 * errors[name]:.1f} %)"
        ax.set_title(label)
        ax.set_xlabel("$x_1$")
    axes[0][0].set_ylabel("$x_2$")
    fig.suptitle(title or "Decision boundaries (black: p = 0.5) over the training points")
    fig.tight_layout()
    return fig


def plot_weight_histograms(models: dict, tol: float = 1e-3, title=None):
    """Histogram of |w| per method on a log axis, with the fraction of weights below ``tol``."""
    colors = method_colors(models)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    all_w = [flat_weights(m).abs().numpy() for m in models.values()]
    floor = 1e-8
    lo = max(floor, min(float(np.min(w[w > 0])) if (w > 0).any() else floor for w in all_w))
    hi = max(float(w.max()) for w in all_w)
    bins = np.logspace(np.log10(lo), np.log10(hi), 60)
    for (name, w) in zip(models, all_w):
        frac = float((w < tol).mean())
        ax.hist(np.clip(w, lo, None), bins=bins, histtype="step", lw=1.5, color=colors[name],
                label=f"{name}: {100 * frac:.1f} % below {tol:g}")
    ax.axvline(tol, color="gray", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("|weight| (log scale; exact zeros drawn at the left edge)")
    ax.set_ylabel("number of weights")
    ax.legend(loc="upper left")
    ax.set_title(title or "Weight magnitudes: a sparse solution puts mass far left of the dashed line")
    fig.tight_layout()
    return fig


def plot_error_bars(summary, column: str = "test_error_pct", reference: dict | None = None,
                    reference_label: str = "reference", title=None, ylabel="test error (%)"):
    """Bar per method (mean over seeds, error bar = std) of a :func:`hwutils.experiments.summarize`
    column, with optional reference values drawn as black markers."""
    names = list(summary.index)
    mean = summary[(column, "mean")].to_numpy()
    std = np.nan_to_num(summary[(column, "std")].to_numpy())
    colors = method_colors(names)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 3.8))
    x = np.arange(len(names))
    ax.bar(x, mean, yerr=std, color=[colors[n] for n in names], capsize=4, label="this run (mean ± std over seeds)")
    for xi, m in zip(x, mean):
        ax.text(xi, m, f"{m:.2f}", ha="center", va="bottom", fontsize="small")
    if reference:
        ref = [reference.get(n, np.nan) for n in names]
        ax.plot(x, ref, "k_", ms=28, mew=2.5, ls="none", label=reference_label)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_xlabel("method")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right")
    ax.set_title(title or "Test error per method")
    fig.tight_layout()
    return fig


def plot_sweep(frame, x: str, y: str, hue: str, chosen: dict | None = None, title=None,
               xlabel=None, ylabel=None, logx: bool = True):
    """``y`` against ``x`` for each ``hue`` group (mean over seeds, band = ±1 std), e.g. validation
    error against the penalty coefficient λ; ``chosen`` marks the selected x per group."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.lineplot(frame, x=x, y=y, hue=hue, marker="o", errorbar="sd", ax=ax)
    for name, value in (chosen or {}).items():
        row = frame[(frame[hue] == name) & (frame[x] == value)][y].mean()
        ax.plot(value, row, "k*", ms=14, zorder=5)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"{ylabel or y} against {xlabel or x} (star: chosen)")
    fig.tight_layout()
    return fig


def plot_method_panels(results, smooth: int = 50, title=None):
    """One row per method (first seed): per-iteration training data loss; per-epoch training
    data loss with the penalty apart (dashed, right axis); validation loss; validation error."""
    grouped = _by_method(results)
    colors = method_colors(grouped)
    fig, axes = plt.subplots(len(grouped), 4, figsize=(16, 2.6 * len(grouped)), squeeze=False)
    for row, (name, runs) in zip(axes, grouped.items()):
        h, color = runs[0].history, colors[name]
        loss = np.asarray(h.iter_loss)
        k = max(1, min(smooth, len(loss)))
        row[0].plot(loss, color=color, alpha=0.2, lw=0.5)
        row[0].plot(np.arange(k - 1, len(loss)), np.convolve(loss, np.ones(k) / k, mode="valid"), color=color)
        row[0].set(yscale="log", xlabel="iteration", ylabel="data loss")
        row[0].set_title(name, loc="left", fontweight="bold")
        epochs = np.arange(1, h.epochs_run + 1)
        row[1].plot(epochs, h.train_loss, color=color, label="data loss")
        row[1].set(yscale="log", xlabel="epoch", ylabel="training data loss")
        if any(h.penalty):
            twin = row[1].twinx()
            twin.plot(epochs, h.penalty, color="gray", ls="--", label="penalty")
            twin.set_ylabel("penalty (dashed)")
            twin.grid(False)
        row[2].plot(epochs, h.val_loss, color=color)
        row[2].set(xlabel="epoch", ylabel="validation loss")
        row[3].plot(epochs, 100 * np.asarray(h.val_error), color=color)
        row[3].axvline(h.best_epoch, color="gray", ls=":", lw=1)
        row[3].set(xlabel="epoch", ylabel="validation error (%)")
    fig.suptitle(title or "Each method on its own: loss per iteration and per epoch, validation loss and error")
    fig.tight_layout()
    return fig


def plot_unit_norms(models: dict, c: float | None = None, title=None):
    """Distribution of the hidden units' incoming weight norms per method, with the max-norm radius."""
    colors = method_colors(models)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    norms = {name: unit_norms(m).numpy() for name, m in models.items()}
    bins = np.linspace(0, max(float(n.max()) for n in norms.values()) * 1.05, 60)
    for name, n in norms.items():
        ax.hist(n, bins=bins, histtype="step", lw=1.5, color=colors[name], label=name)
    if c is not None:
        ax.axvline(c, color="k", ls="--", lw=1.2, label=f"max-norm radius c = {c:g}")
    ax.set_xlabel("‖incoming weight vector‖₂ of a hidden unit")
    ax.set_ylabel("number of hidden units")
    ax.legend(loc="upper right")
    ax.set_title(title or "Per-unit weight norms: max-norm caps them at c; L2 shrinks them all")
    fig.tight_layout()
    return fig


def plot_activity(models: dict, X, title=None):
    """Per hidden unit: fraction of inputs on which it is active, and its mean activation."""
    colors = method_colors(models)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
    for name, model in models.items():
        stats = hidden_activity(model, X)
        frac, mean = stats["active_fraction"].numpy(), stats["mean_activation"].numpy()
        ax1.hist(frac, bins=np.linspace(0, 1, 41), histtype="step", lw=1.5, color=colors[name],
                 label=f"{name}: mean {frac.mean():.2f}")
        ax2.hist(np.clip(mean, 1e-4, None), bins=np.logspace(-4, 1.5, 50), histtype="step", lw=1.5,
                 color=colors[name], label=f"{name}: mean {mean.mean():.3f}")
    ax1.set(xlabel="fraction of validation images on which the unit is active", ylabel="number of hidden units")
    ax2.set(xscale="log", xlabel="mean activation of the unit (log; ≤1e-4 drawn at the left edge)",
            ylabel="number of hidden units")
    ax1.legend(loc="upper right")
    ax2.legend(loc="upper left")
    fig.suptitle(title or "Hidden-unit activity: a sparsity penalty moves units towards rarely active")
    fig.tight_layout()
    return fig


def plot_point_cloud(data, title=None):
    """The training points next to the (larger) validation sample of the same distribution."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    for ax, (name, split) in zip(axes, (("training", data.train), ("validation", data.val))):
        X, y = split.X.cpu().numpy(), split.y.cpu().numpy()
        ax.scatter(X[:, 0], X[:, 1], c=y, cmap="RdBu_r", edgecolors="k", s=16, lw=0.4)
        ax.set_title(f"{name} split ({len(split)} points)")
        ax.set_xlabel("$x_1$")
    axes[0].set_ylabel("$x_2$")
    fig.suptitle(title or "Few noisy training points: a wide MLP can fit the noise")
    fig.tight_layout()
    return fig


def show_table(frame, floatfmt: str = ".3g", index: bool = True) -> None:
    """Display a table as Markdown: a real table in the notebook, the HTML and the PDF report alike.

    Float columns are formatted with ``floatfmt``; every other cell is shown as it is (tabulate
    would otherwise turn the text "0.99" into the number 1.0 under a one-digit format)."""
    import pandas as pd
    from IPython.display import Markdown, display

    cell = lambda v: format(v, floatfmt) if isinstance(v, float) and pd.notna(v) else ("" if pd.isna(v) else str(v))
    shown = frame.copy()
    for column in shown.columns:
        shown[column] = [cell(v) for v in shown[column]]
    shown.index = [cell(v) if isinstance(v, float) else v for v in shown.index]
    shown.index.name = frame.index.name
    display(Markdown(shown.to_markdown(index=index, disable_numparse=True)))
