"""What Part 3's runs show: the tables and the generated sentences of the report, from a
:class:`hwutils.study.Study`.

Every number here is read off the study's runs (their History, errors and end-of-training
measurements), so a study imported from another machine without weights renders the same. Each
function returns a pandas DataFrame (a table, ready to show) or a Markdown string (facts computed
first, then formatted into a short template).
"""
from __future__ import annotations

import math
import time

from .experiments import compare_to_noise, format_summary, grid_fields, methods_frame, ranking_text, run_facts, summarize
from .diagnostics import regularizer_activity
from .display import listed
from .precision import describe
from .profiles import CONSTANT_LABELS, LONG_L2, LR_STUDY, TABLE9_TEST_ERROR
from .study import PROBE_MOMENTUM, WARMUP_PROBE, Study
from .thresholds import near_zero_text

__all__ = [
    "settings", "diagnosis_table", "diagnosis_text", "warmup_table", "warmup_text", "choices_table",
    "search_text", "lr_study_table", "lr_study_choices", "lr_facts", "lr_facts_text", "momentum_text",
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
def settings(study: Study) -> dict:
    """The set-up table: network, data and budgets, searched rates, minibatch, device."""
    data, search, sizes, small = study.data, study.search_data, study.sizes, study.small
    seeds = ", ".join(map(str, sizes.seeds))
    products = f" ({describe(study.precision, data.train.X.device)})"  # what the runs trained with
    return {
        "network": "-".join(map(str, (data.n_features, *sizes.hidden, data.n_classes))) + " (ReLU)",
        "final runs": f"{len(data.train):,} training / {len(data.val):,} validation / {len(data.test):,} test "
                      f"images; {sizes.epochs} epochs ({sizes.dropout_epochs} with dropout); "
                      f"seed{'s' if len(sizes.seeds) > 1 else ''} {seeds}",
        "learning-rate search": f"{len(search.train):,} training / {len(search.val):,} validation images; "
                                f"{small.epochs} epochs ({small.dropout_epochs} with dropout)",
        "learning rates searched": listed(sizes.lr_grid),
        "authors' recipe": _recipe_setting(study),
        "minibatch": str(sizes.batch_size),
        "device": study.device_name + products,
    }


def _recipe_setting(study: Study) -> str:
    from .profiles import recipe_steps, recipe_time_scale

    scale, steps = recipe_time_scale(study.sizes), recipe_steps(study.sizes)
    names = " and ".join(m.name.split("(")[1].rstrip(")") for m in study.recipe_methods)
    return (f"{names}: {study.sizes.dropout_epochs} epochs at batch 100, {steps:,} steps"
            + ("" if scale == 1 else f"; its time constants scaled by {scale:g} to that budget"))


# --------------------------------------------------------------------------- probes
def _diagnosis_rows(study: Study):
    import pandas as pd

    scaled, standardized, _, _ = study.probes
    rows = []
    for pixels, runs in (("[0, 1]", scaled), ("standardized", standardized)):
        for r in runs:
            m = r.measurements
            rows.append({"inputs": pixels, "lr": r.config["train"]["lr"], "val. error (%)": _pct(r.val_error),
                         "diverged": "yes" if r.history.diverged else "no", "dead (%)": m["dead_pct"],
                         "lowest bias": m["min_hidden_bias"], "output row norm": m["max_output_row_norm"],
                         "at cap (%)": run_facts(r)["at_cap_pct"]})
    return pd.DataFrame(rows)


def diagnosis_table(study: Study):
    """Dropout + max-norm on the search data at two learning rates, [0, 1] against standardized
    inputs: validation error, dead units, lowest hidden bias, largest output row, units at the cap."""
    return _diagnosis_rows(study)


def diagnosis_text(study: Study) -> str:
    """What the diagnosis shows, with the input norms measured on the data."""
    table = _diagnosis_rows(study)
    norm = {"[0, 1]": float(study.search_data.train.X.norm(dim=1).mean()),
            "standardized": float(study.standardized_data.train.X.norm(dim=1).mean())}
    ratio = norm["standardized"] / norm["[0, 1]"]
    background = float(study.standardized_data.train.X.min())
    worst = table[table["inputs"] == "standardized"].iloc[-1]
    same = table[(table["inputs"] == "[0, 1]") & (table["lr"] == worst["lr"])].iloc[0]
    return (f"Standardized, the background pixels are {background:.2f} and the mean ‖x‖ is "
            f"{norm['standardized']:.1f} against {norm['[0, 1]']:.1f} for pixel intensities: {ratio:.1f} times "
            f"larger, so a first-layer step acts about {ratio ** 2:.0f} times more strongly. At learning rate "
            f"{worst['lr']:g}, standardized inputs leave {worst['dead (%)']:.0f} % of the hidden units dead "
            f"(lowest bias {_num(worst['lowest bias'])}, largest output row {_num(worst['output row norm'])}) and "
            f"{worst['val. error (%)']:.1f} % validation error; pixel intensities in [0, 1] leave "
            f"{same['dead (%)']:.0f} % dead and {same['val. error (%)']:.1f} % error. Everything below uses "
            f"[0, 1] inputs (a test in `tests/` pins it).")


def _num(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _warm_rows(study: Study):
    import pandas as pd

    _, _, cold, warm = study.probes
    return pd.DataFrame([{"warm-up": how, "seed": r.seed, "dead units (%)": r.measurements["dead_pct"],
                          "val. error (%)": _pct(r.val_error)}
                         for how, runs in (("without", cold), ("with warm-up", warm)) for r in runs])


def warmup_table(study: Study):
    """Dead units and validation error per seed, without and with the warm-up (columns side by side)."""
    rows = _warm_rows(study)
    wide = rows.pivot(index="seed", columns="warm-up")
    order = [(what, how) for what in ("dead units (%)", "val. error (%)") for how in ("without", "with warm-up")]
    wide = wide[order]
    wide.columns = [f"{what}, {how}" for what, how in order]
    return wide


def warmup_text(study: Study) -> str:
    rows = _warm_rows(study)
    cold = rows[rows["warm-up"] == "without"]["dead units (%)"]
    hot = rows[rows["warm-up"] == "with warm-up"]["dead units (%)"]
    seeds = WARMUP_PROBE["seeds"]
    return (f"Dead hidden units after {WARMUP_PROBE['epochs']} epochs at learning rate {WARMUP_PROBE['lr']:g}, "
            f"seeds {seeds[0]}–{seeds[-1]}: without warm-up {', '.join(f'{v:.1f}' for v in cold)} %; with it "
            f"{', '.join(f'{v:.1f}' for v in hot)} %. A test in `tests/` pins this.")


# --------------------------------------------------------------------------- the search
def _searches(study: Study):
    return (study.lr_search, study.constant_search)


def choices_table(study: Study):
    """Per method: the chosen learning rate and constant, its validation error where it was
    chosen, where it was searched, and every value of each grid (as finally searched)."""
    import pandas as pd

    rows = []
    for outcome in _searches(study):
        picked = outcome.table[outcome.table["chosen"]]
        for name, spec in outcome.grid.items():
            mine = picked[picked["method"] == name]
            method = study.chosen_method(name)
            own = mine["field"].iloc[0]
            rows.append({"method": name, "learning rate": f"{method.train.lr:g}",
                         "constant": f"{CONSTANT_LABELS[own]} = {getattr(method.train, own):g}",
                         "validation error (%)": mine["val_error_pct"].mean(), "searched on": outcome.where,
                         "grid": "; ".join(f"{CONSTANT_LABELS[f]}: {listed(v)}"
                                           for f, v in grid_fields(spec).items())})
    frame = pd.DataFrame(rows)
    # a constant searched twice (tied on the search data, then at the final budget): the last search decides
    return frame.drop_duplicates("method", keep="last").set_index("method")


def _edge_reason(margin: dict, extended: bool) -> str:
    """Why a choice at an edge stays there (an :func:`~hwutils.experiments.edge_margins` row)."""
    label, side = CONSTANT_LABELS[margin["field"]], margin["side"]
    head = (f"{margin['method']}: {label} = {margin['value']:g} is the {side} value tried; "
            f"{margin['neighbour']:g} beside it is ")
    if margin["same"]:
        return head + "the same run (the constant did not act between them), and the grid was extended as far " \
                      "as the search allows"
    compared = (f"worse by {margin['margin']:.2f} points of validation error" if margin["margin"] > 0 else
                "no worse" if margin["margin"] == 0 else f"better by {-margin['margin']:.2f} points")
    if not margin["extend"]:
        return (head + f"{compared}, within the noise (2 s.e. = {margin['noise']:.2f}), so the grid stops: "
                       f"validation could not tell a value beyond it from it either")
    return head + f"{compared}, beyond the noise (2 s.e. = {margin['noise']:.2f}), and the grid was " \
                  f"extended as far as the search allows" + ("" if extended else " (not extended)")


def search_text(study: Study) -> str:
    """Choices at an edge of their (extended) grid and why each grid stops there, the grids that
    were extended, and the constants whose runs were the same on the search data (searched again at
    the final budget) or also there."""
    lr, const = _searches(study)
    extended = [f"{n}: {CONSTANT_LABELS[f]} (searched {listed(v)})"
                for outcome in (lr, const) for n, spec in outcome.grid.items()
                for f, v in grid_fields(spec).items()
                if n in outcome.base and len(v) > len(grid_fields(outcome.base[n])[f])]
    grown = lambda o, m: (len(grid_fields(o.grid[m["method"]])[m["field"]])
                          > len(grid_fields(o.base[m["method"]])[m["field"]]))
    reasons = [_edge_reason(m, grown(outcome, m)) for outcome in (lr, const) for m in outcome.margins]
    tied, still = lr.tied, const.tied
    parts = ["**Choices at the edge of their grid, and why the grid stops there** (a grid is extended where "
             "its edge beats the value beside it beyond the noise, or equals it): "
             + ("; ".join(reasons) + "." if reasons else "none: every choice lies inside its grid.")]
    if extended:
        parts.append("**Grids extended**: " + "; ".join(extended) + ".")
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


def lr_study_table(study: Study):
    """The learning-rate search's table, for :func:`hwutils.plotting.plot_lr_study`."""
    table = study.lr_search.table
    return table[table["method"].isin(LR_STUDY)]


def lr_study_choices(study: Study) -> dict:
    """``{method: (chosen lr, chosen value of its constant)}`` on the search data, for the figure's ★."""
    out = {}
    picked = study.lr_search.table[study.lr_search.table["chosen"]]
    for name in LR_STUDY:
        row = picked[picked["method"] == name].iloc[0]
        out[name] = (row["lr"], row["value"])
    return out


def lr_facts(study: Study):
    """Per learning-rate-study method and rate: best validation error over its constants, whether
    every run diverged, the fewest dead units, the largest share at the cap; and per method the
    largest rate at which it still trains (validation error at most twice its best, no divergence)."""
    study_table = lr_study_table(study)
    per_lr = study_table.groupby(["method", "lr"], sort=False).agg(
        err=("val_error_pct", "min"), diverged=("diverged", "all"), dead=("dead_pct", "min"),
        cap=("at_cap_peak_pct", "max"))
    best = per_lr.groupby(level=0, sort=False)["err"].min()
    trains = (~per_lr["diverged"]) & (per_lr["err"] <= 2 * best.reindex(per_lr.index.get_level_values(0)).values)
    largest = per_lr[trains].reset_index().groupby("method", sort=False)["lr"].max().reindex(list(LR_STUDY))
    return per_lr, largest


def _verdict(largest, a: str, b: str) -> str:
    more = "trains" if largest[b] > largest[a] else "does not train"
    return f"{b} {more} at larger rates than {a} (up to {largest[b]:g} against {largest[a]:g})"


def lr_facts_text(study: Study) -> str:
    per_lr, largest = lr_facts(study)
    top = min(max(grid_fields(study.lr_search.grid[n])["lr"]) for n in LR_STUDY)  # tried by every method
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
            f"* **The paper's claim, in this set-up:** {_verdict(largest, 'L2', 'max-norm')}; "
            f"{_verdict(largest, 'dropout + L2', 'dropout + max-norm')}.\n"
            f"* **At the largest rate tried ({top:g}):** " + "; ".join(facts) + ".")


def momentum_text(study: Study) -> str:
    """Dropout + max-norm at a high rate: momentum 0.9 against the probe's lower momentum."""
    dmn, probe, hi = study.chosen_method("dropout + max-norm"), study.momentum_probe, study.high_lr
    table = lr_study_table(study)
    at = lambda lr: table[(table["method"] == "dropout + max-norm") & (table["lr"] == lr)]  # noqa: E731
    fast, usual = at(hi), at(study.lr_search.table.query("method == 'dropout + max-norm' and chosen")["lr"].iloc[0])
    momentum = dmn.train.momentum
    return (f"Dropout + max-norm on the search data: learning rate {hi:g} with momentum {momentum:g} (step "
            f"{_step(hi, momentum):g}) ends at {fast['val_error_pct'].mean():.2f} % validation error with "
            f"{fast['dead_pct'].mean():.0f} % dead units (mean over its radii); with momentum {PROBE_MOMENTUM:g} "
            f"(step {_step(hi, PROBE_MOMENTUM):g}, radius c = {probe.config['train']['max_norm']:g}) at "
            f"{_pct(probe.val_error):.2f} % with {probe.measurements['dead_pct']:.0f} % dead; the chosen "
            f"learning rate {usual['lr'].iloc[0]:g} with momentum {momentum:g} (step "
            f"{_step(usual['lr'].iloc[0], momentum):g}) at {usual['val_error_pct'].mean():.2f} % with "
            f"{usual['dead_pct'].mean():.0f} % dead. Learning rates are therefore only comparable at one "
            f"momentum: the large rates of Hinton et al. (2012) came with a momentum schedule rising to 0.99 "
            f"during training.")


def l1_tradeoff_table(study: Study):
    """Late L1's candidates at the final budget, with λ₁ = 0 (the final L2 runs): near-zero weights
    (%) and validation error (%) per run."""
    import pandas as pd

    l2 = [r for r in study.final if r.method == "L2"]
    rows = [{"l1": 0.0, "seed": r.seed, "val_error_pct": _pct(r.val_error), **run_facts(r)} for r in l2]
    table = study.constant_search.table
    return pd.concat([pd.DataFrame(rows), table[table["method"] == "L2 + L1 (late)"]], ignore_index=True)


def l1_tradeoff_text(study: Study) -> str:
    points = l1_tradeoff_table(study).groupby("l1")[["near_zero_pct", "val_error_pct"]].mean()
    base, sparsest = points.iloc[0], points.iloc[-1]
    noise = 2 * _pair_se(base["val_error_pct"], len(study.data.val), len(study.sizes.seeds))
    return (f"From λ₁ = 0 to λ₁ = {points.index[-1]:g} the share of weights with {near_zero_text()} goes from "
            f"{base['near_zero_pct']:.1f} % to {sparsest['near_zero_pct']:.1f} %, and the validation error "
            f"from {base['val_error_pct']:.2f} % to {sparsest['val_error_pct']:.2f} % (on {len(study.data.val):,} "
            f"validation images, a difference below {noise:.2f} points is within twice its standard error). "
            f"The search keeps λ₁ = {study.chosen_method('L2 + L1 (late)').train.l1:g}, the value with the lowest "
            f"validation error.")


def _pair_se(error_pct: float, n: int, seeds: int) -> float:
    """Binomial standard error (points) of a difference of two error rates near ``error_pct`` %."""
    p = error_pct / 100
    return 100 * math.sqrt(2 * p * (1 - p) / n / seeds)


# --------------------------------------------------------------------------- final runs
def final_setup_table(study: Study):
    """The final methods' settings side by side."""
    from .profiles import final_methods

    return methods_frame(final_methods(study.sizes, study.chosen)).T


def training_text(study: Study) -> str:
    results = study.final
    minutes = sum(r.wall_seconds for r in results) / 60
    epochs = sum(r.history.epochs_run for r in results)
    wall = (time.perf_counter() - study.started) / 60
    estimate = study.last_estimate
    said = ("" if estimate is None or not estimate.run_steps else
            f" The estimate before training said about {estimate.minutes:.0f} minutes"
            + (" (measured on a busy machine)." if estimate.busy else "."))
    runner = trained_by(study)
    if runner:
        said += (f" The runs were trained by `python -m hwutils.study` on {runner['device']} ({runner['date'][:10]}, "
                 f"commit {runner['commit'][:12]}): {runner['wall_seconds'] / 60:.1f} minutes of wall time, against "
                 f"its own estimate of {runner['estimated_seconds'] / 60:.0f} minutes"
                 + (" measured on a busy machine." if runner.get("busy") else "."))
    return (f"{len(results)} final runs, {epochs:,} epochs: **{minutes:.1f} minutes** of training on "
            f"{study.device_name} ({60 * minutes / epochs:.2f} s per epoch of {len(study.data.train):,} images, "
            f"validation included). The whole study took {wall:.1f} minutes of wall time in this run (runs found "
            f"in the cache only count their loading).{said}")


def trained_by(study: Study) -> dict | None:
    """The provenance of the runner call that trained this study's runs - the last one of its profile
    that trained anything, from the results folder's runner log or an imported bundle - or None."""
    import json
    from pathlib import Path

    from .bundle import read_provenance
    from .study import RUN_LOG

    if not study.results_dir:
        return None
    log = Path(study.results_dir) / RUN_LOG
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    calls = [json.loads(line) for line in lines if line.strip()] + read_provenance(study.results_dir, study.profile)
    mine = [c for c in calls if c.get("profile") == study.profile and c.get("runs", 0) > c.get("runs_cached_at_start", 0)
            and "wall_seconds" in c and "estimated_seconds" in c]
    return mine[-1] if mine else None


def results_table(study: Study):
    """Test and validation error per method (mean ± std over seeds), epochs, wall time, Table 9."""
    summary = summarize(study.final, order=study.method_names)
    table = format_summary(summary)
    table["Table 9 test error (%)"] = [f"{TABLE9_TEST_ERROR[n]:.2f}" if n in TABLE9_TEST_ERROR else "–"
                                       for n in table.index]
    return table


def activity_table(study: Study):
    """Is each regularizer acting? (:func:`hwutils.diagnostics.regularizer_activity`)"""
    table = regularizer_activity(study.final).set_index("method")
    table["active"] = table["active"].map({True: "yes", False: "no"})
    return table


def activity_text(study: Study) -> str:
    table = regularizer_activity(study.final)
    inactive = table[~table["active"]]
    if not len(inactive):
        return "**Every regularizer acts at its chosen constant** (by the measures above)."
    flags = "; ".join(f"{r.method} ({r.regularizer}: {r.measure} {r.value}, {r.reference})"
                      for r in inactive.itertuples())
    return f"**Inactive at the chosen constant:** {flags}; such a row measures the method without its regularizer."


def late_l1_start(study: Study) -> int:
    """The epoch after which late L1 switches on."""
    late = study.chosen_method("L2 + L1 (late)")
    return late.train.l1_schedule.start_epoch(study.sizes.epochs)


def late_l1_text(study: Study) -> str:
    """Whether L2 + L1 followed L2 until L1 switched on: the largest difference of their validation
    losses before it, and where their minibatch losses first part (two runs trained with other
    numbers of CPU threads sum in another order, and training amplifies the rounding)."""
    first, start = study.first_seed(), late_l1_start(study)
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
def discussion_text(study: Study) -> str:
    """The discussion: ranking against noise, what dropout's extra epochs do, the learning rates,
    how the choices transfer from the search to the final budget, validation against test, scale."""
    results, sizes, small = study.final, study.sizes, study.small
    summary = summarize(results, order=study.method_names)
    comparisons = compare_to_noise(results, len(study.data.test))
    beyond = comparisons[comparisons["exceeds_noise"]]
    mean_test, mean_val = summary[("test_error_pct", "mean")], summary[("val_error_pct", "mean")]
    pairs = {frozenset((r.a, r.b)): r for r in comparisons.itertuples()}
    epochs_effect, dropout_effect = pairs[frozenset(("L2", LONG_L2))], pairs[frozenset((LONG_L2, "dropout + L2"))]
    signed = lambda row, a: row.difference if row.a == a else -row.difference  # noqa: E731 (b − a, a's side)
    word = lambda row: "exceeds" if row.exceeds_noise else "is within"  # noqa: E731
    val_se = 100 * math.sqrt(mean_val["L2"] / 100 * (1 - mean_val["L2"] / 100) / len(study.data.val))
    worse = [n for n in study.method_names if n != LONG_L2 and mean_val[n] - mean_val["L2"] > 2 * math.sqrt(2) * val_se]
    lr_picked = study.lr_search.table[study.lr_search.table["chosen"]].groupby("method")["val_error_pct"].mean()
    where = {n: ("constants chosen at the final budget" if n in study.constant_search.grid else
                 f"chosen on the search data, where it had {lr_picked[n]:.2f} % against L2's {lr_picked['L2']:.2f} %")
             for n in worse}
    transfer = "; ".join(f"{n} ({mean_val[n]:.2f} % against L2's {mean_val['L2']:.2f} %; {where[n]})" for n in worse)
    paper_rank = ", then ".join(f"{n} ({e:.2f} %)" for n, e in sorted(TABLE9_TEST_ERROR.items(), key=lambda kv: kv[1]))
    listed = "; ".join(f"{r.a} vs {r.b} ({r.difference:+.2f})" for r in beyond.itertuples())
    _, largest = lr_facts(study)
    return f"""
* **Ranking on test error** ("<": the step exceeds twice its standard error; "≈": a tie within noise):
  {ranking_text(summary, comparisons)}. Table 9 orders them from best to worst: {paper_rank}.
* **Noise:** differences are judged against their standard error ({comparisons["basis"].iloc[0]}; typically
  {comparisons["se"].median():.2f} points on {len(study.data.test):,} test images). {len(beyond)} of
  {len(comparisons)} pairwise differences exceed two standard errors{": " + listed if listed else ""}.
* **Dropout or just more epochs?** Training L2 for {sizes.dropout_epochs} epochs instead of {sizes.epochs}
  changes its test error by {signed(epochs_effect, "L2"):+.2f} points ({mean_test["L2"]:.2f} % →
  {mean_test[LONG_L2]:.2f} %), which {word(epochs_effect)} the noise; with that same budget, dropout + L2
  ({mean_test["dropout + L2"]:.2f} %) differs from the long L2 run by {signed(dropout_effect, LONG_L2):+.2f}
  points, which {word(dropout_effect)} the noise.
* **Learning rates (search scale):** {_verdict(largest, "L2", "max-norm")}; {_verdict(largest, "dropout + L2", "dropout + max-norm")}.
  Where high rates failed here, units died rather than weights exploding: through the input scaling, the
  first steps without warm-up, and, with dropout, the step that momentum multiplies (see the diagnoses
  above). Max-norm bounds the length of a unit's incoming weights; that does not stop a step from
  turning the unit off for every input.
* **Worse than L2 on validation at the full budget, beyond the noise:** {transfer + "." if worse else
  "none: every method's validation error is within noise of L2's or better."}
* **Validation against test:** the largest gap between a method's validation and test error is
  {(mean_val - mean_test).abs().max():.2f} points.
* **Scale:** hidden layers {"-".join(map(str, sizes.hidden))}, {sizes.epochs} / {sizes.dropout_epochs} epochs and
  {len(sizes.seeds)} seed{"s" if len(sizes.seeds) > 1 else ""}, against the paper's 1024-1024-2048 network and
  about a million updates; the learning-rate search ran on {len(study.search_data.train):,} images for
  {small.epochs} / {small.dropout_epochs} epochs, the L1 and KL search at the final budget.
"""



# --------------------------------------------------------------------------- inputs of the figures
def summary(study: Study):
    """:func:`hwutils.experiments.summarize` of the final runs, in the methods' order."""
    return summarize(study.final, order=study.method_names)


def measured(study: Study, *names: str) -> dict:
    """``{method: end-of-training measurements}`` of the first seed's final runs of ``names``."""
    first = study.first_seed()
    return {n: first[n].measurements for n in names}


def unit_norms(study: Study, *names: str) -> dict:
    """``{method: the hidden units' incoming weight norms}`` of the first seed's final runs."""
    from .diagnostics import unit_values

    return {n: unit_values(m, "norm") for n, m in measured(study, *names).items()}


def late_l1_pair(study: Study) -> list:
    """The first seed's final L2 and L2 + L1 runs: the same until L1 switches on."""
    first = study.first_seed()
    return [first["L2"], first["L2 + L1 (late)"]]


# --------------------------------------------------------------------------- the three questions, and Table 9
def table9_rows(study: Study):
    """Per Table 9 method: this run's test error (mean over seeds), its standard error, the
    paper's value, the difference, and whether it lies within twice the standard error of the
    difference (this run's s.e. - over seeds, or binomial with one seed - and the paper's
    binomial one, on its 10,000 test images)."""
    import pandas as pd

    frame = summary(study)
    n_test, rows = len(study.data.test), []
    for name, paper in TABLE9_TEST_ERROR.items():
        mean, n = frame.loc[name, ("test_error_pct", "mean")], int(frame.loc[name, ("seeds", "n")])
        std = frame.loc[name, ("test_error_pct", "std")]
        se = std / math.sqrt(n) if n > 1 else _binomial_se(mean, n_test)
        noise = math.sqrt(se ** 2 + _binomial_se(paper, 10_000) ** 2)
        rows.append({"method": name, "this run (%)": mean, "s.e.": se, "Table 9 (%)": paper,
                     "difference": mean - paper, "2 s.e.": 2 * noise,
                     "agrees": abs(mean - paper) <= 2 * noise})
    return pd.DataFrame(rows).set_index("method")


def _binomial_se(error_pct: float, n: int) -> float:
    p = error_pct / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def table9_text(study: Study) -> str:
    """Each Table 9 row named as agreeing with the paper within the noise, or below or above it
    beyond the noise (by how much), and what differs between the two set-ups."""
    rows, sizes = table9_rows(study), study.sizes
    paper_net = sizes.hidden == (1024, 1024, 2048)
    dropout_steps = sizes.dropout_epochs * math.ceil(len(study.data.train) / sizes.batch_size)
    named = lambda names: ", ".join(f"{n} ({rows.loc[n, 'difference']:+.2f})" for n in names)  # noqa: E731
    agree = [n for n, r in rows.iterrows() if r["agrees"]]
    below = [n for n, r in rows.iterrows() if not r["agrees"] and r["difference"] < 0]
    above = [n for n, r in rows.iterrows() if not r["agrees"] and r["difference"] > 0]
    parts = [f"within the noise of Table 9 ({len(agree)} of {len(rows)}): {', '.join(agree)}" if agree else "",
             f"below Table 9 beyond the noise (points): {named(below)}" if below else "",
             f"above it beyond the noise: {named(above)}" if above else ""]
    text = "The rows of @tbl-table9 " + "; ".join(p for p in parts if p) + "."
    if agree == list(rows.index):
        return text
    why = ("the same network as the paper" if paper_net else
           f"a smaller network ({'-'.join(map(str, sizes.hidden))} against 1024-1024-2048)")
    return (text + f" The set-ups differ in {why}, {dropout_steps:,} updates for the dropout methods against "
            f"about a million, constants searched on this run's validation split, and the optimizer: this "
            f"project's Nesterov momentum 0.9 with cosine decay and warm-up, where the authors' published "
            f"configuration uses plain momentum rising from 0.5 to 0.99 and a learning rate decaying as "
            f"1/(1 + t/10,000) (@tbl-recipe runs that recipe).")


def questions_text(study: Study) -> str:
    """The three questions of the introduction, answered from the run."""
    activity = regularizer_activity(study.final)
    inactive = sorted(set(activity.loc[~activity["active"], "method"]))
    lr, const = study.lr_search, study.constant_search
    stops = {"noise": [], "limit": []}
    for o in (lr, const):
        for m in o.margins:
            stops["limit" if m["extend"] else "noise"].append(f"{m['method']} ({CONSTANT_LABELS[m['field']]} = "
                                                              f"{m['value']:g})")
    inherited = [n for n in const.grid if n not in lr.grid and n.startswith("L2 +")]
    comparisons = compare_to_noise(study.final, len(study.data.test))
    beyond = int(comparisons["exceeds_noise"].sum())
    acting = ("yes: every regularizer acts at its chosen constant (@tbl-activity)" if not inactive else
              f"not all: {', '.join(inactive)} {'does' if len(inactive) == 1 else 'do'} not act at the chosen "
              f"constant by the measures of @tbl-activity, so those rows measure the method without it")
    tuned = (f"as far as this search goes: the learning rate of {', '.join(LR_STUDY)} was searched jointly with "
             f"its constant on the search data; {' and '.join(inherited)} inherit L2's learning rate and λ₂ and "
             f"search their own constant at the final budget (the paper's Table 9 does not say how its "
             f"constants were chosen). "
             + (f"At a grid edge within the noise of the value beside it (validation cannot tell a value beyond "
                f"it apart): {'; '.join(stops['noise'])}. " if stops["noise"] else "")
             + (f"At a grid edge after extending as far as the search allows: {'; '.join(stops['limit'])}. "
                if stops["limit"] else "")
             + ("No choice is at an edge of its grid. " if not any(stops.values()) else "")
             + ("Not chosen by validation, because the runs were the same at the final budget (the constant did "
                "not act between its values): " + "; ".join(f"{n} ({CONSTANT_LABELS[f]} ∈ {{{listed(v)}}})"
                                                             for n, (f, v) in const.tied.items()) + "."
                if const.tied else "No constant is chosen by a tie."))
    noise = (f"{beyond} of {len(comparisons)} pairwise differences exceed twice their standard error; the "
             f"others are ties")
    return (f"1. **Is every regularizer doing something?** {acting}.\n"
            f"2. **Was every method tuned as well as the others?** {tuned}\n"
            f"3. **Which differences exceed the noise?** {noise} (the ranking below).")


# --------------------------------------------------------------------------- the authors' recipe
def _effective_step(result) -> tuple[float, int]:
    from .training import TrainConfig, largest_effective_step

    train = dict(result.config["train"])
    return largest_effective_step(TrainConfig(**train), result.history.steps_per_epoch)


def recipe_rows(study: Study):
    """Dropout + max-norm with this project's recipe against the authors' (and the paper's B.1
    values where the profile trains them): test and validation error (mean over seeds), hidden units
    at the cap at the end, dead units, the largest effective step ε/(1 − m) of the run, whether it
    diverged, and Table 9's value."""
    import pandas as pd

    ours = [r for r in study.final if r.method == "dropout + max-norm"]
    rows = []
    for name, runs in [("dropout + max-norm (this project's recipe)", ours),
                       *[(m.name, [r for r in study.recipe if r.method == m.name]) for m in study.recipe_methods]]:
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


def recipe_text(study: Study) -> str:
    """What the authors' recipe answers about the paper's claim for max-norm: does it train with a
    larger effective step than this project's recipe does, and how does it compare."""
    rows = recipe_rows(study)
    ours, authors = rows.iloc[0], rows.iloc[1]
    _, largest = lr_facts(study)
    ours_top = largest["dropout + max-norm"] / (1 - study.chosen_method("dropout + max-norm").train.momentum)
    noise = 2 * math.sqrt(2) * _binomial_se(ours["test (%)"], len(study.data.test))
    gap = authors["test (%)"] - ours["test (%)"]
    survived = authors["diverged"] == "no" and authors["dead (%)"] < 5
    claim = ("so the paper's claim holds in its own recipe: max-norm lets dropout train at effective steps "
             f"{authors['max ε/(1 − m)'] / ours_top:.1f} times the largest this project's recipe trained at"
             if survived and authors["max ε/(1 − m)"] > ours_top else
             "so even in its own recipe max-norm did not keep the network whole at that step" if not survived else
             "so the authors' recipe takes no larger step than this project's: it does not test the claim")
    compare = (f"{abs(gap):.2f} points {'worse' if gap > 0 else 'better'} than this project's recipe, "
               f"{'beyond' if abs(gap) > noise else 'within'} the noise ({noise:.2f})")
    scaled = study.recipe_methods[0].train.lr_half_life_steps / 10_000
    scale_note = ("" if scaled == 1 else f" At this profile's budget the recipe's time constants are scaled by "
                  f"{scaled:g} (its learning rate's half-life and momentum ramp end at the same fraction of "
                  f"training as in the authors' million steps), so this is the recipe's shape, not its dynamics.")
    return (f"The authors' recipe reaches an effective step ε/(1 − m) of {authors['max ε/(1 − m)']:.2f} (at step "
            f"{authors['at step']:,}) and ends with {authors['dead (%)']:.1f} % dead units, "
            f"{authors['at cap (%)']:.0f} % of hidden units at the cap and {authors['test (%)']:.2f} % "
            f"test error (Table 9: {TABLE9_TEST_ERROR['dropout + max-norm']:.2f} %): {compare}. In the learning-rate study, this project's dropout + max-norm trained up to "
            f"learning rate {largest['dropout + max-norm']:g}, an effective step of {ours_top:.2f}; {claim}."
            f"{scale_note}")
