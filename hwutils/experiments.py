"""Experiments: methods as data, cached runs (method × data × seed), sweeps and their tables.

A run is identified by a hash of everything that decides its outcome - the method's model and
training configs, the data description and the seed. Its result (History, final validation and
test error, trained weights) is cached under ``results_dir``, so re-rendering a notebook does not
retrain, an interrupted sweep resumes at the first missing run, and a changed parameter retrains
only the runs it changes. ``force=True`` retrains.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import load_run, run_stem, save_run, update_record
from .data import Splits
from .diagnostics import MEASUREMENTS_VERSION, end_of_training
from .models import ModelConfig, StackedMLP, build_model
from .progress import progress_bar
from .training import History, TrainConfig, evaluate_members, fit_members, shared_prefix_epochs, trunk_config

__all__ = [
    "Method", "RunResult", "run", "run_sweep", "run_key", "pack_wrong", "unpack_wrong", "results_frame",
    "summarize", "wrong_by_method", "run_facts", "prefix_key", "sweep_epochs", "methods_frame", "format_summary", "COLUMN_LABELS",
]

#: Bump when a change to the training code changes results, so cached runs are not reused.
CACHE_VERSION = 3  # 3: the stacked training engine


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
    """One trained run: what it was, what it measured (its History, errors, and the
    :func:`hwutils.diagnostics.end_of_training` ``measurements``), and the trained model - ``None``
    for a run imported without its weights."""

    method: str
    seed: int
    key: str
    history: History
    val_error: float
    test_error: float
    config: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    measurements: dict = field(default_factory=dict)
    val_wrong: np.ndarray | None = None   # which validation images the returned weights get wrong
    test_wrong: np.ndarray | None = None  # which test images (None: not evaluated on the test split)

    @property
    def wall_seconds(self) -> float:
        return self.history.wall_seconds


def pack_wrong(wrong) -> dict:
    """Which images a run gets wrong, as a record keeps it: the count of images and one bit per
    image, base64 (10,000 images: 1.7 kB of text)."""
    bits = np.asarray(wrong, dtype=bool)
    return {"n": int(bits.size), "bits": base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")}


def unpack_wrong(packed: dict | None) -> np.ndarray | None:
    """The boolean per-image array of :func:`pack_wrong` (None stays None)."""
    if packed is None:
        return None
    raw = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(raw, count=packed["n"]).astype(bool)


#: Training fields added after runs were cached, with the value that trains exactly as before their
#: time: left out of the key at that value, so that those cached runs stay valid.
LATER_FIELDS = {"warmup_epochs": 0.0, "lr_half_life_steps": None, "momentum_start": None, "momentum_ramp_steps": 0,
                "max_norm_output": False, "precision": None}
#: The same for the model's fields.
LATER_MODEL_FIELDS = {"init": "torch", "dropout_scaling": "inverted"}


def _without_neutral(config, later: dict) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if later.get(k, object()) != v}


def run_key(method: Method, data_spec: dict, seed: int) -> str:
    """A short hash of everything that decides a run's outcome."""
    payload = {"model": _without_neutral(method.model, LATER_MODEL_FIELDS),
               "train": _without_neutral(method.train, LATER_FIELDS),
               "data": data_spec, "seed": seed, "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(method: Method, data: Splits, *, seed: int = 0, **sweep_kwargs) -> RunResult:
    """Train ``method`` on ``data`` with ``seed`` (or load it from the cache): :func:`run_sweep` of one run."""
    return run_sweep([method], data, seeds=(seed,), **sweep_kwargs)[0]


#: The most runs trained together as one stacked model.
MAX_TOGETHER = 24


def run_sweep(methods, data: Splits, *, seeds=(0,),
              results_dir: str | os.PathLike | None = "results", force: bool = False,
              progress: bool = True, together: bool | None = None, on_nan: str = "raise",
              evaluate_test: bool = True, desc: str = "runs", train: bool = True) -> list[RunResult | None]:
    """Train every method with every seed (initial weights, shuffling, dropout) and evaluate it.

    ``data.spec`` describes the data (e.g. ``{"name": "mnist", "downsample": None, ...}``) and is
    part of each run's cache key; a cached run is loaded, not retrained (``force=True`` retrains; with
    ``results_dir=None`` nothing is cached). Runs still to train that can share a step - same
    architecture, epochs, batch size and optimizer - are trained together as one stacked model
    (:func:`hwutils.training.fit_members`) where that pays: on a GPU, where one small network
    leaves it idle (``together``; default: on CUDA); runs that are the same run for their first
    epochs (L2 and L2 with L1 switched on late, :func:`prefix_key`) train together everywhere, and
    those epochs once. A run's result and cache entry do not depend on what it was trained with.
    The validation error is that of the returned weights (the best epoch's when early stopping
    restores them); the test error is measured once, at the end.
    ``on_nan``: "raise" stops at a diverged run, naming it; "stop" keeps it, marked diverged.
    ``evaluate_test=False`` leaves the test split untouched (test error NaN), as a search should.
    ``train=False`` (a dry command) trains nothing and writes nothing: a run that is not in the cache,
    cannot be used, or lacks its test error comes back as None, and its files are left as they are.
    """
    spec = dict(data.spec)
    jobs = [(m, s) for m in methods for s in seeds]
    results: list[RunResult | None] = [None] * len(jobs)
    todo = []
    for i, (method, seed) in enumerate(jobs):
        stem = run_stem(results_dir, method.name, run_key(method, spec, seed)) if results_dir else None
        cached, model = None, build_model(method.model, data.n_features, data.n_classes)
        if stem is not None and not force:  # weights that do not fit this method's model are set aside
            cached = load_run(stem, model, set_aside=train)  # and weights that fit are loaded into it
        if cached is None:
            todo.append(i)
        elif not train:
            results[i] = None if _lacks(cached[0], evaluate_test) else _cached_result(
                seed, data, cached[0], model if cached[1] is not None else None, False)
        else:
            results[i] = _cached_result(seed, data, cached[0], model if cached[1] is not None else None,
                                        evaluate_test)
            _bring_up_to_date(stem, cached[0], results[i], data, evaluate_test)
    if not train:
        return results
    if together is None:
        together = data.train.X.device.type == "cuda"
    groups = _groups([jobs[i] for i in todo], todo, together)
    bar = progress_bar(total=len(todo), desc=desc, unit="run", leave=True, disable=not progress or not todo)
    for group in groups:
        names = [f"{jobs[i][0].name} (seed {jobs[i][1]})" for i in group]
        bar.set_postfix_str(names[0] if len(names) == 1 else f"{len(names)} runs together")
        models = [build_model(jobs[i][0].model, data.n_features, data.n_classes, seed=jobs[i][1]) for i in group]
        configs = [jobs[i][0].train.replace(seed=jobs[i][1]) for i in group]
        histories = fit_members(models, data.train, data.val, configs, names=names, progress=progress,
                                desc=names[0] if len(names) == 1 else f"{len(names)} runs", on_nan=on_nan)
        scores = _scores(models, data, evaluate_test)
        for i, model, history, score in zip(group, models, histories, scores):
            results[i] = _finish(*jobs[i], spec, data, model, history, results_dir, score)
        bar.update(len(group))
    bar.close()
    return results


def prefix_key(method: Method, seed: int):
    """What decides the first epochs of a run that are the same run as others' (L2 and L2 with L1
    switched on late: :func:`hwutils.training.shared_prefix_epochs`); None for a run that shares none."""
    dropout = bool(method.model.dropout_input or method.model.dropout_hidden)
    if shared_prefix_epochs(method.train, dropout) == 0:
        return None
    return method.model, trunk_config(method.train.replace(seed=seed))


def sweep_epochs(jobs) -> list[int]:
    """The epochs each of ``jobs`` (``(method, seed)`` pairs, all to train in one :func:`run_sweep`)
    costs: its own, except that runs sharing their first epochs (:func:`prefix_key`) train those
    once - the first of them pays for them, each other one only for the epochs after."""
    keys = [prefix_key(method, seed) for method, seed in jobs]
    split: dict[object, int] = {}
    for (method, _), key in zip(jobs, keys):
        if key is not None:
            split[key] = min(split.get(key, method.train.epochs), shared_prefix_epochs(method.train))
    paid, out = set(), []
    for (method, _), key in zip(jobs, keys):
        shared = 0 if key is None or key not in paid else split[key]
        paid.add(key)
        out.append(method.train.epochs - shared)
    return out


def _groups(jobs, indices, together: bool) -> list[list[int]]:
    """Indices of the runs to train together: one group per shared step (at most MAX_TOGETHER).
    One by one where stacking does not pay, except runs that share their first epochs
    (:func:`prefix_key`): those train together everywhere, so that those epochs train once."""
    if not together:
        by_prefix: dict[object, list[int]] = {}
        for (method, seed), i in zip(jobs, indices):
            key = prefix_key(method, seed)
            by_prefix.setdefault(("alone", i) if key is None else key, []).append(i)
        return [g[j:j + MAX_TOGETHER] for g in by_prefix.values() for j in range(0, len(g), MAX_TOGETHER)]
    by_step: dict[tuple, list[int]] = {}
    for (method, _), i in zip(jobs, indices):
        t = method.train
        by_step.setdefault((method.model.hidden, t.epochs, t.batch_size, t.optimizer, t.nesterov, t.precision),
                           []).append(i)
    return [g[j:j + MAX_TOGETHER] for g in by_step.values() for j in range(0, len(g), MAX_TOGETHER)]


def _config_record(method: Method, spec: dict) -> dict:
    return {"model": dataclasses.asdict(method.model), "train": dataclasses.asdict(method.train), "data": spec}


def _cached_result(seed, data, record, model, evaluate_test: bool) -> RunResult:
    """A cached run's result; ``model`` holds its loaded weights (None: imported without them)."""
    if model is not None:
        model.to(data.train.X.device).eval()
    wrong = record.get("wrong") or {}
    test_error, test_wrong = record["test_error"], unpack_wrong(wrong.get("test"))
    if evaluate_test and not _finite(test_error) and model is not None:  # cached by a search
        score, = _scores([model], data, True)
        test_error, test_wrong = score["test_error"], score["test_wrong"]
    return RunResult(record["method"], seed, record["key"], History.from_dict(record["history"]),
                     record["val_error"], test_error, record["config"], model, record.get("measurements") or {},
                     unpack_wrong(wrong.get("val")), test_wrong)


def _lacks(record: dict, evaluate_test: bool) -> bool:
    """Whether a cached record lacks what this sweep needs of it: a test error, or this version's
    measurements (a dry command cannot fill them in)."""
    return ((evaluate_test and not _finite(record.get("test_error")))
            or (record.get("measurements") or {}).get("version") != MEASUREMENTS_VERSION)


def _bring_up_to_date(stem, record: dict, result: RunResult, data: Splits, evaluate_test: bool) -> None:
    """Fill in what a cached run lacks - measurements of an older kind, a test error when a search
    cached it without one - from its weights, and store them in its record (the weights are
    unchanged). A run without weights (imported) that lacks them is named in one line."""
    missing_test = evaluate_test and not _finite(record.get("test_error"))
    old = (result.measurements or {}).get("version") != MEASUREMENTS_VERSION
    if not (missing_test or old):
        return
    if result.model is None:
        need = "a test error" if missing_test else "this version's measurements"
        raise RuntimeError(f"cached run {stem}.json has no weights and lacks {need}: train it where it was "
                           f"trained (python -m hwutils.study ...) and export the results again")
    if old:
        result.measurements = end_of_training(result.model, data.val.X)
    update_record(stem, {**record, "test_error": result.test_error, "measurements": result.measurements,
                         "wrong": _wrong_record(result.val_wrong, result.test_wrong)})


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _scores(models, data: Splits, evaluate_test: bool) -> list[dict]:
    """Per model: validation error and the images it gets wrong, and the same on the test split
    (NaN and None without ``evaluate_test``) - evaluated stacked, all members in one pass a split."""
    net = StackedMLP.from_models(models).to(data.train.X.device)
    _, val_error, val_wrong = evaluate_members(net, data.val, wrong=True)
    test_error, test_wrong = [math.nan] * len(models), [None] * len(models)
    if evaluate_test:
        _, test_error, test_wrong = evaluate_members(net, data.test, wrong=True)
        test_error, test_wrong = test_error.tolist(), list(test_wrong.cpu().numpy())
    return [{"val_error": v, "test_error": t, "val_wrong": vw, "test_wrong": tw}
            for v, t, vw, tw in zip(val_error.tolist(), test_error, val_wrong.cpu().numpy(), test_wrong)]


def _wrong_record(val_wrong, test_wrong) -> dict:
    return {split: None if wrong is None else pack_wrong(wrong)
            for split, wrong in (("val", val_wrong), ("test", test_wrong))}


def _finish(method, seed, spec, data, model, history, results_dir, score: dict) -> RunResult:
    """Cache a trained run with its :func:`_scores` and return its result."""
    model.eval()
    key, config = run_key(method, spec, seed), _config_record(method, spec)
    measurements = end_of_training(model, data.val.X)
    if results_dir:
        record = {"method": method.name, "seed": seed, "key": key, "val_error": score["val_error"],
                  "test_error": score["test_error"], "config": config, "history": history.to_dict(),
                  "measurements": measurements, "wrong": _wrong_record(score["val_wrong"], score["test_wrong"])}
        save_run(run_stem(results_dir, method.name, key), record, model.state_dict())
    return RunResult(method.name, seed, key, history, score["val_error"], score["test_error"], config, model,
                     measurements, score["val_wrong"], score["test_wrong"])


def results_frame(results) -> "pd.DataFrame":
    """One row per run: method, seed, validation/test error (%), epochs, best epoch, wall time."""
    import pandas as pd

    return pd.DataFrame([{
        "method": r.method, "seed": r.seed,
        "val_error_pct": 100 * r.val_error, "test_error_pct": 100 * r.test_error,
        "epochs_run": r.history.epochs_run, "best_epoch": r.history.best_epoch,
        "wall_seconds": r.wall_seconds,
    } for r in results])


def wrong_by_method(results, split: str = "test", order=None) -> dict:
    """Which images each method's runs got wrong on ``split`` ("test" or "val"): ``{method: [n]}`` for
    a method with one seed, ``{method: [seeds, n]}`` (by seed) for more - what
    :func:`hwutils.stats.pairwise` compares."""
    by_method: dict[str, list] = {}
    for r in sorted(results, key=lambda r: r.seed):
        by_method.setdefault(r.method, []).append(r.test_wrong if split == "test" else r.val_wrong)
    names = order or list(by_method)
    return {n: by_method[n][0] if len(by_method[n]) == 1 else np.stack(by_method[n]) for n in names}


def summarize(results, order=None) -> "pd.DataFrame":
    """Mean and standard deviation over seeds of each column of :func:`results_frame`, per method."""
    frame = results_frame(results)
    order = order or list(dict.fromkeys(frame["method"]))
    summary = frame.drop(columns="seed").groupby("method", sort=False).agg(["mean", "std"]).reindex(order)
    summary.insert(0, ("seeds", "n"), frame.groupby("method").size().reindex(order))
    return summary


def run_facts(result: RunResult) -> dict:
    """What a run's last epoch says about its regularizers: near-zero weights (%), hidden units at
    the max-norm cap (%), the largest hidden unit's weight norm, and the largest fraction of units
    at the cap over training (%)."""
    h = result.history
    last = lambda values: values[-1] if values else math.nan
    return {"near_zero_pct": 100 * last(h.small_weights), "at_cap_pct": 100 * last(h.at_cap),
            "max_unit_norm": last(h.max_unit_norm), "at_cap_peak_pct": 100 * max(h.at_cap, default=math.nan)}


def format_summary(summary, digits: int = 2) -> "pd.DataFrame":
    """A :func:`summarize` table as text cells "mean ± std" (just the mean for a single seed)."""
    import pandas as pd

    out = pd.DataFrame(index=summary.index)
    out["seeds"] = summary[("seeds", "n")]
    for column in dict.fromkeys(c for c, _ in summary.columns if c != "seeds"):
        mean, std = summary[(column, "mean")], summary[(column, "std")]
        exact = lambda m, s: float(m).is_integer() and (pd.isna(s) or s == 0)  # e.g. epochs of one seed
        out[COLUMN_LABELS.get(column, column)] = [
            f"{m:.0f}" if exact(m, s) else f"{m:.{digits}f}" + ("" if pd.isna(s) else f"\u00a0±\u00a0{s:.{digits}f}")
            for m, s in zip(mean, std)]
    return out


#: Readable headers for the columns of :func:`results_frame`.
COLUMN_LABELS = {"val_error_pct": "validation error (%)", "test_error_pct": "test error (%)",
                 "epochs_run": "epochs run", "best_epoch": "best epoch", "wall_seconds": "wall time (s)"}


def methods_frame(methods) -> "pd.DataFrame":
    """The methods' settings side by side: what differs between them, and what they share."""
    import pandas as pd

    return pd.DataFrame([{
        "method": m.name, "hidden": "-\u200b".join(map(str, m.model.hidden)),  # may break after "-"
        "dropout (in/hidden)": f"{m.model.dropout_input:g} / {m.model.dropout_hidden:g}",
        "L2 λ": m.train.l2, "L1 λ": m.train.l1,
        "L1 on for last": f"{m.train.l1_last_fraction:.0%}" if m.train.l1 else "",
        "KL β": m.train.kl, "KL ρ": m.train.kl_rho if m.train.kl else "",
        "max-norm c": m.train.max_norm or "", "lr": m.train.lr, "epochs": m.train.epochs,
        "early stopping (patience)": m.train.patience or "",
    } for m in methods]).set_index("method")
