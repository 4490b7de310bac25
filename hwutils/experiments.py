"""Experiments: methods as data, cached runs (method × data × seed), sweeps, the validation search.

A run is identified by a hash of everything that decides its outcome - the method's model and
training configs, the data description and the seed. Its result (History, final validation and
test error, trained weights) is cached under ``results_dir``, so re-rendering a notebook does not
retrain, an interrupted sweep resumes at the first missing run, and a changed parameter retrains
only the runs it changes. ``force=True`` retrains.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
import torch
from tqdm import tqdm  # text bars: they render in terminals, notebooks and papermill logs alike

from .cache import load_run, run_stem, save_run
from .data import Splits
from .models import ModelConfig, build_model
from .training import History, TrainConfig, evaluate, fit

__all__ = [
    "Method", "RunResult", "run", "run_sweep", "results_frame", "summarize", "search", "methods_frame",
    "format_summary", "COLUMN_LABELS",
]

#: Bump when a change to the training code changes results, so cached runs are not reused.
CACHE_VERSION = 2


@dataclass(frozen=True)
class Method:
    """A regularization method as data: a name, a model config and a training config."""

    name: str
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def replace(self, **train_changes) -> "Method":
        """The same method with some training fields changed."""
        return dataclasses.replace(self, train=self.train.replace(**train_changes))

    def variant(self, name: str, **train_changes) -> "Method":
        """A new named method: this one with some training fields changed."""
        return dataclasses.replace(self, name=name, train=self.train.replace(**train_changes))


@dataclass
class RunResult:
    """One trained run: what it was, what it measured, and (when kept) the trained model."""

    method: str
    seed: int
    key: str
    history: History
    val_error: float
    test_error: float
    config: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None

    @property
    def wall_seconds(self) -> float:
        return self.history.wall_seconds


def run_key(method: Method, data_spec: dict, seed: int) -> str:
    """A short hash of everything that decides a run's outcome."""
    payload = {"model": dataclasses.asdict(method.model), "train": dataclasses.asdict(method.train),
               "data": data_spec, "seed": seed, "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(method: Method, data: Splits, *, seed: int = 0, data_spec: dict | None = None,
        results_dir: str | os.PathLike | None = "results", force: bool = False,
        progress: bool = True) -> RunResult:
    """Train ``method`` on ``data`` with ``seed`` (initial weights, shuffling, dropout); evaluate.

    ``data_spec`` describes the data (e.g. ``{"name": "mnist", "downsample": None}``) and is part
    of the cache key; with ``results_dir=None`` nothing is cached. The final validation error is
    that of the returned weights (the best epoch's when early stopping restores them); the test
    error is measured once, at the end.
    """
    spec = dict(data_spec or {})
    key = run_key(method, spec, seed)
    model = build_model(method.model, data.n_features, data.n_classes, seed=seed)
    stem = run_stem(results_dir, method.name, key) if results_dir else None
    cached = load_run(stem) if stem is not None and not force else None
    if cached is not None:
        record, state = cached
        model.load_state_dict(state)
        model.to(data.train.X.device).eval()
        return RunResult(record["method"], seed, key, History.from_dict(record["history"]),
                         record["val_error"], record["test_error"], record["config"], model)

    history = fit(model, data.train, data.val, method.train.replace(seed=seed), progress=progress,
                  desc=f"{method.name} (seed {seed})")
    _, val_error = evaluate(model, data.val)
    _, test_error = evaluate(model, data.test)
    model.eval()
    config = {"model": dataclasses.asdict(method.model), "train": dataclasses.asdict(method.train), "data": spec}
    result = RunResult(method.name, seed, key, history, val_error, test_error, config, model)
    if stem is not None:
        record = {"method": method.name, "seed": seed, "key": key, "val_error": val_error,
                  "test_error": test_error, "config": config, "history": history.to_dict()}
        save_run(stem, record, model.state_dict())
    return result


def run_sweep(methods, data: Splits, *, seeds=(0,), desc: str = "runs", **run_kwargs) -> list[RunResult]:
    """:func:`run` every method with every seed (cached runs are loaded, not retrained)."""
    methods = list(methods)
    jobs = [(m, s) for m in methods for s in seeds]
    bar = tqdm(jobs, desc=desc)
    results = []
    for method, seed in bar:
        bar.set_postfix_str(f"{method.name}, seed {seed}")
        results.append(run(method, data, seed=seed, **run_kwargs))
    return results


def results_frame(results) -> "pd.DataFrame":
    """One row per run: method, seed, validation/test error (%), epochs, best epoch, wall time."""
    import pandas as pd

    return pd.DataFrame([{
        "method": r.method, "seed": r.seed,
        "val_error_pct": 100 * r.val_error, "test_error_pct": 100 * r.test_error,
        "epochs_run": r.history.epochs_run, "best_epoch": r.history.best_epoch,
        "wall_seconds": r.wall_seconds,
    } for r in results])


def summarize(results, order=None) -> "pd.DataFrame":
    """Mean and standard deviation over seeds of each column of :func:`results_frame`, per method."""
    frame = results_frame(results)
    order = order or list(dict.fromkeys(frame["method"]))
    summary = frame.drop(columns="seed").groupby("method", sort=False).agg(["mean", "std"]).reindex(order)
    summary.insert(0, ("seeds", "n"), frame.groupby("method").size().reindex(order))
    return summary


def search(methods, grid: dict, data: Splits, *, seeds=(0,), **run_kwargs):
    """Choose one training constant per method on the validation split.

    ``grid`` maps a method name to ``(field, values)``, e.g. ``{"L2": ("l2", (1e-5, 1e-4))}``;
    methods not in it are kept as they are. Each candidate is trained with every seed (cached
    like any run) and the value with the lowest mean *validation* error wins; the test error is
    not looked at; ties go to the smallest value. Returns the methods with the chosen values and
    a table of the search.
    """
    import pandas as pd

    chosen, rows = [], []
    for method in methods:
        if method.name not in grid:
            chosen.append(method)
            continue
        field_name, values = grid[method.name]
        candidates = [method.replace(**{field_name: v}) for v in values]
        results = run_sweep(candidates, data, seeds=seeds, desc=f"search {method.name}", **run_kwargs)
        for r in results:
            rows.append({"method": method.name, "field": field_name,
                         "value": r.config["train"][field_name], "seed": r.seed,
                         "val_error_pct": 100 * r.val_error})
        table = pd.DataFrame([row for row in rows if row["method"] == method.name])
        best = table.groupby("value")["val_error_pct"].mean().idxmin()
        chosen.append(method.replace(**{field_name: best}))
    return chosen, pd.DataFrame(rows)


def format_summary(summary, digits: int = 2) -> "pd.DataFrame":
    """A :func:`summarize` table as text cells "mean ± std" (just the mean for a single seed)."""
    import pandas as pd

    out = pd.DataFrame(index=summary.index)
    out["seeds"] = summary[("seeds", "n")]
    for column in dict.fromkeys(c for c, _ in summary.columns if c != "seeds"):
        mean, std = summary[(column, "mean")], summary[(column, "std")]
        exact = lambda m, s: float(m).is_integer() and (pd.isna(s) or s == 0)  # e.g. epochs of one seed
        out[COLUMN_LABELS.get(column, column)] = [
            f"{m:.0f}" if exact(m, s) else f"{m:.{digits}f}" + ("" if pd.isna(s) else f" ± {s:.{digits}f}")
            for m, s in zip(mean, std)]
    return out


#: Readable headers for the columns of :func:`results_frame`.
COLUMN_LABELS = {"val_error_pct": "validation error (%)", "test_error_pct": "test error (%)",
                 "epochs_run": "epochs run", "best_epoch": "best epoch", "wall_seconds": "wall time (s)"}


def methods_frame(methods) -> "pd.DataFrame":
    """The methods' settings side by side: what differs between them, and what they share."""
    import pandas as pd

    return pd.DataFrame([{
        "method": m.name, "hidden": "-".join(map(str, m.model.hidden)),
        "dropout (in/hidden)": f"{m.model.dropout_input:g} / {m.model.dropout_hidden:g}",
        "L2 λ": m.train.l2, "L1 λ": m.train.l1,
        "L1 on for last": f"{m.train.l1_last_fraction:.0%}" if m.train.l1 else "",
        "KL β": m.train.kl, "KL ρ": m.train.kl_rho if m.train.kl else "",
        "max-norm c": m.train.max_norm or "", "lr": m.train.lr, "epochs": m.train.epochs,
        "early stopping (patience)": m.train.patience or "",
    } for m in methods]).set_index("method")
