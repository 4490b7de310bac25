"""The validation search: candidates, the choice, and the decisions at a grid's edge, each
compared paired on the validation images.

A method's grid maps its fields to values (``{"lr": (...), "l2": (...)}``); every combination is a
candidate. The candidates of one grid train with the same seed, hence from the same initial
weights and with the same minibatch order, and are scored on the same validation images: two of
them are compared image by image (:mod:`hwutils.stats`), never as independent proportions. Each
grid also holds its **reference**, the method with its regularizer switched off (λ = 0, no radius),
so that the report can say whether the chosen constant beats no regularizer at all.

The choice is the candidate with the fewest validation errors (mean over seeds); among equal
errors, the lower validation loss; only runs equal in both (the constant did not act between the
values) go to the smallest value. A choice on an edge of its grid extends the grid one step outward
(:func:`extend_grid`) where it beats the value beside it on the paired test, or is the same run;
otherwise the grid stops there, and :func:`edge_decisions` says why.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from .experiments import Method, RunResult, run_facts
from .stats import seeds_paired

__all__ = ["GRID_EXTENSIONS", "FINAL_EXTENSIONS", "ALPHA", "grid_fields", "own_field", "switched_off",
           "search", "search_candidates", "search_choices", "choices_at_edge", "edge_decisions", "versus_reference",
           "extend_grid", "runs_per_value", "returned_val_loss", "SearchOutcome"]

#: How many times a grid is extended outward, one step at a time, while its choice is at an edge:
#: on the search data, and at the final budget (where each step costs full runs).
GRID_EXTENSIONS = 2
FINAL_EXTENSIONS = 1
#: The level of the paired tests that decide an edge.
ALPHA = 0.05


def grid_fields(spec) -> dict:
    """One method's entry of a grid as ``{field: values}``: ``("l2", (1e-5, 1e-4))`` and
    ``{"lr": (...), "l2": (...)}`` are both accepted."""
    return dict([spec]) if isinstance(spec, tuple) else dict(spec)


def own_field(fields: dict) -> str:
    """The method's own constant among a grid's fields: the first that is not the learning rate."""
    return next((f for f in fields if f != "lr"), next(iter(fields)))


def switched_off(method: Method, own: str, name: str) -> Method:
    """``method`` with its own constant ``own`` switched off - λ = 0, no max-norm radius, L1 never on -
    named ``name``: the reference its search compares the chosen constant with. Methods whose
    references are the same run share one name (L2's and max-norm's: "no regularizer")."""
    off = {"l2": {"l2": 0.0}, "kl": {"kl": 0.0}, "max_norm": {"max_norm": None, "max_norm_output": False},
           "l1": {"l1": 0.0, "l1_last_fraction": 1.0, "l1_proximal": False}}[own]
    return dataclasses.replace(method, name=name, train=method.train.replace(**off))


def search_candidates(methods, grid: dict, references: dict | None = None) -> list[Method]:
    """The references first - ``references`` maps a method's name to the runs it is compared with
    (default: none) - then every combination of ``grid``'s values for each method it names."""
    fields = {name: grid_fields(spec) for name, spec in grid.items()}
    out = []
    for name in grid:
        for ref in (references or {}).get(name, ()):
            if ref not in out:
                out.append(ref)
    return out + [method.replace(**dict(zip(fields[method.name], combo)))
                  for method in methods if method.name in fields
                  for combo in itertools.product(*fields[method.name].values())]


def search(methods, grid: dict, data, *, seeds=(0,), **sweep_kwargs):
    """Choose training constants per method on the validation split: every candidate
    (:func:`search_candidates`) with every seed in one :func:`~hwutils.experiments.run_sweep` (cached
    like any run, trained together where that pays, the test split untouched), then
    :func:`search_choices`. Returns the chosen methods and the search's table."""
    from .experiments import run_sweep

    results = run_sweep(search_candidates(methods, grid), data, seeds=seeds, desc="search", evaluate_test=False,
                        **sweep_kwargs)
    return search_choices(methods, grid, results)


def returned_val_loss(result: RunResult) -> float:
    """The validation loss of the model a run returned: its best epoch's with early stopping (whose
    weights it returns), else its last epoch's; NaN for a run that diverged or has no epoch."""
    h = result.history
    if h.diverged or not h.val_loss:
        return math.nan
    early = (result.config.get("train") or {}).get("patience") is not None and h.best_epoch
    return h.val_loss[h.best_epoch - 1] if early else h.val_loss[-1]


def _row(result: RunResult, index: int, name: str, fields: dict, reference: bool) -> dict:
    train = result.config["train"]
    own = own_field(fields)
    values = {f: train[f] for f in fields}
    if reference:
        values[own] = math.nan  # switched off: no value of the constant
    return {"method": name, **values, "field": own, "value": values[own], "reference": reference,
            "seed": result.seed, "val_error_pct": 100 * result.val_error, "val_loss": returned_val_loss(result),
            "diverged": result.history.diverged, **run_facts(result),
            "dead_pct": math.nan if result.history.diverged else result.measurements["dead_pct"], "run": index}


def search_choices(methods, grid: dict, results, references: dict | None = None):
    """The methods with the values ``grid``'s search chose from ``results`` (the trained
    :func:`search_candidates`, any seeds; the test error is not looked at), and the table of the
    search: one row per candidate and seed with a column per searched field, ``field``/``value``
    (the method's own constant), ``reference`` (the row is the method's reference: its regularizer
    off, ``value`` NaN), ``val_error_pct``, ``val_loss``, ``diverged``, ``chosen``, the
    :func:`~hwutils.experiments.run_facts`, ``dead_pct`` and ``run`` (the index into ``results``)."""
    import pandas as pd

    fields = {name: grid_fields(spec) for name, spec in grid.items()}
    rows = []
    for i, r in enumerate(results):
        if r.method in fields:
            rows.append(_row(r, i, r.method, fields[r.method], False))
        for name, refs in (references or {}).items():
            if name in fields and any(_is_run_of(r, ref) for ref in refs):
                rows.append(_row(r, i, name, fields[name], True))
    table = pd.DataFrame(rows)
    chosen = []
    for method in methods:
        if method.name not in fields:
            chosen.append(method)
            continue
        names = list(fields[method.name])
        mine = table[(table["method"] == method.name) & ~table["reference"]]
        means = mine.groupby(names)[["val_error_pct", "val_loss"]].mean().sort_index()  # equal in both → smallest
        best = means.sort_values(["val_error_pct", "val_loss"], kind="stable").index[0]
        best = best if len(names) > 1 else (best,)
        plain = [v.item() if hasattr(v, "item") else v for v in best]  # numpy scalars → Python numbers
        chosen.append(method.replace(**dict(zip(names, plain))))
    if len(table):
        by_name = {m.name: m for m in chosen}
        table["chosen"] = [not row["reference"] and all(row[f] == getattr(by_name[row["method"]].train, f)
                                                        for f in fields[row["method"]])
                           for row in table.to_dict("records")]
    return chosen, table


def _is_run_of(result: RunResult, method: Method) -> bool:
    """Whether ``result`` is a run of ``method`` (its name and every training setting but the seed)."""
    train = result.config["train"]
    return result.method == method.name and all(
        train.get(f) == v for f, v in dataclasses.asdict(method.train).items() if f != "seed")


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


def _wrong(table, results, rows) -> np.ndarray:
    """The per-image mistakes of ``rows`` of a search table, one row per seed: ``[S, n]``."""
    return np.stack([results[i].val_wrong for i in rows.sort_values("seed")["run"]])


def _paired(table, results, a, b):
    """Rows ``a`` against rows ``b`` (each one row per seed), paired on the validation images; None
    where a run has no per-image results or diverged."""
    if a["diverged"].any() or b["diverged"].any():
        return None
    if any(results[i].val_wrong is None for i in (*a["run"], *b["run"])):
        return None
    return seeds_paired(_wrong(table, results, a), _wrong(table, results, b))


def edge_decisions(table, grid: dict, edges, results) -> list[dict]:
    """For each choice at an edge (:func:`choices_at_edge`), how it compares with its neighbour
    inside the grid (the other searched fields as chosen), paired on the validation images:
    ``difference`` (points of validation error, edge minus neighbour), ``low``/``high`` (its 95 %
    interval), ``p`` (exact), ``same`` (the two runs make the same mistakes and have the same loss:
    the constant did not act between them) and ``extend``: the edge is better on the paired test
    (p < :data:`ALPHA`), or the same run - a value further out may still be better, or is where the
    constant starts to act. Otherwise the grid stops: the paired test could not tell them apart."""
    out = []
    for name, fld, value, side in edges:
        mine = table[(table["method"] == name) & ~table["reference"]]
        chosen = mine[mine["chosen"]].iloc[0]
        for other in grid_fields(grid[name]):
            if other != fld:
                mine = mine[mine[other] == chosen[other]]
        values = sorted(mine[fld].unique())
        inner = values[1] if side == "smallest" else values[-2]
        here, there = mine[mine[fld] == value], mine[mine[fld] == inner]
        paired = _paired(table, results, here, there)
        same = bool(paired is not None and paired.only_a_wrong == 0 and paired.only_b_wrong == 0
                    and here["val_loss"].mean() == there["val_loss"].mean())
        better = paired is not None and paired.difference < 0 and paired.p < ALPHA
        out.append({"method": name, "field": fld, "value": float(value), "side": side, "neighbour": float(inner),
                    "difference": math.nan if paired is None else paired.difference,
                    "low": math.nan if paired is None else paired.low,
                    "high": math.nan if paired is None else paired.high,
                    "p": math.nan if paired is None else paired.p,
                    "discordant": math.nan if paired is None else paired.only_a_wrong + paired.only_b_wrong,
                    "same": same, "extend": bool(same or better)})
    return out


def versus_reference(table, results) -> dict:
    """Per method with a reference in ``table``: its chosen candidate against the reference at the
    same learning rate, paired on the validation images (a :class:`~hwutils.stats.PairedComparison`
    of chosen minus reference, or None where it cannot be made)."""
    out = {}
    for name in dict.fromkeys(table["method"]):
        mine = table[table["method"] == name]
        chosen, refs = mine[mine["chosen"]], mine[mine["reference"]]
        if not len(chosen) or not len(refs):
            continue
        if "lr" in mine:
            refs = refs[refs["lr"] == chosen["lr"].iloc[0]]
        out[name] = _paired(table, results, chosen, refs) if len(refs) == len(chosen) else None
    return out


def runs_per_value(spec) -> int:
    """Runs one more value of a grid's field adds: the combinations of the other fields (the largest)."""
    fields = grid_fields(spec)
    return max(math.prod(len(v) for g, v in fields.items() if g != f) for f in fields)


def extend_grid(grid: dict, base: dict, edges, extensions: int = GRID_EXTENSIONS) -> dict | None:
    """``grid`` with one more value beyond each of ``edges`` (the ratio of the two outermost values),
    at most ``extensions`` steps beyond ``base``; None when nothing is extended."""
    wider = {name: grid_fields(spec) for name, spec in grid.items()}
    changed = False
    for name, fld, _, side in edges:
        values = sorted(wider[name][fld])
        original = sorted(grid_fields(base[name])[fld])
        if len(values) - len(original) >= extensions:
            continue
        step = values[1] / values[0] if side == "smallest" else values[-1] / values[-2]
        new = values[0] / step if side == "smallest" else values[-1] * step
        wider[name][fld] = tuple(sorted((*values, float(f"{new:.3g}"))))
        changed = True
    return wider if changed else None


@dataclass
class SearchOutcome:
    """A search's result: the chosen methods, the table of every candidate, the grid as finally
    searched and as first planned, the choices at an edge of the final grid and the decision at
    each (:func:`edge_decisions`), its stages, where it ran, the candidates' runs, and each chosen
    constant against the method's reference (:func:`versus_reference`)."""

    chosen: list
    table: "pd.DataFrame"
    grid: dict
    base: dict
    edges: list
    stages: list
    where: str
    results: list
    decisions: list = field(default_factory=list)
    references: dict = field(default_factory=dict)

    @property
    def tied(self) -> dict:
        """``{method: (field, values)}`` for each method whose lowest validation error and loss at
        the chosen learning rate are shared by several values of its own constant: runs the same in
        both, where the constant did not act between those values (as a max-norm radius that never
        binds), so that validation cannot choose among them."""
        out = {}
        for name, spec in self.grid.items():
            fields = grid_fields(spec)
            own = next((f for f in fields if f != "lr"), None)
            if own is None or len(fields[own]) < 2:
                continue
            chosen = next(m for m in self.chosen if m.name == name)
            mine = self.table[(self.table["method"] == name) & ~self.table["reference"]]
            if "lr" in fields:
                mine = mine[mine["lr"] == chosen.train.lr]
            means = mine.groupby(own)[["val_error_pct", "val_loss"]].mean()
            top = means.loc[getattr(chosen.train, own)]
            best = tuple(float(v) for v in means.index[(means["val_error_pct"] == top["val_error_pct"])
                                                        & (means["val_loss"] == top["val_loss"])])
            if len(best) > 1:
                out[name] = (own, best)
        return out
