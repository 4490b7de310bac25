"""The headless runner of Part 3: ``python -m hwutils.study`` trains the study into the results
cache without Jupyter, estimates its time, and moves its results between machines as a bundle or
as tables.

Commands: ``train`` (the default; ``--estimate`` stops after the plan, ``--check`` says whether the
plan is all in the cache), ``export`` (a bundle with ``--out``, CSV tables with ``--csv``) and ``import``.

Exit codes: 0 done (for ``--check``: the study is complete); 2 a fault, said in one line (a bad
parameter, a folder that cannot be used, a plan too large for memory, a run whose loss diverged);
75 (:data:`~hwutils.study.PENDING_EXIT`) the study needs other shards' runs first: run it again once
they are in (``slurm/study.sbatch`` does); 130 interrupted. A relative ``--results-dir`` is the
folder in the project (beside ``pyproject.toml``), wherever the command runs.

It imports torch, numpy, pandas and tqdm only, so it runs on a GPU node without pip.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .cache import run_stem
from .experiments import run_key
from .study import PENDING_EXIT, ShardsPending, Study

__all__ = ["main", "RUN_LOG", "NOTEBOOK", "PROJECT_ROOT", "results_folder", "shard_of", "train_shard",
           "plan_status", "write_csv", "SLURM_ARRAY"]

NOTEBOOK = "03_mnist_regularization"  # whose parameters the runner takes (hwutils.params.SPEC)
RUN_LOG = "study-runs.jsonl"  # in the results folder: one line per finished runner call (provenance)
#: The folder holding pyproject.toml: a relative results folder is taken from here, not from the cwd.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: What ``--shard auto`` reads: this task's index, the number of tasks, and the array's first index.
SLURM_ARRAY = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")
#: How often a waiting shard looks for the other shards' runs (seconds).
POLL_SECONDS = 2.0
#: The stages a shard works through, as chains of the Study's stage methods: a chain stops at its
#: first stage still missing other shards' runs, and the other chains go on (the probes and the
#: learning-rate search need nothing; the momentum probe and the final runs need the constants).
CHAINS = (("train_probes",), ("search_learning_rates", "search_constants", "train_momentum_probe"),
          ("search_learning_rates", "search_constants", "train_final"))


def _parser():
    import argparse

    from .precision import PRECISIONS

    parser = argparse.ArgumentParser(
        prog="python -m hwutils.study",
        description="Train every run Part 3 needs into the results cache (headless: no Jupyter), estimate "
                    "its time, or move its results between machines. 'make report' with the same profile "
                    "and parameters then renders from the cache and trains nothing. Exit codes: 0 done, "
                    "2 a fault (one line), 75 waiting for other shards' runs (run it again later), 130 interrupted.",
        epilog="Train on a GPU node, render elsewhere:  python -m hwutils.study --profile paper && "
               "python -m hwutils.study export --profile paper --out paper.json.gz;  then, on the other "
               "machine:  python -m hwutils.study import paper.json.gz && make report PROFILE=paper.  "
               "On a SLURM cluster:  sbatch --array=1-4 slurm/study.sbatch --profile paper")
    sub = parser.add_subparsers(dest="command")

    def study_options(p):
        p.add_argument("--profile", default="quick", help="smoke | quick | full | paper (default quick)")
        p.add_argument("--seeds", type=int, nargs="+", help="seeds of the final runs")
        p.add_argument("--epochs", type=int, help="epochs of the methods without dropout")
        p.add_argument("--dropout-epochs", type=int, help="epochs of the dropout methods and the control")
        p.add_argument("--hidden", type=int, nargs="+", help="hidden widths, e.g. 800 800")
        p.add_argument("--lr-grid", type=float, nargs="+", help="learning rates searched")
        p.add_argument("--downsample", type=int, help="image side after pooling: 7, 14 (default 28)")
        p.add_argument("--results-dir", default="results",
                       help="the cache of trained runs (default results; a relative folder is in the project)")
        p.add_argument("--precision", choices=PRECISIONS, help="of the matrix products: fp32, tf32 (CUDA) or bf16 "
                                                               "(default: tf32 on CUDA, fp32 on the CPU)")

    train = sub.add_parser("train", help="train the study into the cache (the default command)")
    study_options(train)
    train.add_argument("--force", action="store_true", help="retrain runs that are cached")
    train.add_argument("--shard", default="1/1",
                       help="i/n: train the i-th of n parts of each stage whose inputs are in the results folder; "
                            "'auto': i and n from the SLURM job array (SLURM_ARRAY_TASK_ID, _COUNT, _MIN)")
    train.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                       help="how long a shard with nothing left to train waits for the other shards' runs before "
                            "it exits with 75 (default 60)")
    train.add_argument("--estimate", action="store_true", help="print the plan's estimate and stop")
    train.add_argument("--check", action="store_true",
                       help="train nothing: exit 0 when every run of the plan is in the results folder, else 75")
    export = sub.add_parser("export", help="write the study's results (no weights) to one file, or as CSV tables")
    study_options(export)
    export.add_argument("--out", help="the bundle to write, e.g. paper.json.gz")
    export.add_argument("--csv", metavar="DIR", help="write runs.csv and curves.csv into DIR")
    export.add_argument("--partial", action="store_true",
                        help="write the runs trained so far (to carry them to another machine and train on there)")
    imp = sub.add_parser("import", help="put a bundle's runs into a results folder")
    imp.add_argument("bundle", help="a file written by 'export'")
    imp.add_argument("--results-dir", default="results",
                     help="where to put them (default results; a relative folder is in the project)")
    return parser


# --------------------------------------------------------------------------- where, and which part
def results_folder(text) -> Path:
    """The results folder a user means: ``~`` expanded, and a relative folder taken from the
    project root (beside pyproject.toml), so that a command run from elsewhere finds the same cache."""
    path = Path(os.path.expanduser(str(text)))
    return path if path.is_absolute() else PROJECT_ROOT / path


def shard_of(text: str, environ=os.environ) -> tuple[int, int]:
    """``(i, n)``, 0-based, from ``--shard i/n`` (1-based) or ``--shard auto`` (the SLURM job array)."""
    if text == "auto":
        absent = [name for name in SLURM_ARRAY if not environ.get(name)]
        if absent:
            raise ValueError(f"--shard auto: {', '.join(absent)} not set: run it as a task of a SLURM job array "
                             f"(sbatch --array=1-N slurm/study.sbatch ...), or give --shard i/n")
        try:
            task, count, first = (int(environ[name]) for name in SLURM_ARRAY)
            last = int(environ.get("SLURM_ARRAY_TASK_MAX", first + count - 1))
        except ValueError:
            raise ValueError(f"--shard auto: {', '.join(f'{n}={environ[n]!r}' for n in SLURM_ARRAY)} are not "
                             f"whole numbers: submit with sbatch --array=1-N") from None
        if last - first + 1 != count:
            raise ValueError(f"--shard auto: the array {first}-{last} has {count} tasks, not {last - first + 1}: "
                             f"submit a contiguous array (--array=1-N, no step, no list)")
        text = f"{task - first + 1}/{count}"
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: write it as i/n, e.g. 2/4, or auto in a SLURM job array") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"--shard {text}: need 1 <= i <= n")
    return i - 1, n


# --------------------------------------------------------------------------- shards
def _records_in(folder) -> frozenset:
    """The run records in ``folder``: a new one is what a waiting shard looks for (a file listing,
    cheap enough to poll)."""
    return frozenset(path.name for path in Path(folder).glob("*.json"))


def _pending_line(pending: dict) -> str:
    first, *others = pending.values()
    also = "".join(f"; stage '{p.stage}' needs {len(p.missing)} runs too" for p in others)
    return f"{first}{also}; run the other shards, then this command again"


def train_shard(study: Study, wait_seconds: float, clock=time.monotonic, sleep=time.sleep) -> None:
    """Train ``study.shard``'s part of every stage whose inputs are in the cache, and go on as the
    other shards' runs arrive; return when the whole study is in the cache. When nothing is left
    to train here and no other shard's run has arrived for ``wait_seconds``, raise
    :class:`ShardsPending` (its message names every stage still waiting, in one line)."""
    study.wait_seconds = 0.0  # look once per pass; the waiting happens here, over all chains at once
    last, deadline = None, 0.0
    while True:
        seen = _records_in(study.results_dir)  # before the pass: what arrives while it looks counts as new
        pending: dict[str, ShardsPending] = {}
        for chain in CHAINS:
            try:
                for stage in chain:
                    getattr(study, stage)()  # each stage method remembers what it completed
            except ShardsPending as waiting:
                pending.setdefault(waiting.stage, waiting)
        if not pending:
            return
        state = {stage: len(p.missing) for stage, p in pending.items()}
        if state != last:  # progress, here or elsewhere: the wait starts again
            last, deadline = state, clock() + wait_seconds
        # The next pass when enough new records are there for a waiting stage to be complete (a pass
        # reloads the stages' runs: not for every record); each arrival starts the wait again.
        need, arrived = min(state.values()), 0
        while (new := len(_records_in(study.results_dir) - seen)) < need:
            if new > arrived:
                arrived, deadline = new, clock() + wait_seconds
            left = deadline - clock()
            if left <= 0:
                first = next(iter(pending.values()))
                first.args = (_pending_line(pending),)  # one line for every stage still waiting
                raise first
            sleep(min(POLL_SECONDS, left))


def plan_status(study: Study) -> tuple[int, int, str | None]:
    """``(runs planned, runs not in the cache, the first stage with one)``: the plan as far as its
    cached searches decide it (:meth:`Study.plan`), each run counted once."""
    seen, missing, first = set(), 0, None
    for stage in study.plan():
        for b, m, s in stage.jobs():
            batch = stage.batches[b]
            key = (m.name, run_key(m, study._data(batch.data).spec, s))
            if key in seen:  # a search's chosen run is also a final run
                continue
            seen.add(key)
            if not study._usable(batch, m, s):  # a run there but unusable is retrained: not complete
                missing, first = missing + 1, first or stage.name
    return len(seen), missing, first


# --------------------------------------------------------------------------- train
def _study_kwargs(args) -> dict:
    """The parameters as the notebook takes them, each checked by :mod:`hwutils.params` (one line each)."""
    from .params import check_value

    given = {"profile": args.profile, "seeds": args.seeds, "epochs": args.epochs,
             "dropout_epochs": args.dropout_epochs, "hidden": args.hidden, "lr_grid": args.lr_grid,
             "downsample": args.downsample, "precision": getattr(args, "precision", None),
             "results_dir": args.results_dir}
    kwargs = {name: check_value(name, value, NOTEBOOK) if value is not None else None for name, value in given.items()}
    kwargs["results_dir"] = results_folder(kwargs["results_dir"])
    return kwargs


def _train(args) -> int:
    import json

    from .bundle import provenance
    from .cache import check_writable
    from .fused import chosen_update
    from .preflight import study_memory_check

    kwargs = _study_kwargs(args)
    shard = shard_of(args.shard)
    if not args.wait >= 0:
        raise ValueError(f"--wait {args.wait:g}: give the seconds a shard waits for the others' runs, 0 or more")
    check_writable(kwargs["results_dir"], "--results-dir",
                   "make it writable, or give --results-dir a writable folder (e.g. /tmp/hw3-results)")
    profile = kwargs.pop("profile")
    study = Study(profile, force=args.force, shard=shard, wait_seconds=args.wait, **kwargs)
    study_memory_check(study, "give smaller --hidden widths")
    print(f"hwutils.study: results in {study.results_dir}", flush=True)
    if args.check:
        runs, missing, stage = plan_status(study)
        if missing:
            print(f"hwutils.study: {missing} of {runs} runs of profile {profile} are not in {study.results_dir} yet "
                  f"(from stage '{stage}' on): train them (python -m hwutils.study ... or slurm/study.sbatch)")
            return PENDING_EXIT
        print(f"hwutils.study: all {runs} runs of profile {profile} are in {study.results_dir}: the study is complete")
        return 0
    estimate = study.estimate()
    print(f"hwutils.study, profile {profile}: {estimate.text()}", flush=True)
    if args.estimate:
        return 0
    start = time.perf_counter()
    if shard[1] > 1:
        train_shard(study, args.wait)
    else:
        study.train_all()
    wall = time.perf_counter() - start
    took: dict[str, float] = {}  # a shard completes a stage again on each pass: its first time counts
    for name, seconds in study.stage_log:
        took.setdefault(name, seconds)
    stages = "; ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in took.items())
    print(f"hwutils.study: done in {wall / 60:.1f} min ({stages}); estimated {estimate.minutes:.1f} min", flush=True)
    log = provenance(profile=profile, params={k: v for k, v in kwargs.items() if k != "results_dir"},
                     wall_seconds=round(wall, 1), estimated_seconds=round(estimate.seconds, 1),
                     stages={name: round(seconds, 1) for name, seconds in took.items()},
                     runs=estimate.runs, runs_cached_at_start=estimate.runs_cached, busy=bool(estimate.busy),
                     shard=f"{shard[0] + 1}/{shard[1]}",
                     update=chosen_update())  # the SGD update's path: the same weights, another speed
    with open(Path(study.results_dir) / RUN_LOG, "a", encoding="utf-8") as out:
        out.write(json.dumps(log) + "\n")
    return 0


# --------------------------------------------------------------------------- export
def _plan_records(study: Study) -> tuple[list[dict], int, int]:
    """The cached records of the plan's runs (each once), how many are missing, and how many are planned."""
    from .cache import load_run

    records, missing, seen = [], 0, set()
    for stage in study.plan():
        for b, m, s in stage.jobs():
            batch = stage.batches[b]
            key = run_key(m, study._data(batch.data).spec, s)
            if (m.name, key) in seen:  # a search's chosen run is also a final run
                continue
            seen.add((m.name, key))
            loaded = load_run(run_stem(study.results_dir, m.name, key))
            if loaded is None:
                missing += 1
            else:
                records.append(loaded[0])
    return records, missing, len(seen)


def _flat(prefix: str, value) -> dict:
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _flat(f"{prefix}{name}.", item).items()}
    if isinstance(value, (list, tuple)):
        return {prefix[:-1]: " ".join(map(str, value))}
    return {prefix[:-1]: value}


#: The per-epoch series of a run's History that curves.csv holds (iter_loss, per minibatch, is not).
CURVES = ("train_loss", "penalty", "val_loss", "val_error", "lr", "small_weights", "max_unit_norm", "at_cap",
          "epoch_seconds")


def write_csv(records: list[dict], folder, device: str) -> tuple[Path, Path]:
    """``runs.csv`` (one row per run: method, seed, key, every configuration field as
    ``model.*``/``train.*``/``data.*``, validation and test error, epochs run, best epoch, wall time,
    device, precision) and ``curves.csv`` (run key, method, seed, epoch, metric, value) in ``folder``.
    ``device``: where the runs trained (the runner's log); a run's precision None is the device's default."""
    import pandas as pd

    from .cache import atomic_write

    rows, curves = [], []
    default = "fp32" if device.startswith("CPU") else "tf32"
    for r in records:
        history = r["history"]
        rows.append({"method": r["method"], "seed": r["seed"], "key": r["key"], **_flat("", r["config"]),
                     "val_error": r["val_error"], "test_error": r.get("test_error"),
                     "epochs_run": len(history["val_error"]), "best_epoch": history["best_epoch"],
                     "diverged": history.get("diverged", False), "wall_seconds": sum(history["epoch_seconds"]),
                     "device": device, "precision": r["config"]["train"].get("precision") or default})
        for metric in CURVES:
            curves += [(r["key"], r["method"], r["seed"], epoch, metric, value)
                       for epoch, value in enumerate(history.get(metric) or [], start=1)]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs_csv, curves_csv = folder / "runs.csv", folder / "curves.csv"
    table = pd.DataFrame(rows)
    long = pd.DataFrame(curves, columns=["key", "method", "seed", "epoch", "metric", "value"])
    atomic_write(runs_csv, lambda p: table.to_csv(p, index=False))
    atomic_write(curves_csv, lambda p: long.to_csv(p, index=False))
    return runs_csv, curves_csv


def _export(args) -> int:
    import json

    from .bundle import export_runs, provenance
    from .cache import load_run

    if not (args.out or args.csv):
        raise ValueError("export: say where: --out FILE.json.gz (a bundle) and/or --csv DIR (tables)")
    kwargs = _study_kwargs(args)
    profile = kwargs.pop("profile")
    study = Study(profile, progress=False, **kwargs)
    records, missing, planned = _plan_records(study)
    if missing and not args.partial:
        print(f"hwutils.study export: {missing} of {planned} runs of profile {profile} are not in "
              f"{study.results_dir}: train them first (python -m hwutils.study --profile {profile} ...)")
        return 1
    if missing:  # the test errors later stages read off these runs, which travel without weights
        for stage in study.plan():
            for b, batch in enumerate(stage.batches):
                done = [(m, s) for bb, m, s in stage.jobs() if bb == b and study._cached(batch, m, s)]
                if batch.evaluate_test and done:
                    study._sweep(batch, done)
    else:
        study.train_all()  # all cached: loads them, and fills in what a record lacks (test errors)
    records = [load_run(run_stem(study.results_dir, r["method"], r["key"]))[0] for r in records]
    log = Path(study.results_dir) / RUN_LOG
    runs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
    mine = [r for r in runs if r.get("profile") == profile]
    origin = mine[-1] if mine else provenance(profile=profile, note="no runner log: trained by the notebook")
    still = f"; partial: {missing} of {planned} runs still to train" if missing else ""
    if args.csv:
        runs_csv, curves_csv = write_csv(records, Path(args.csv).expanduser().absolute(), origin["device"])
        print(f"hwutils.study export: {len(records)} runs of profile {profile} from {study.results_dir} to "
              f"{runs_csv} and {curves_csv}{still}")
    if args.out:
        partial = {"partial": f"{len(records)} of {planned} runs"} if missing else {}
        summary = export_runs(records, args.out, {**origin, "profile": profile, "exported": provenance()["date"],
                                                  **partial})
        print(f"hwutils.study export: {summary['runs']} runs of profile {profile} from {study.results_dir} to "
              f"{summary['path']} "
              f"({summary['bytes'] / 1e6:.2f} MB, no weights){still}")
    return 0


def _import(args) -> int:
    from .bundle import import_runs

    print("hwutils.study import: " + import_runs(args.bundle, results_folder(args.results_dir)))
    return 0


# --------------------------------------------------------------------------- main
def _close_progress_bars() -> None:
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "export", "import", "-h", "--help"):
        argv = ["train", *argv]
    args = _parser().parse_args(argv)
    from .bundle import BundleError
    from .cache import CacheError
    from .data import DataError
    from .params import ParameterError

    try:
        try:
            return {"train": _train, "export": _export, "import": _import}[args.command](args)
        finally:
            _close_progress_bars()  # those an exception left open: the last line is then what is said below
    except ShardsPending as waiting:
        print(f"hwutils.study: {waiting}", file=sys.stderr)
        return PENDING_EXIT
    except FloatingPointError as err:  # names the run, what became NaN and the run's learning rate
        print(f"hwutils.study: a run diverged: {err}", file=sys.stderr)
        return 2
    except (ParameterError, ValueError, BundleError, CacheError, DataError) as err:
        print(f"hwutils.study: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwutils.study: interrupted; the runs finished so far are cached: run the same command again to "
              "resume", file=sys.stderr)
        return 130
