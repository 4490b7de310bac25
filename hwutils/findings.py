"""What Part 3's runs show: the tables and the generated sentences of the report, from a study's
results as plain data (:class:`hwutils.study.StudyResults`: runs, search outcomes, sizes), so that
they can be tested on small results made by hand, without MNIST or training.

Every number here is read off the study's runs (their History, errors and end-of-training
measurements), so a study imported from another machine without weights renders the same. Each
function returns a pandas DataFrame (a table, ready to show) or a Markdown string (facts computed
first, then formatted into a short template).
"""
from __future__ import annotations

import math

import numpy as np

from .experiments import format_summary, methods_frame, run_facts, summarize, wrong_by_method
from .search import ALPHA, grid_fields
from .diagnostics import regularizer_activity
from .display import listed
from .profiles import CONSTANT_LABELS, LONG_L2, LR_STUDY, PROBE_MOMENTUM, TABLE9_TEST_ERROR, WARMUP_PROBE
from .stats import holm, mcnemar, pairwise, seeds_paired, smallest_resolvable, verdict
from .thresholds import near_zero_text

__all__ = [
    "settings", "stage_times", "diagnosis_table", "diagnosis_text", "warmup_table", "warmup_text", "choices_table",
    "search_text", "edges_table", "lr_study_table", "lr_study_choices", "lr_facts", "lr_facts_text", "momentum_text",
    "l1_tradeoff_table", "l1_tradeoff_text", "final_setup_table", "training_text", "results_table",
    "activity_table", "activity_text", "late_l1_start", "late_l1_text", "discussion_text",
    "summary", "measured", "unit_norms", "late_l1_pair", "table9_rows", "table9_text", "questions_text",
    "recipe_rows", "recipe_text", "trained_by",
]


def _pct(x: float) -> float:
    return 100 * x




def _step(lr: float, momentum: float) -> float:
    """The step a steady gradient takes with momentum: lr / (1 − μ)."""
    return lr / (1 - momentum)


# --------------------------------------------------------------------------- set-up
def settings(results) -> dict:
    """The set-up table: network, data and budgets, searched rates, minibatch, device."""
    images, sizes, small = results.images, results.sizes, results.small
    seeds = ", ".join(map(str, sizes.seeds))
    return {
        "network": "-".join(map(str, results.network)) + " (ReLU)",
        "final runs": f"{images['train']:,} training / {images['val']:,} validation / {images['test']:,} test "
                      f"images; {sizes.epochs} epochs ({sizes.dropout_epochs} with dropout); "
                      f"seed{'s' if len(sizes.seeds) > 1 else ''} {seeds}",
        "learning-rate search": f"{images['search train']:,} training / {images['search val']:,} validation "
                                f"images; {small.epochs} epochs ({small.dropout_epochs} with dropout)",
        "learning rates searched": listed(sizes.lr_grid),
        "authors' recipe": _recipe_setting(results),
        "minibatch": str(sizes.batch_size),
        "device": results.device,
    }


def stage_times(results):
    """Wall time (minutes) of each stage of the study in this build, in the order they ran."""
    import pandas as pd

    return pd.DataFrame({"minutes": {name: seconds / 60 for name, seconds in results.stage_seconds.items()}})


def _recipe_setting(results) -> str:
    from .profiles import recipe_steps, recipe_time_scale

    scale, steps = recipe_time_scale(results.sizes), recipe_steps(results.sizes)
    names = " and ".join(m.name.split("(")[1].rstrip(")") for m in results.recipe_methods)
    return (f"{names}: {results.sizes.dropout_epochs} epochs at batch 100, {steps:,} steps"
            + ("" if scale == 1 else f"; its time constants scaled by {scale:g} to that budget"))


# --------------------------------------------------------------------------- probes
def _diagnosis_rows(results):
    import pandas as pd

    scaled, standardized, _, _ = results.probes
    rows = []
    for pixels, runs in (("[0, 1]", scaled), ("standardized", standardized)):
        for r in runs:
            m = r.measurements
            rows.append({"inputs": pixels, "lr": r.config["train"]["lr"], "val. error (%)": _pct(r.val_error),
                         "diverged": "yes" if r.history.diverged else "no", "dead (%)": m["dead_pct"],
                         "lowest bias": m["min_hidden_bias"], "output row norm": m["max_output_row_norm"],
                         "at cap (%)": run_facts(r)["at_cap_pct"]})
    return pd.DataFrame(rows)


def diagnosis_table(results):
    """Dropout + max-norm on the search data at two learning rates, [0, 1] against standardized
    inputs: validation error, dead units, lowest hidden bias, largest output row, units at the cap."""
    return _diagnosis_rows(results)


def diagnosis_text(results) -> str:
    """What the diagnosis shows, with the input norms measured on the data."""
    table = _diagnosis_rows(results)
    norm = results.input_norms
    ratio = norm["standardized"] / norm["[0, 1]"]
    background = norm["background"]
    worst = table[table["inputs"] == "standardized"].iloc[-1]
    same = table[(table["inputs"] == "[0, 1]") & (table["lr"] == worst["lr"])].iloc[0]
    return (f"Standardized, the background pixels are {background:.2f} and the mean ‖x‖ is "
            f"{norm['standardized']:.1f} against {norm['[0, 1]']:.1f} for pixel intensities: {ratio:.1f} times "
            f"larger, so a first-layer step acts about {ratio ** 2:.0f} times more strongly. At learning rate "
            f"{worst['lr']:g}, standardized inputs leave {worst['dead (%)']:.0f} % of the hidden units dead "
            f"(lowest bias {_num(worst['lowest bias'])}, largest output row {_num(worst['output row norm'])}) and "
            f"{worst['val. error (%)']:.1f} % validation error; pixel intensities in [0, 1] leave "
            f"{same['dead (%)']:.0f} % dead and {same['val. error (%)']:.1f} % error. Everything below uses "
            f"[0, 1] inputs.")


def _num(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _warm_rows(results):
    import pandas as pd

    _, _, cold, warm = results.probes
    return pd.DataFrame([{"warm-up": how, "seed": r.seed, "dead units (%)": r.measurements["dead_pct"],
                          "val. error (%)": _pct(r.val_error)}
                         for how, runs in (("without", cold), ("with warm-up", warm)) for r in runs])


def warmup_table(results):
    """Dead units and validation error per seed, without and with the warm-up (columns side by side)."""
    rows = _warm_rows(results)
    wide = rows.pivot(index="seed", columns="warm-up")
    order = [(what, how) for what in ("dead units (%)", "val. error (%)") for how in ("without", "with warm-up")]
    wide = wide[order]
    wide.columns = [f"{what}, {how}" for what, how in order]
    return wide


def warmup_text(results) -> str:
    rows = _warm_rows(results)
    cold, hot = rows[rows["warm-up"] == "without"], rows[rows["warm-up"] == "with warm-up"]
    seeds = WARMUP_PROBE["seeds"]
    e_cold, e_hot = cold["val. error (%)"].mean(), hot["val. error (%)"].mean()
    compare = "lower" if e_hot < e_cold else "not lower"
    return (f"Dead hidden units after {WARMUP_PROBE['epochs']} epochs at learning rate {WARMUP_PROBE['lr']:g}, "
            f"seeds {seeds[0]}–{seeds[-1]}: without warm-up {', '.join(f'{v:.1f}' for v in cold['dead units (%)'])} %; "
            f"with it {', '.join(f'{v:.1f}' for v in hot['dead units (%)'])} %. After those two epochs the "
            f"validation error with warm-up is {compare} than without ({e_hot:.2f} % against {e_cold:.2f} %, mean "
            f"over the seeds): what warm-up is kept for is the units it keeps alive for the rest of training, "
            f"not an early gain.")


# --------------------------------------------------------------------------- the search
def _searches(results):
    return (results.lr_search, results.constant_search)


def choices_table(results):
    """Per method: the chosen learning rate and constant, its validation error where it was
    chosen, where it was searched, and every value of each grid (as finally searched)."""
    import pandas as pd

    rows = []
    for outcome in _searches(results):
        picked = outcome.table[outcome.table["chosen"]]
        for name, spec in outcome.grid.items():
            mine = picked[picked["method"] == name]
            method = results.chosen_method(name)
            own = mine["field"].iloc[0]
            ref = outcome.references.get(name)
            rows.append({"method": name, "learning rate": f"{method.train.lr:g}",
                         "constant": f"{CONSTANT_LABELS[own]} = {getattr(method.train, own):g}",
                         "validation error (%)": mine["val_error_pct"].mean(), "searched on": outcome.where,
                         "against it switched off": "–" if ref is None else
                         f"{ref.difference:+.2f} [{ref.low:+.2f}, {ref.high:+.2f}], {_p_is(ref.p)}",
                         "grid": "; ".join(f"{CONSTANT_LABELS[f]}: {listed(v)}"
                                           for f, v in grid_fields(spec).items())})
    frame = pd.DataFrame(rows)
    # a constant searched twice (tied on the search data, then at the final budget): the last search decides
    return frame.drop_duplicates("method", keep="last").set_index("method")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def _p_is(p: float, name: str = "p") -> str:
    """``p = 0.012`` or ``p < 0.001``."""
    return f"{name} {_p(p)}" if p < 0.001 else f"{name} = {_p(p)}"


def edges_table(results):
    """Every choice at an edge of its grid, against the value beside it, paired on the validation
    images: the difference (edge minus neighbour, points), its 95 % interval, the exact p, and what
    the search did - extended the grid (the edge is better on the paired test, or the same run), or
    stopped there (not resolved)."""
    import pandas as pd

    rows = []
    for outcome in _searches(results):
        for d in outcome.decisions:
            grown = (len(grid_fields(outcome.grid[d["method"]])[d["field"]])
                     > len(grid_fields(outcome.base[d["method"]])[d["field"]]))
            did = ("the same run: extended" if d["same"] else "no paired test (a run diverged): stopped"
                   if math.isnan(d["p"]) else "better: extended" if d["extend"] else "not resolved: stopped")
            if d["extend"] and not grown:
                did = did.replace("extended", "at the limit of extensions")
            rows.append({"method": d["method"], "searched on": outcome.where,
                         "edge": f"{CONSTANT_LABELS[d['field']]} = {d['value']:g} ({d['side']})",
                         "beside it": f"{d['neighbour']:g}", "edge − beside (points)": d["difference"],
                         "95 % interval": "–" if math.isnan(d["p"]) else f"[{d['low']:+.2f}, {d['high']:+.2f}]",
                         "p": "–" if math.isnan(d["p"]) else _p(d["p"]), "the search": did})
    return pd.DataFrame(rows)


def search_text(results) -> str:
    """The grids that were extended, and the constants whose runs were the same on the search data
    (searched again at the final budget) or also there."""
    lr, const = _searches(results)
    extended = [f"{n}: {CONSTANT_LABELS[f]} (searched {listed(v)})"
                for outcome in (lr, const) for n, spec in outcome.grid.items()
                for f, v in grid_fields(spec).items()
                if n in outcome.base and len(v) > len(grid_fields(outcome.base[n])[f])]
    tied, still = lr.tied, const.tied
    parts = [("**Grids extended**: " + "; ".join(extended) + ".") if extended else
             "No grid was extended: no choice at an edge beat the value beside it on the paired test."]
    if tied:
        parts.append("**The same runs on the search data**: at the chosen learning rate several values of the "
                     "constant gave the same validation error and loss - the constant did not act between them "
                     "there - so they were searched again at the final budget, where a constant acts longer: "
                     + "; ".join(f"{n} ({CONSTANT_LABELS[f]} ∈ {{{listed(v)}}})" for n, (f, v) in tied.items())
                     + ". A max-norm radius does so when it never binds in the search's few steps.")
    if still:
        parts.append("**The same runs at the final budget too**: the constant did not act between these values "
                     "in this run, so the row is the same run whichever of them is named (the smallest is): "
                     + "; ".join(f"{n} ({CONSTANT_LABELS[f]} ∈ {{{listed(v)}}})" for n, (f, v) in still.items())
                     + ".")
    return "\n\n".join(parts)


def lr_study_table(results):
    """The learning-rate search's table (its references aside), for :func:`hwutils.plotting.plot_lr_study`."""
    table = results.lr_search.table
    return table[table["method"].isin(LR_STUDY) & ~table["reference"]]


def lr_study_choices(results) -> dict:
    """``{method: (chosen lr, chosen value of its constant)}`` on the search data, for the figure's ★."""
    out = {}
    picked = results.lr_search.table[results.lr_search.table["chosen"]]
    for name in LR_STUDY:
        row = picked[picked["method"] == name].iloc[0]
        out[name] = (row["lr"], row["value"])
    return out


def lr_facts(results):
    """Per learning-rate-study method and rate: best validation error over its constants, whether
    every run diverged, the fewest dead units, the largest share at the cap; and per method the
    largest rate at which it still trains (validation error at most twice its best, no divergence)."""
    study_table = lr_study_table(results)
    per_lr = study_table.groupby(["method", "lr"], sort=False).agg(
        err=("val_error_pct", "min"), diverged=("diverged", "all"), dead=("dead_pct", "min"),
        cap=("at_cap_peak_pct", "max"))
    best = per_lr.groupby(level=0, sort=False)["err"].min()
    trains = (~per_lr["diverged"]) & (per_lr["err"] <= 2 * best.reindex(per_lr.index.get_level_values(0)).values)
    largest = per_lr[trains].reset_index().groupby("method", sort=False)["lr"].max().reindex(list(LR_STUDY))
    return per_lr, largest


def _verdict(per_lr, largest, a: str, b: str) -> str:
    """Whether ``b`` (max-norm) trains at larger rates than ``a``, and, where both stop at the same
    rate, how the two compare at the next rate tried."""
    if largest[b] != largest[a]:
        more = "trains" if largest[b] > largest[a] else "does not train"
        return f"{b} {more} at larger rates than {a} (up to {largest[b]:g} against {largest[a]:g})"
    rates = sorted(per_lr.loc[a].index.intersection(per_lr.loc[b].index))
    higher = [lr for lr in rates if lr > largest[a]]
    text = f"{b} and {a} both train up to learning rate {largest[a]:g}"
    if not higher:
        return text
    nxt = higher[0]
    err = lambda m: "diverged" if per_lr.loc[(m, nxt), "diverged"] else f"{per_lr.loc[(m, nxt), 'err']:.1f} %"  # noqa: E731
    return text + f"; at the next rate, {nxt:g}, {b} reaches {err(b)} validation error against {err(a)} for {a}"


def lr_facts_text(results) -> str:
    per_lr, largest = lr_facts(results)
    top = min(max(grid_fields(results.lr_search.grid[n])["lr"]) for n in LR_STUDY)  # tried by every method
    at_top = per_lr.xs(top, level="lr").reindex(list(LR_STUDY))
    facts = []
    for name, row in at_top.iterrows():
        if row.diverged:
            facts.append(f"{name}: diverged (the loss became NaN)")
            continue
        cap = f", up to {row.cap:.0f} % of units at the cap" if "max-norm" in name else ""
        facts.append(f"{name}: {row.err:.1f} % validation error, {row.dead:.0f} % dead units{cap}")
    return ("* **Largest learning rate at which each method still trains** (validation error at most twice its "
            "best over the grid, no divergence): " + "; ".join(f"{n} {lr:g}" for n, lr in largest.items()) + ".\n"
            f"* **The paper's claim, at the search's scale** (one seed per value, "
            f"{results.images['search train']:,} training images, {results.small.epochs} epochs, "
            f"{results.small.dropout_epochs} with dropout): {_verdict(per_lr, largest, 'L2', 'max-norm')}; "
            f"{_verdict(per_lr, largest, 'dropout + L2', 'dropout + max-norm')}.\n"
            f"* **At the largest rate tried ({top:g}):** " + "; ".join(facts) + ".")


def momentum_text(results) -> str:
    """Dropout + max-norm at a high rate and one radius: momentum 0.9 against the probe's lower
    momentum, the same seed and data."""
    dmn, probe, hi = results.chosen_method("dropout + max-norm"), results.momentum_probe, results.high_lr
    radius, momentum = probe.config["train"]["max_norm"], dmn.train.momentum
    table = lr_study_table(results)
    same = table[(table["method"] == "dropout + max-norm") & (table["lr"] == hi) & (table["max_norm"] == radius)]
    probe_text = (f"with momentum {PROBE_MOMENTUM:g} (step lr/(1 − μ) = {_step(hi, PROBE_MOMENTUM):g}) it ends at "
                  f"{_pct(probe.val_error):.2f} % validation error with {probe.measurements['dead_pct']:.0f} % of the "
                  f"hidden units dead")
    head = f"Dropout + max-norm on the search data at learning rate {hi:g}, radius c = {radius:g}, one seed: "
    if not len(same):
        return head + probe_text + f"; no run with momentum {momentum:g} at this radius was trained to compare with."
    row = same.iloc[0]
    fast = ("diverged" if row["diverged"] else
            f"ends at {row['val_error_pct']:.2f} % validation error with {row['dead_pct']:.0f} % dead")
    return (head + f"with momentum {momentum:g} (step {_step(hi, momentum):g}) it {fast}; " + probe_text
            + ". Learning rates are therefore only comparable at one momentum: the large rates of Hinton et al. "
              "(2012) came with a momentum schedule rising to 0.99 during training.")


def l1_tradeoff_table(results):
    """Late L1's candidates at the final budget, with λ₁ = 0 (the final L2 runs): near-zero weights
    (%) and validation error (%) per run."""
    import pandas as pd

    l2 = [r for r in results.final if r.method == "L2"]
    rows = [{"l1": 0.0, "seed": r.seed, "val_error_pct": _pct(r.val_error), **run_facts(r)} for r in l2]
    table = results.constant_search.table
    late = table[(table["method"] == "L2 + L1 (late)") & ~table["reference"]]
    return pd.concat([pd.DataFrame(rows), late], ignore_index=True)


def l1_tradeoff_text(results) -> str:
    points = l1_tradeoff_table(results).groupby("l1")[["near_zero_pct", "val_error_pct"]].mean()
    base, sparsest = points.iloc[0], points.iloc[-1]
    outcome = results.constant_search
    late = outcome.table[(outcome.table["method"] == "L2 + L1 (late)") & ~outcome.table["reference"]]
    runs = [outcome.results[i] for i in late[late["l1"] == points.index[-1]].sort_values("seed")["run"]]
    l2 = sorted((r for r in results.final if r.method == "L2"), key=lambda r: r.seed)
    paired = _paired(runs, l2, "val")
    return (f"From λ₁ = 0 to λ₁ = {points.index[-1]:g} the share of weights with {near_zero_text()} goes from "
            f"{base['near_zero_pct']:.1f} % to {sparsest['near_zero_pct']:.1f} %, and the validation error "
            f"from {base['val_error_pct']:.2f} % to {sparsest['val_error_pct']:.2f} %: paired on the "
            f"{results.images['val']:,} validation images, {_said(paired, 'validation')}. The search keeps "
            f"λ₁ = {results.chosen_method('L2 + L1 (late)').train.l1:g}, the value with the fewest validation errors.")


# --------------------------------------------------------------------------- paired comparisons
def _wrong(runs, split: str = "test"):
    """The per-image mistakes of one method's runs: ``[n]`` for one seed, ``[S, n]`` (by seed) for more."""
    arrays = [r.test_wrong if split == "test" else r.val_wrong for r in sorted(runs, key=lambda r: r.seed)]
    return arrays[0] if len(arrays) == 1 else np.stack(arrays)


def _paired(a_runs, b_runs, split: str = "test"):
    """Method A's runs against method B's, paired on the images (McNemar for one seed each, the
    seed-averaged sign-flip test for more): a :class:`~hwutils.stats.PairedComparison`."""
    a, b = _wrong(a_runs, split), _wrong(b_runs, split)
    return mcnemar(a, b) if a.ndim == b.ndim == 1 else seeds_paired(np.atleast_2d(a), np.atleast_2d(b))


def _said(paired, split: str = "test", adjusted: float | None = None) -> str:
    """A paired comparison in words: its difference, interval and p, and whether it is resolved."""
    p = paired.p if adjusted is None else adjusted
    which = "p" if adjusted is None else "Holm-adjusted p"
    resolved = "resolved" if p < ALPHA else "not resolved"
    return (f"{paired.difference:+.2f} points (95 % interval [{paired.low:+.2f}, {paired.high:+.2f}], "
            f"{paired.only_a_wrong:g} against {paired.only_b_wrong:g} images wrong in one only, {_p_is(p, which)}): "
            f"{resolved}")


def _runs_by_method(results) -> dict:
    out: dict[str, list] = {}
    for r in results:
        out.setdefault(r.method, []).append(r)
    return out


def _table9_methods(results) -> list[str]:
    return [n for n in results.method_names if n in TABLE9_TEST_ERROR]


def paired_table(results):
    """Every pair of the six Table 9 methods, paired on the test images (:func:`hwutils.stats.pairwise`):
    images wrong in A only, in B only and in both, the difference A − B (points) with its 95 %
    interval, the exact p and Holm's adjusted p over the 15 pairs."""
    return pairwise(wrong_by_method(results.final, "test", _table9_methods(results)), alpha=ALPHA)


def paired_rows(results):
    """:func:`paired_table` as the report shows it."""
    import pandas as pd

    table = paired_table(results)
    return pd.DataFrame({
        "A": table["a"], "B": table["b"], "wrong in A only": table["only_a_wrong"],
        "wrong in B only": table["only_b_wrong"], "wrong in both": table["both_wrong"],
        "A − B (points)": table["difference"],
        "95 % interval": [f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in zip(table["low"], table["high"])],
        "p": [_p(p) for p in table["p"]], "Holm p": [_p(p) for p in table["p_holm"]]})


#: The orderings of Table 9 this study tests: each dropout method against its twin without dropout,
#: dropout + max-norm against L2, max-norm against L2, the two dropout methods, and L2's additions.
TABLE9_ORDERINGS = (("dropout + max-norm", "L2"), ("dropout + max-norm", "max-norm"), ("dropout + L2", "L2"),
                    ("dropout + max-norm", "dropout + L2"), ("max-norm", "L2"), ("L2 + KL-sparsity", "L2"),
                    ("L2 + L1 (late)", "L2"))


def orderings_table(results):
    """Per ordering of Table 9 (:data:`TABLE9_ORDERINGS`, A against B): the paper's gap A − B, this
    run's with its paired 95 % interval and Holm-adjusted p (of the family of all 15 pairs), whether this run
    resolves it (in the paper's direction, or against it), and the smallest difference that the
    images A and B disagree on could have resolved (exact McNemar at the 5 % level, before correction)."""
    import pandas as pd

    table = paired_table(results).set_index(["a", "b"])
    n, rows = _test_images(results), []
    for a, b in TABLE9_ORDERINGS:
        sign, (x, y) = (1, (a, b)) if (a, b) in table.index else (-1, (b, a))
        row = table.loc[(x, y)]
        diff, low, high = sign * row["difference"], *sorted((sign * row["low"], sign * row["high"]))
        paper = TABLE9_TEST_ERROR[a] - TABLE9_TEST_ERROR[b]
        resolved = row["p_holm"] < ALPHA
        verdict_ = ("not resolved" if not resolved else "resolved, as in the paper" if diff * paper > 0
                    else "resolved, against the paper")
        rows.append({"A": a, "B": b, "Table 9: A − B": paper, "this run: A − B": diff,
                     "95 % interval": f"[{low:+.2f}, {high:+.2f}]", "Holm p": _p(row["p_holm"]),
                     "verdict": verdict_,
                     "smallest resolvable": _points_or_none(
                         smallest_resolvable(round(row["only_a_wrong"] + row["only_b_wrong"]), n))})
    return pd.DataFrame(rows)


def _points_or_none(points: float) -> str:
    return "none" if math.isinf(points) else f"{points:.2f}"


def _test_images(results) -> int:
    return results.images['test']


# --------------------------------------------------------------------------- final runs
def final_setup_table(results):
    """The final methods' settings side by side."""
    from .profiles import final_methods

    return methods_frame(final_methods(results.sizes, results.chosen)).T


def training_text(results) -> str:
    """The final runs' training time, and who trained them where the runner did (its provenance)."""
    final = results.final
    minutes = sum(r.wall_seconds for r in final) / 60
    epochs = sum(r.history.epochs_run for r in final)
    text = (f"The {len(final)} final runs trained {epochs:,} epochs in **{minutes:.1f} minutes** on "
            f"{results.device}: {60 * minutes / epochs:.2f} s per epoch of {results.images['train']:,} images, "
            f"validation included.")
    runner = trained_by(results)
    if runner:
        text += (f" They were trained by `python -m hwutils.study` on {runner['device']} ({runner['date'][:10]}, "
                 f"commit {runner['commit'][:12]}): {runner['wall_seconds'] / 60:.1f} minutes of wall time for the "
                 f"whole study, against its own estimate of {runner['estimated_seconds'] / 60:.0f} minutes"
                 + (" measured on a busy machine." if runner.get("busy") else "."))
    return text


def trained_by(results) -> dict | None:
    """The provenance of the runner call that trained this study's runs - the last one of its profile
    that trained anything, from the results folder's runner log or an imported bundle - or None."""
    import json
    from pathlib import Path

    from .bundle import read_provenance
    from .runner import RUN_LOG

    if not results.results_dir:
        return None
    log = Path(results.results_dir) / RUN_LOG
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    calls = [json.loads(line) for line in lines if line.strip()] + read_provenance(results.results_dir, results.profile)
    mine = [c for c in calls if c.get("profile") == results.profile and c.get("runs", 0) > c.get("runs_cached_at_start", 0)
            and "wall_seconds" in c and "estimated_seconds" in c]
    return mine[-1] if mine else None


def results_table(results):
    """Test and validation error per method (mean ± std over seeds), epochs, wall time, Table 9."""
    summary = summarize(results.final, order=results.method_names)
    table = format_summary(summary)
    table["Table 9 test error (%)"] = [f"{TABLE9_TEST_ERROR[n]:.2f}" if n in TABLE9_TEST_ERROR else "–"
                                       for n in table.index]
    return table


def activity_table(results):
    """Is each regularizer acting? (:func:`hwutils.diagnostics.regularizer_activity`)"""
    table = regularizer_activity(results.final).set_index("method")
    table["active"] = table["active"].map({True: "yes", False: "no"})
    return table


def activity_text(results) -> str:
    table = regularizer_activity(results.final)
    inactive = table[~table["active"]]
    if not len(inactive):
        return "**Every regularizer acts at its chosen constant** (by the measures above)."
    flags = "; ".join(f"{r.method} ({r.regularizer}: {r.measure} {r.value}, {r.reference})"
                      for r in inactive.itertuples())
    return f"**Inactive at the chosen constant:** {flags}; such a row measures the method without its regularizer."


def late_l1_start(results) -> int:
    """The epoch after which late L1 switches on."""
    late = results.chosen_method("L2 + L1 (late)")
    return late.train.l1_schedule.start_epoch(results.sizes.epochs)


def late_l1_text(results) -> str:
    """Whether L2 + L1 followed L2 until L1 switched on: the largest difference of their validation
    losses before it, and where their minibatch losses first part (two runs trained with other
    numbers of CPU threads sum in another order, and training amplifies the rounding)."""
    first, start = results.first_seed(), late_l1_start(results)
    l2, l1 = first["L2"].history, first["L2 + L1 (late)"].history
    gap = max((abs(x - y) for x, y in zip(l2.val_loss[:start], l1.val_loss[:start])), default=0.0)
    steps = min(len(l2.iter_loss), len(l1.iter_loss), start * max(l2.steps_per_epoch, 1))
    parted = next(((i, abs(l2.iter_loss[i] - l1.iter_loss[i])) for i in range(steps)
                   if l2.iter_loss[i] != l1.iter_loss[i]), None)
    if parted is None:
        same = "**yes**, to the last bit"
    else:
        step, size = parted
        same = (f"{'**yes**, up to rounding' if gap < 1e-3 else '**not to the bit**'}: their minibatch losses first "
                f"differ at update {step + 1:,}, by {size:.1e}: rounding (the two runs were trained at different times, "
                f"each with the CPU threads free then, `hwutils.threads`, and another thread count sums in another "
                f"order), which training carries on to at most {gap:.3f} in validation loss before L1 starts")
    return (f"L2 + L1 has the same history as L2 before epoch {start + 1} (same seed, same constants until L1 "
            f"starts): {same}.")


# --------------------------------------------------------------------------- discussion
def ranking_text(results) -> str:
    """The six methods ordered by test error, and which of the 15 differences are resolved, paired
    on the test images, after Holm's correction (:func:`paired_table`)."""
    table, mean = paired_table(results), summary(results)[("test_error_pct", "mean")]
    order = sorted(_table9_methods(results), key=lambda n: mean[n])
    resolved = table[table["resolved"]]
    n = _test_images(results)
    named = [verdict(row, n) for row in resolved.to_dict("records")]
    return (f"from the lowest test error: {', '.join(f'{m} ({mean[m]:.2f} %)' for m in order)}. Paired on the "
            f"{n:,} test images, {len(resolved)} of {len(table)} differences are resolved at the {ALPHA:g} level "
            f"after Holm's correction" + (": " + "; ".join(named) + "." if named else
                                          "; the others' intervals are in @tbl-paired."))


def _failures_text(per_lr) -> str:
    """How the runs that failed at high learning rates failed: diverged (NaN), or most units dead."""
    diverged = [f"{m} at {lr:g}" for (m, lr), row in per_lr.iterrows() if row["diverged"]]
    dead = [f"{m} at {lr:g} ({row['dead']:.0f} %)" for (m, lr), row in per_lr.iterrows()
            if not row["diverged"] and row["dead"] >= 50]
    parts = []
    if diverged:
        parts.append(f"Every run diverged (the loss became NaN) for {', '.join(diverged)}")
    if dead:
        parts.append(f"at least half the hidden units ended dead, whatever the constant, for {', '.join(dead)}")
    if not parts:
        return "No run of the grid diverged or lost half its units."
    return "; ".join(parts) + (". Max-norm bounds the length of a unit's incoming weights; that does not stop a "
                               "step from turning the unit off for every input.")


def discussion_text(results) -> str:
    """The discussion: the ranking, what dropout's extra epochs do, the learning rates, how the
    choices transfer from the search to the final budget, validation against test, scale - every
    comparison of two networks paired on the images both were scored on."""
    sizes, small = results.sizes, results.small
    runs = _runs_by_method(results.final)
    summary_ = summarize(results.final, order=results.method_names)
    mean_test, mean_val = summary_[("test_error_pct", "mean")], summary_[("val_error_pct", "mean")]
    epochs_effect, dropout_effect = _paired(runs[LONG_L2], runs["L2"]), _paired(runs["dropout + L2"], runs[LONG_L2])
    p_epochs, p_dropout = holm([epochs_effect.p, dropout_effect.p])
    on_val = {n: _paired(runs[n], runs["L2"], "val") for n in results.method_names if n not in ("L2", LONG_L2)}
    p_val = dict(zip(on_val, holm([c.p for c in on_val.values()])))
    worse = [n for n, c in on_val.items() if c.difference > 0 and p_val[n] < ALPHA]
    lr_picked = results.lr_search.table[results.lr_search.table["chosen"]].groupby("method")["val_error_pct"].mean()
    where = {n: ("constants chosen at the final budget" if n in results.constant_search.grid else
                 f"chosen on the search data, where it had {lr_picked[n]:.2f} % against L2's {lr_picked['L2']:.2f} %")
             for n in worse}
    transfer = "; ".join(f"{n} ({mean_val[n]:.2f} % against L2's {mean_val['L2']:.2f} %, "
                         f"{_p_is(p_val[n], 'Holm-adjusted p')}; {where[n]})" for n in worse)
    paper_rank = ", then ".join(f"{n} ({e:.2f} %)" for n, e in sorted(TABLE9_TEST_ERROR.items(), key=lambda kv: kv[1]))
    per_lr, largest = lr_facts(results)
    return f"""
* **Ranking on test error:** {ranking_text(results)} Table 9 orders them from best to worst: {paper_rank}.
* **Dropout or just more epochs?** Training L2 for {sizes.dropout_epochs} epochs instead of {sizes.epochs}
  ({mean_test["L2"]:.2f} % → {mean_test[LONG_L2]:.2f} %): {_said(epochs_effect, adjusted=p_epochs)}. With that
  same budget, dropout + L2 ({mean_test["dropout + L2"]:.2f} %) against the long L2 run:
  {_said(dropout_effect, adjusted=p_dropout)} (Holm over these two).
* **Learning rates (search scale, one seed):** {_verdict(per_lr, largest, "L2", "max-norm")}; {_verdict(per_lr, largest, "dropout + L2", "dropout + max-norm")}.
  {_failures_text(per_lr)}
* **Worse than L2 on validation at the full budget** (paired on the {results.images['val']:,} validation images,
  Holm over the {len(on_val)} methods): {transfer + "." if worse else "none resolved."}
* **Validation against test:** the largest gap between a method's validation and test error is
  {(mean_val - mean_test).abs().max():.2f} points.
* **Scale:** hidden layers {"-".join(map(str, sizes.hidden))}, {sizes.epochs} / {sizes.dropout_epochs} epochs and
  {len(sizes.seeds)} seed{"s" if len(sizes.seeds) > 1 else ""}, against the paper's 1024-1024-2048 network and
  about a million updates; the learning-rate search ran on {results.images['search train']:,} images for
  {small.epochs} / {small.dropout_epochs} epochs, the L1 and KL search at the final budget.
"""


# --------------------------------------------------------------------------- inputs of the figures
def summary(results):
    """:func:`hwutils.experiments.summarize` of the final runs, in the methods' order."""
    return summarize(results.final, order=results.method_names)


def measured(results, *names: str) -> dict:
    """``{method: end-of-training measurements}`` of the first seed's final runs of ``names``."""
    first = results.first_seed()
    return {n: first[n].measurements for n in names}


def unit_norms(results, *names: str) -> dict:
    """``{method: the hidden units' incoming weight norms}`` of the first seed's final runs."""
    from .diagnostics import unit_values

    return {n: unit_values(m, "norm") for n, m in measured(results, *names).items()}


def late_l1_pair(results) -> list:
    """The first seed's final L2 and L2 + L1 runs: the same until L1 switches on."""
    first = results.first_seed()
    return [first["L2"], first["L2 + L1 (late)"]]


# --------------------------------------------------------------------------- the three questions, and Table 9
def table9_rows(results):
    """Per Table 9 method: this run's test error (mean over seeds) and the paper's, and the gap to L2
    in each - the gaps are what two implementations can be compared on (a constant offset between
    them cancels) - with this run's gap paired on the test images (95 % interval) and whether the
    paper's gap lies inside that interval."""
    import pandas as pd

    frame, runs = summary(results), _runs_by_method(results.final)
    rows = []
    for name, paper in TABLE9_TEST_ERROR.items():
        row = {"method": name, "this run (%)": frame.loc[name, ("test_error_pct", "mean")], "Table 9 (%)": paper}
        if name == "L2":
            rows.append({**row, "gap to L2, Table 9": 0.0, "gap to L2, this run": 0.0, "95 % interval": "–",
                         "Table 9's gap inside": "–"})
            continue
        gap, paper_gap = _paired(runs[name], runs["L2"]), paper - TABLE9_TEST_ERROR["L2"]
        rows.append({**row, "gap to L2, Table 9": paper_gap, "gap to L2, this run": gap.difference,
                     "95 % interval": f"[{gap.low:+.2f}, {gap.high:+.2f}]",
                     "Table 9's gap inside": "yes" if gap.low <= paper_gap <= gap.high else "no"})
    return pd.DataFrame(rows).set_index("method")


def table9_text(results) -> str:
    """Which of Table 9's gaps to L2 this run's paired intervals contain, and what differs between the
    two set-ups."""
    rows, sizes = table9_rows(results), results.sizes
    inside = [n for n, r in rows.iterrows() if r["Table 9's gap inside"] == "yes"]
    outside = [n for n, r in rows.iterrows() if r["Table 9's gap inside"] == "no"]
    parts = [f"inside this run's 95 % interval for {', '.join(inside)}" if inside else "",
             f"outside it for {', '.join(outside)}" if outside else ""]
    text = ("Compared as gaps to L2 (@tbl-table9), Table 9's numbers lie " + " and ".join(p for p in parts if p)
            + ". The paper gives one number per method and no interval, so this asks only whether its gap is one "
              "this run could have produced.")
    paper_net = sizes.hidden == (1024, 1024, 2048)
    dropout_steps = sizes.dropout_epochs * math.ceil(results.images['train'] / sizes.batch_size)
    why = ("the same network as the paper" if paper_net else
           f"a smaller network ({'-'.join(map(str, sizes.hidden))} against 1024-1024-2048)")
    return (text + f" The set-ups differ in {why}, {dropout_steps:,} updates for the dropout methods against "
            f"about a million, constants searched on this run's validation split, and the optimizer: this "
            f"project's Nesterov momentum 0.9 with cosine decay and warm-up, where the authors' published "
            f"configuration uses plain momentum rising from 0.5 to 0.99 and a learning rate decaying as "
            f"1/(1 + t/10,000) (@tbl-recipe runs that recipe).")


def questions_text(results) -> str:
    """The three questions of the introduction, answered from the run."""
    activity = regularizer_activity(results.final)
    inactive = sorted(set(activity.loc[~activity["active"], "method"]))
    lr, const = results.lr_search, results.constant_search
    stops = {"noise": [], "limit": []}
    for o in (lr, const):
        for d in o.decisions:
            what = f"{d['method']} ({CONSTANT_LABELS[d['field']]} = {d['value']:g}"
            stops["limit" if d["extend"] else "noise"].append(
                what + ")" if d["extend"] or math.isnan(d["p"]) else what + f"; against {d['neighbour']:g}: "
                                                                          f"{_p_is(d['p'])})")
    inherited = [n for n in const.grid if n not in lr.grid and n.startswith("L2 +")]
    table = paired_table(results)
    acting = ("yes: every regularizer acts at its chosen constant (@tbl-activity)" if not inactive else
              f"not all: {', '.join(inactive)} {'does' if len(inactive) == 1 else 'do'} not act at the chosen "
              f"constant by the measures of @tbl-activity, so those rows measure the method without it")
    tuned = (f"as far as this search goes: the learning rate of {', '.join(LR_STUDY)} was searched jointly with "
             f"its constant on the search data; {' and '.join(inherited)} inherit L2's learning rate and λ₂ and "
             f"search their own constant at the final budget (the paper's Table 9 does not say how its "
             f"constants were chosen). "
             + (f"At a grid edge where the paired test on the validation images did not resolve the edge from "
                f"the value beside it: {'; '.join(stops['noise'])}. " if stops["noise"] else "")
             + (f"At a grid edge after extending as far as the search allows: {'; '.join(stops['limit'])}. "
                if stops["limit"] else "")
             + ("No choice is at an edge of its grid. " if not any(stops.values()) else "")
             + ("Not chosen by validation, because the runs were the same at the final budget (the constant did "
                "not act between its values): " + "; ".join(f"{n} ({CONSTANT_LABELS[f]} ∈ {{{listed(v)}}})"
                                                             for n, (f, v) in const.tied.items()) + "."
                if const.tied else "Every constant is chosen by its validation error or loss."))
    noise = (f"{int(table['resolved'].sum())} of {len(table)} pairwise differences of test error are resolved, "
             f"paired on the {_test_images(results):,} test images with Holm's correction; the others are not "
             f"resolved, and @tbl-paired gives their intervals")
    return (f"1. **Is every regularizer doing something?** {acting}.\n"
            f"2. **Was every method tuned as well as the others?** {tuned}\n"
            f"3. **Which differences are larger than the noise?** {noise}.")


# --------------------------------------------------------------------------- the authors' recipe
def _effective_step(result) -> tuple[float, int]:
    from .training import TrainConfig, largest_effective_step

    train = dict(result.config["train"])
    return largest_effective_step(TrainConfig(**train), result.history.steps_per_epoch)


def recipe_rows(results):
    """Dropout + max-norm with this project's recipe against the authors' (and the paper's B.1
    values where the profile trains them): test and validation error (mean over seeds), hidden units
    at the cap at the end, dead units, the largest effective step ε/(1 − m) of the run, whether it
    diverged, and Table 9's value."""
    import pandas as pd

    ours = [r for r in results.final if r.method == "dropout + max-norm"]
    rows = []
    for name, runs in [("dropout + max-norm (this project's recipe)", ours),
                       *[(m.name, [r for r in results.recipe if r.method == m.name]) for m in results.recipe_methods]]:
        cfg = runs[0].config["train"]
        step, at = _effective_step(runs[0])
        rows.append({"method": name, "test (%)": sum(_pct(r.test_error) for r in runs) / len(runs),
                     "val. (%)": sum(_pct(r.val_error) for r in runs) / len(runs),
                     "c": cfg["max_norm"], "final m": cfg["momentum"],
                     "at cap (%)": sum(100 * r.history.at_cap[-1] for r in runs) / len(runs),
                     "dead (%)": sum(r.measurements["dead_pct"] for r in runs) / len(runs),
                     "max ε/(1 − m)": step, "at step": at,
                     "diverged": "yes" if any(r.history.diverged for r in runs) else "no"})
    return pd.DataFrame(rows).set_index("method")


def recipe_text(results) -> str:
    """What the authors' recipe answers about the paper's claim for max-norm: does it train with a
    larger effective step than this project's recipe does, and how does it compare."""
    rows = recipe_rows(results)
    authors = rows.iloc[1]
    _, largest = lr_facts(results)
    ours_top = largest["dropout + max-norm"] / (1 - results.chosen_method("dropout + max-norm").train.momentum)
    runs = _runs_by_method([*results.final, *results.recipe])
    paired = _paired(runs[results.recipe_methods[0].name], runs["dropout + max-norm"])
    survived = authors["diverged"] == "no" and authors["dead (%)"] < 5
    step = authors["max ε/(1 − m)"]
    claim = (f"so in its own recipe max-norm lets dropout train at effective steps {step / ours_top:.1f} times "
             f"the largest at which this project's recipe trained" if survived and step > ours_top else
             f"so in its own recipe max-norm did not keep the network whole: at its largest step "
             f"{authors['dead (%)']:.0f} % of the hidden units ended dead"
             + (" and the loss diverged" if authors["diverged"] == "yes" else "") if not survived else
             "so the authors' recipe takes no larger step than this project's: it does not test the claim")
    compare = (f"against this project's recipe, paired on the {_test_images(results):,} test images: "
               f"{_said(paired)}")
    scaled = results.recipe_methods[0].train.lr_half_life_steps / 10_000
    scale_note = ("" if scaled == 1 else f" At this profile's budget the recipe's time constants are scaled by "
                  f"{scaled:g} (its learning rate's half-life and momentum ramp end at the same fraction of "
                  f"training as in the authors' million steps), so this is the recipe's shape, not its dynamics.")
    return (f"The authors' recipe reaches an effective step ε/(1 − m) of {authors['max ε/(1 − m)']:.2f} (at step "
            f"{authors['at step']:,}) and ends with {authors['dead (%)']:.1f} % dead units, "
            f"{authors['at cap (%)']:.0f} % of hidden units at the cap and {authors['test (%)']:.2f} % "
            f"test error (Table 9: {TABLE9_TEST_ERROR['dropout + max-norm']:.2f} %); {compare}. In the "
            f"learning-rate study, this project's dropout + max-norm still trained at learning rate "
            f"{largest['dropout + max-norm']:g}, an effective step of {ours_top:.2f}; {claim}."
            f"{scale_note}")
