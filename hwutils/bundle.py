"""Portable results: what the report needs from a results folder, in one file that travels.

A study trained on one machine (a GPU node) is rendered on another (a laptop): :func:`export_runs`
writes the records of a study's runs - configs, histories (the per-minibatch loss averaged down
to at most :data:`MAX_ITER_POINTS` points) and the end-of-training measurements - and the
provenance of the run that trained them (device, date, commit, versions, wall time) into one
gzipped JSON file, without weights; :func:`import_runs` puts them into a results folder, where
the study loads them like any cached run and trains nothing.

Nothing is mixed silently. Each run travels with the sha256 of its record as it travels
(``record_sha256``) and the bundle with one over all of it (``bundle_sha256``): a number edited on
the way is refused, naming the run. Every record's key is recomputed from its configuration by this
checkout's code, so a bundle made by a version whose runs are keyed differently is refused as a
whole. A bundle cannot write outside the results folder: every run's file name and the provenance's
are checked (:func:`hwutils.cache.run_stem`). All of that before anything is written; then the runs
are written into a temporary folder inside the results folder and moved in one by one. A run
already in the folder is left as it is, and the summary line says how many were.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .cache import atomic_write, canonical_sha256, check_record, run_stem, seal_record, write_failure
from .experiments import CACHE_VERSION, Method, run_key
from .models import ModelConfig
from .training import History, TrainConfig

__all__ = ["BundleError", "export_runs", "import_runs", "read_bundle", "provenance", "read_provenance",
           "MAX_ITER_POINTS", "FORMAT"]

FORMAT = "hw3-results-bundle"
#: 2: runs carry ``record_sha256``, the bundle ``bundle_sha256``.
VERSION = 2
#: The per-minibatch training loss of a run is averaged down to at most this many points.
MAX_ITER_POINTS = 2_000
#: Where imported (and locally written) provenance records live inside a results folder.
PROVENANCE_DIR = "provenance"
#: A profile name that can begin a provenance file's name.
_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(RuntimeError):
    """A bundle cannot be written or read; the message names the file and the fix."""


def _commit() -> str:
    """The checkout's commit (with "+changes" when the tree differs from it), or $HWUTILS_COMMIT."""
    if os.environ.get("HWUTILS_COMMIT"):
        return os.environ["HWUTILS_COMMIT"]
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def provenance(**extra) -> dict:
    """Where and with what a study ran: device, date (UTC), commit, software versions, plus ``extra``."""
    import numpy
    import pandas
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {"device": device, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "numpy": numpy.__version__, "pandas": pandas.__version__,
            "platform": platform.platform(), **extra}


def _portable(record: dict) -> dict:
    """A cached record as it travels: history coarsened, no weights, sealed by the ``record_sha256``
    of that. Numbers are kept as they are (rounding them would move a value the report prints
    across a rounding boundary)."""
    history = History.from_dict(record["history"]).coarsened(MAX_ITER_POINTS)
    out = {k: v for k, v in record.items() if k not in ("schema", "weights_sha256", "record_sha256")}
    out["history"] = history.to_dict()
    out["record_sha256"] = canonical_sha256(out)
    return out


def _sealed(bundle: dict) -> dict:
    """``bundle`` with the ``bundle_sha256`` of everything else in it: its header, its provenance and
    its runs, each by its ``record_sha256`` (which :func:`read_bundle` checks against the run first)."""
    rest = {k: v for k, v in bundle.items() if k != "bundle_sha256"}
    runs = [run.get("record_sha256") if isinstance(run, dict) else run for run in rest.get("runs", [])]
    return {**rest, "bundle_sha256": canonical_sha256({**rest, "runs": runs})}


def export_runs(records: list[dict], path, run_provenance: dict) -> dict:
    """Write ``records`` (cached run records) and ``run_provenance`` to the bundle ``path``
    (gzipped JSON); return a summary (runs, bytes)."""
    path = Path(path)
    bundle = _sealed({"format": FORMAT, "version": VERSION, "cache_version": CACHE_VERSION,
                      "provenance": run_provenance, "runs": [_portable(r) for r in records]})
    payload = gzip.compress(json.dumps(bundle, separators=(",", ":")).encode("utf-8"), mtime=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_bytes(payload))
    except OSError as err:
        raise BundleError(f"cannot write the bundle {path}: {err.strerror or err}; choose another --out") from None
    return {"runs": len(records), "bytes": len(payload), "path": str(path)}


def _shown(value, limit: int = 60) -> str:
    """``value`` for a one-line message: short text as it is, anything else as a (cut) repr."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _run_name(i: int, run) -> str:
    """"run <i> (<method>, seed <seed>)", whatever the run holds."""
    if not isinstance(run, dict):
        return f"run {i}"
    return f"run {i} ({_shown(run.get('method'))}, seed {_shown(run.get('seed'))})"


def read_bundle(path) -> dict:
    """A bundle's content, or a one-line :class:`BundleError` naming what is wrong with the file:
    not a bundle, another format version, a part of the wrong kind, or content that does not match
    its digests (a run's ``record_sha256``, then the ``bundle_sha256``)."""
    path = Path(path)
    again = "nothing imported; export the bundle again"
    try:
        bundle = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    except FileNotFoundError:
        raise BundleError(f"no bundle at {path}: give the file that python -m hwutils.study export wrote") from None
    except (OSError, EOFError, ValueError, RecursionError, gzip.BadGzipFile) as err:
        raise BundleError(f"{path} is not a results bundle ({type(err).__name__}): export it again") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT or not isinstance(bundle.get("runs"), list):
        raise BundleError(f"{path} is not a results bundle (no '{FORMAT}' header): export it again")
    if bundle.get("version") != VERSION:
        raise BundleError(f"{path} is bundle format {_shown(repr(bundle.get('version')))}, this checkout reads "
                          f"{VERSION}: import it with the version that wrote it")
    if not isinstance(bundle.get("provenance"), dict):
        raise BundleError(f"{path}: its provenance is {_kind(bundle.get('provenance'))}, not an object: {again}")
    if not isinstance(bundle.get("bundle_sha256"), str):
        raise BundleError(f"{path} has no bundle_sha256 (made by hand, not by export): {again}")
    try:
        for i, run in enumerate(bundle["runs"]):
            if not isinstance(run, dict):
                raise BundleError(f"{path}: run {i} is {_kind(run)}, not an object: {again}")
            if not isinstance(run.get("record_sha256"), str) or not _SHA256.fullmatch(run["record_sha256"]):
                raise BundleError(f"{path}: {_run_name(i, run)} has no record_sha256: {again}")
            if canonical_sha256({k: v for k, v in run.items() if k != "record_sha256"}) != run["record_sha256"]:
                raise BundleError(f"{path}: {_run_name(i, run)} was edited or damaged after export (its content "
                                  f"does not match its record_sha256): {again}")
        if _sealed(bundle)["bundle_sha256"] != bundle["bundle_sha256"]:
            raise BundleError(f"{path} was edited or damaged after export (its content does not match its "
                              f"bundle_sha256): {again}")
    except RecursionError:
        raise BundleError(f"{path}: a run is nested too deeply to be a record: {again}") from None
    return bundle


def _kind(value) -> str:
    return "null" if value is None else f"a JSON {type(value).__name__}"


def _recomputed_key(record: dict) -> str | None:
    """The key this checkout gives the record's configuration (None: it cannot read that config)."""
    try:
        config = record["config"]
        method = Method(record["method"], ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in config["model"].items()}),
                        TrainConfig(**config["train"]))
        return run_key(method, config["data"], record["seed"])
    except Exception:  # any config this checkout cannot build is one it keys differently
        return None


def _checked_runs(path, bundle: dict, results_dir: Path) -> list[tuple[Path, dict]]:
    """``(stem, sealed record)`` of each of the bundle's runs in ``results_dir``, or a one-line
    :class:`BundleError` for the first run that is not a valid record (its fields, its file name,
    its key), before anything is written."""
    runs = bundle["runs"]
    if not runs:
        raise BundleError(f"{path} holds no runs: nothing imported; export a study that has trained runs")
    out, seen = [], {}
    for i, run in enumerate(runs):
        try:
            record = seal_record(run, None)
            check_record(record, run.get("key"))
            stem = run_stem(results_dir, run["method"], run["key"])
        except ValueError as err:  # RecordError, or a name or key that cannot name a file
            raise BundleError(f"{path}: {_run_name(i, run)}: {err}: nothing imported; export the bundle "
                              f"again") from None
        if stem.name in seen:
            raise BundleError(f"{path}: {_run_name(i, run)} is also run {seen[stem.name]}: nothing imported; "
                              f"export the bundle again")
        seen[stem.name] = i
        out.append((stem, record))
    stale = [run for run in runs if _recomputed_key(run) != run["key"]]
    if stale:
        made = _shown(bundle["provenance"].get("commit", "an unknown commit"))
        raise BundleError(
            f"{path}: {len(stale)} of {len(runs)} runs are keyed differently by this checkout (bundle cache "
            f"version {_shown(bundle.get('cache_version'))}, this checkout {CACHE_VERSION}; made at {made}): "
            f"nothing imported; import it with that commit's code, or train the study again with this one")
    return out


def _provenance_name(path, provenance: dict) -> str:
    """The file name the bundle's provenance is kept under, or a one-line :class:`BundleError`."""
    profile = provenance.get("profile", "study")
    if not isinstance(profile, str) or not _PROFILE.fullmatch(profile):
        raise BundleError(f"{path}: its provenance names profile {_shown(profile)}, which cannot begin a file "
                          f"name (letters, digits, _ + - only): nothing imported; export the bundle again")
    return f"{profile}-{canonical_sha256(provenance)[:12]}.json"


def import_runs(path, results_dir) -> str:
    """Put a bundle's runs into ``results_dir``; return the one-line summary. Refuses the whole
    bundle in one :class:`BundleError` line, before writing anything, if it was edited after export,
    a run is not a valid record or names a file outside the folder, or any record's key differs
    from the one this checkout computes for its configuration (a bundle from another version of
    the code). Runs already in the folder are kept; the others are moved in only when all are
    written; a failure after that says how many were moved in."""
    bundle = read_bundle(path)
    results_dir = Path(results_dir)
    runs = _checked_runs(path, bundle, results_dir)
    prov = bundle["provenance"]
    prov_path = results_dir / PROVENANCE_DIR / _provenance_name(path, prov)
    if not prov_path.resolve().is_relative_to(results_dir.resolve()):  # a link named "provenance"
        raise BundleError(f"{path}: its provenance would be written outside {results_dir} ({PROVENANCE_DIR} "
                          f"links elsewhere): nothing imported; remove that link")
    todo = [(stem, record) for stem, record in runs if not stem.with_suffix(".json").exists()]
    present = len(runs) - len(todo)
    moved = 0
    tmp = None
    try:
        prov_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=results_dir, prefix=".import-"))
        for stem, record in todo:  # all written before any is moved in
            (tmp / stem.name).with_suffix(".json").write_text(json.dumps(record), encoding="utf-8")
        (tmp / prov_path.name).write_text(json.dumps(prov, indent=1), encoding="utf-8")
        for stem, _ in todo:
            os.replace((tmp / stem.name).with_suffix(".json"), stem.with_suffix(".json"))
            moved += 1
        os.replace(tmp / prov_path.name, prov_path)
    except OSError as err:
        if not moved:
            raise BundleError(f"{write_failure(results_dir, err)}: nothing imported from {path}; free some space "
                              f"there or make it writable, then import again") from None
        what = f"{moved} of {len(todo)} runs" if moved < len(todo) else f"all {moved} runs but not their provenance"
        raise BundleError(f"{write_failure(results_dir, err)}: moved {what} of {path} in, so {results_dir} is "
                          f"now partial; fix that and import again (the runs moved in are kept)") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    source = (f"trained on {_shown(prov.get('device', '?'))} at {_shown(prov.get('date', '?'))}, "
              f"commit {_shown(prov.get('commit', '?'))}")
    if not todo:
        return f"all {present} runs of {path} are already in {results_dir}: nothing imported ({source})"
    already = f"; {present} were already there and were kept" if present else ""
    return f"imported {len(todo)} runs into {results_dir} from {path}{already} ({source})"


def read_provenance(results_dir, profile: str) -> list[dict]:
    """The provenance records of ``profile`` in a results folder (imported bundles, runner logs)."""
    folder = Path(results_dir) / PROVENANCE_DIR
    out = []
    for p in sorted(folder.glob(f"{profile}-*.json")) if folder.is_dir() else []:
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out
