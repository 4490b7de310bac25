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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache import atomic_write, load_run, run_stem, save_run
from .data import Splits
from .diagnostics import MEASUREMENTS_VERSION, end_of_training
from .models import ModelConfig, build_model
from .progress import progress_bar
from .training import History, TrainConfig, evaluate, fit_members, shared_prefix_epochs, trunk_config

__all__ = [
    "Method", "RunResult", "run", "run_sweep", "results_frame", "summarize", "search", "search_candidates",
    "search_choices", "choices_at_edge", "edge_margins", "returned_val_loss",
    "run_facts", "compare_to_noise", "ranking_text", "grid_fields", "prefix_key", "sweep_epochs",
    "methods_frame",
    "format_summary", "COLUMN_LABELS",
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

    @property
    def wall_seconds(self) -> float:
        return self.history.wall_seconds


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
              evaluate_test: bool = True, desc: str = "runs") -> list[RunResult]:
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
    """
    spec = dict(data.spec)
    jobs = [(m, s) for m in methods for s in seeds]
    results: list[RunResult | None] = [None] * len(jobs)
    todo = []
    for i, (method, seed) in enumerate(jobs):
        stem = run_stem(results_dir, method.name, run_key(method, spec, seed)) if results_dir else None
        cached, model = None, build_model(method.model, data.n_features, data.n_classes)
        if stem is not None and not force:  # weights that do not fit this method's model are set aside
            cached = load_run(stem, model)    # and weights that fit are loaded into it
        if cached is None:
            todo.append(i)
        else:
            results[i] = _cached_result(seed, data, cached[0], model if cached[1] is not None else None,
                                        evaluate_test)
            _bring_up_to_date(stem, cached[0], results[i], data, evaluate_test)
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
        for i, model, history in zip(group, models, histories):
            results[i] = _finish(*jobs[i], spec, data, model, history, results_dir, evaluate_test)
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
    test_error = record["test_error"]
    if evaluate_test and not _finite(test_error) and model is not None:  # cached by a search
        test_error = evaluate(model, data.test)[1]
    return RunResult(record["method"], seed, record["key"], History.from_dict(record["history"]),
                     record["val_error"], test_error, record["config"], model, record.get("measurements") or {})


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
    atomic_write(Path(stem).with_suffix(".json"), lambda p: p.write_text(json.dumps(
        {**record, "test_error": result.test_error, "measurements": result.measurements}), encoding="utf-8"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _finish(method, seed, spec, data, model, history, results_dir, evaluate_test: bool) -> RunResult:
    """Evaluate a trained run, cache it, and return its result."""
    _, val_error = evaluate(model, data.val)
    test_error = evaluate(model, data.test)[1] if evaluate_test else math.nan
    model.eval()
    key, config = run_key(method, spec, seed), _config_record(method, spec)
    measurements = end_of_training(model, data.val.X)
    if results_dir:
        record = {"method": method.name, "seed": seed, "key": key, "val_error": val_error,
                  "test_error": test_error, "config": config, "history": history.to_dict(),
                  "measurements": measurements}
        save_run(run_stem(results_dir, method.name, key), record, model.state_dict())
    return RunResult(method.name, seed, key, history, val_error, test_error, config, model, measurements)


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


def grid_fields(spec) -> dict:
    """One method's entry of a :func:`search` grid as ``{field: values}``: ``("l2", (1e-5, 1e-4))``
    and ``{"lr": (...), "l2": (...)}`` are both accepted there."""
    return dict([spec]) if isinstance(spec, tuple) else dict(spec)


def search(methods, grid: dict, data: Splits, *, seeds=(0,), **sweep_kwargs):
    """Choose training constants per method on the validation split.

    ``grid`` maps a method name to ``(field, values)``, e.g. ``{"L2": ("l2", (1e-5, 1e-4))}``, or
    to ``{field: values, ...}`` to search several fields jointly (every combination), e.g.
    ``{"max-norm": {"lr": (0.03, 0.1), "max_norm": (2.0, 3.0)}}``; methods not in it are kept as
    they are. Every candidate (:func:`search_candidates`) is trained with every seed - all in one
    :func:`run_sweep`, so they are cached like any run and trained together where that pays - and
    :func:`search_choices` picks the combination with the lowest mean *validation* error.
    """
    candidates = search_candidates(methods, grid)
    results = run_sweep(candidates, data, seeds=seeds, desc="search", evaluate_test=False, **sweep_kwargs)
    return search_choices(methods, grid, results)


def search_candidates(methods, grid: dict) -> list[Method]:
    """Every combination of ``grid``'s values for each method it names (see :func:`search`)."""
    import itertools

    fields = {name: grid_fields(spec) for name, spec in grid.items()}
    return [method.replace(**dict(zip(fields[method.name], combo)))
            for method in methods if method.name in fields
            for combo in itertools.product(*fields[method.name].values())]


def search_choices(methods, grid: dict, results):
    """The methods with the values ``grid``'s search chose from ``results`` (the trained
    :func:`search_candidates`, any seeds): per method, the combination with the lowest mean
    *validation* error (the test error is not looked at); among equal errors, the lowest mean
    validation loss (the cross-entropy of the same models on the same images: a finer measure of
    the same fit); only runs equal in both - where the constant did not act between the values, as a
    max-norm radius that never binds - go to the smallest values. Also returns a table of the
    search: one row per candidate and seed, a column per searched field, ``field``/``value`` for the
    method's own constant (its first field other than ``lr``), ``val_error_pct``, ``val_loss`` (of
    the model returned), ``diverged``, ``chosen``, the :func:`run_facts` and ``dead_pct`` (hidden
    units that never fire on the validation images; NaN for a run that diverged)."""
    import pandas as pd

    fields = {name: grid_fields(spec) for name, spec in grid.items()}
    rows = []
    for r in results:
        if r.method not in fields:
            continue
        own = next((f for f in fields[r.method] if f != "lr"), next(iter(fields[r.method])))
        rows.append({"method": r.method, **{f: r.config["train"][f] for f in fields[r.method]}, "field": own,
                     "value": r.config["train"][own], "seed": r.seed, "val_error_pct": 100 * r.val_error,
                     "val_loss": returned_val_loss(r), "diverged": r.history.diverged, **run_facts(r),
                     "dead_pct": math.nan if r.history.diverged else r.measurements["dead_pct"]})
    table = pd.DataFrame(rows)
    chosen = []
    for method in methods:
        if method.name not in fields:
            chosen.append(method)
            continue
        names = list(fields[method.name])
        mine = table[table["method"] == method.name]
        means = mine.groupby(names)[["val_error_pct", "val_loss"]].mean().sort_index()  # equal in both → smallest
        best = means.sort_values(["val_error_pct", "val_loss"], kind="stable").index[0]
        best = best if len(names) > 1 else (best,)
        plain = [v.item() if hasattr(v, "item") else v for v in best]  # numpy scalars → Python numbers
        chosen.append(method.replace(**dict(zip(names, plain))))
    if len(table):
        by_name = {m.name: m for m in chosen}
        table["chosen"] = [all(row[f] == getattr(by_name[row["method"]].train, f) for f in fields[row["method"]])
                           for row in table.to_dict("records")]
    return chosen, table


def returned_val_loss(result: RunResult) -> float:
    """The validation loss of the model a run returned: its best epoch's with early stopping (whose
    weights it returns), else its last epoch's; NaN for a run that diverged or has no epoch."""
    h = result.history
    if h.diverged or not h.val_loss:
        return math.nan
    early = (result.config.get("train") or {}).get("patience") is not None and h.best_epoch
    return h.val_loss[h.best_epoch - 1] if early else h.val_loss[-1]


def edge_margins(table, grid: dict, edges, n_val: int, z: float = 2.0) -> list[dict]:
    """For each choice at an edge of ``grid`` (:func:`choices_at_edge`), how it compares with its
    neighbour inside the grid, the other searched fields as chosen: ``margin`` (points of validation
    error by which the neighbour is worse), ``noise`` (``z`` binomial standard errors of that
    difference on ``n_val`` images per seed: ``sqrt(p₁(1-p₁)/n + p₂(1-p₂)/n)``), ``same`` (the two
    equal in mean validation error and loss: the field did not act between them) and ``extend``:
    beyond the noise, or the same - where a value further out may still be better, or is where the
    field starts to act. Within the noise the grid stops: validation could not tell a value beyond
    the edge from it either."""
    out = []
    for name, field, value, side in edges:
        mine = table[table["method"] == name]
        chosen = mine[mine["chosen"]].iloc[0]
        for other in grid_fields(grid[name]):
            if other != field:
                mine = mine[mine[other] == chosen[other]]
        values = sorted(mine[field].unique())
        inner = values[1] if side == "smallest" else values[-2]
        here, there = mine[mine[field] == value], mine[mine[field] == inner]
        p1, p2 = here["val_error_pct"].mean() / 100, there["val_error_pct"].mean() / 100
        n = n_val * len(here)
        noise = 100 * z * math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)
        same = bool(p1 == p2 and here["val_loss"].mean() == there["val_loss"].mean())
        margin = 100 * (p2 - p1)
        out.append({"method": name, "field": field, "value": float(value), "side": side, "neighbour": float(inner),
                    "margin": float(margin), "noise": float(noise), "same": same,
                    "extend": bool(same or margin > noise)})
    return out


def run_facts(result: RunResult) -> dict:
    """What a run's last epoch says about its regularizers: near-zero weights (%), hidden units at
    the max-norm cap (%), the largest hidden unit's weight norm, and the largest fraction of units
    at the cap over training (%)."""
    h = result.history
    last = lambda values: values[-1] if values else math.nan
    return {"near_zero_pct": 100 * last(h.small_weights), "at_cap_pct": 100 * last(h.at_cap),
            "max_unit_norm": last(h.max_unit_norm), "at_cap_peak_pct": 100 * max(h.at_cap, default=math.nan)}


def compare_to_noise(results, n_test: int, z: float = 2.0) -> "pd.DataFrame":
    """Every pair of methods: difference of test error (points) and whether it exceeds the noise.

    With several seeds per method the difference is paired by seed (mean difference and its
    standard error over seeds); with one seed, its standard error is the binomial one of two error
    rates measured on ``n_test`` images, ``sqrt(p₁(1-p₁)/n + p₂(1-p₂)/n)`` (which ignores that both
    see the same images, so it is if anything too large). ``exceeds_noise``: ``|difference| > z·s.e.``.
    """
    import itertools

    import pandas as pd

    frame = results_frame(results)
    errors = frame.pivot_table(index="seed", columns="method", values="test_error_pct")
    rows = []
    for a, b in itertools.combinations(list(dict.fromkeys(frame["method"])), 2):
        pair = errors[[a, b]].dropna()
        diff = pair[b] - pair[a]
        if len(pair) > 1:
            se, basis = diff.std(ddof=1) / math.sqrt(len(pair)), f"paired over {len(pair)} seeds"
        else:
            pa, pb = pair[a].mean() / 100, pair[b].mean() / 100
            se, basis = 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n_test), "binomial, one seed"
        rows.append({"a": a, "b": b, "difference": diff.mean(), "se": se, "basis": basis,
                     "exceeds_noise": abs(diff.mean()) > z * se})
    return pd.DataFrame(rows)


def ranking_text(summary, comparisons, column: str = "test_error_pct") -> str:
    """Methods ordered by mean ``column``, joined by "<" where the step exceeds the noise of
    :func:`compare_to_noise` and by "≈" where it does not."""
    mean = summary[(column, "mean")].sort_values()
    exceeds = {frozenset((r.a, r.b)): r.exceeds_noise for r in comparisons.itertuples()}
    parts = [f"{mean.index[0]} ({mean.iloc[0]:.2f} %)"]
    for prev, name in zip(mean.index[:-1], mean.index[1:]):
        parts.append(("<" if exceeds[frozenset((prev, name))] else "≈") + f" {name} ({mean[name]:.2f} %)")
    return " ".join(parts)


def choices_at_edge(table, grid: dict) -> list[tuple[str, str, float, str]]:
    """``(method, field, value, "smallest" | "largest")`` for each searched value that was chosen
    at an edge of its grid (the optimum may lie beyond it)."""
    edges = []
    for name, spec in grid.items():
        for searched, values in grid_fields(spec).items():
            picked = table[(table["method"] == name) & table["chosen"]][searched]
            if len(values) > 1 and len(picked):
                value = picked.iloc[0]
                if value in (min(values), max(values)):
                    edges.append((name, searched, value, "smallest" if value == min(values) else "largest"))
    return edges


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
