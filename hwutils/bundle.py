"""Portable results: what the report needs from a results folder, in one file that travels.

A study trained on one machine (a GPU node) is rendered on another (a laptop): :func:`export_runs`
writes the records of a study's runs - configs, histories (the per-minibatch loss averaged down
to at most :data:`MAX_ITER_POINTS` points) and the end-of-training measurements - and the
provenance of the run that trained them (device, date, commit, versions, wall time) into one
gzipped JSON file, without weights; :func:`import_runs` puts them into a results folder, where
the study loads them like any cached run and trains nothing.

Nothing is mixed silently: every record's key is recomputed from its configuration by this
checkout's code before anything is written, so a bundle made by a version whose runs are keyed
differently is refused as a whole; a run already in the folder is left as it is, and the summary
line says how many were.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

from .cache import SCHEMA_VERSION, RecordError, atomic_write, check_record, run_stem, save_run
from .experiments import CACHE_VERSION, Method, run_key
from .models import ModelConfig
from .training import History, TrainConfig

__all__ = ["BundleError", "export_runs", "import_runs", "read_bundle", "provenance", "read_provenance",
           "MAX_ITER_POINTS", "FORMAT"]

FORMAT = "hw3-results-bundle"
VERSION = 1
#: The per-minibatch training loss of a run is averaged down to at most this many points.
MAX_ITER_POINTS = 2_000
#: Where imported (and locally written) provenance records live inside a results folder.
PROVENANCE_DIR = "provenance"


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
    """A cached record as it travels: history coarsened, no weights. Numbers are kept as they are
    (rounding them would move a value the report prints across a rounding boundary)."""
    history = History.from_dict(record["history"]).coarsened(MAX_ITER_POINTS)
    out = {**record, "history": history.to_dict()}
    out.pop("weights_sha256", None)
    return out


def export_runs(records: list[dict], path, run_provenance: dict) -> dict:
    """Write ``records`` (cached run records) and ``run_provenance`` to the bundle ``path``
    (gzipped JSON); return a summary (runs, bytes)."""
    path = Path(path)
    bundle = {"format": FORMAT, "version": VERSION, "cache_version": CACHE_VERSION,
              "provenance": run_provenance, "runs": [_portable(r) for r in records]}
    payload = gzip.compress(json.dumps(bundle, separators=(",", ":")).encode("utf-8"), mtime=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_bytes(payload))
    except OSError as err:
        raise BundleError(f"cannot write the bundle {path}: {err.strerror or err}; choose another --out") from None
    return {"runs": len(records), "bytes": len(payload), "path": str(path)}


def read_bundle(path) -> dict:
    """A bundle's content, or a one-line :class:`BundleError` naming what is wrong with the file."""
    path = Path(path)
    try:
        bundle = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    except FileNotFoundError:
        raise BundleError(f"no bundle at {path}: give the file that python -m hwutils.study export wrote") from None
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as err:
        raise BundleError(f"{path} is not a results bundle ({type(err).__name__}): export it again") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT or not isinstance(bundle.get("runs"), list):
        raise BundleError(f"{path} is not a results bundle (no '{FORMAT}' header): export it again")
    if bundle.get("version") != VERSION:
        raise BundleError(f"{path} is bundle format {bundle.get('version')}, this checkout reads {VERSION}: "
                          f"import it with the version that wrote it")
    return bundle


def _recomputed_key(record: dict) -> str | None:
    """The key this checkout gives the record's configuration (None: it cannot read that config)."""
    try:
        config = record["config"]
        method = Method(record["method"], ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in config["model"].items()}),
                        TrainConfig(**config["train"]))
        return run_key(method, config["data"], record["seed"])
    except (KeyError, TypeError, ValueError):
        return None


def import_runs(path, results_dir) -> str:
    """Put a bundle's runs into ``results_dir``; return the one-line summary. Refuses the whole
    bundle, before writing anything, if any record's key differs from the one this checkout
    computes for its configuration (a bundle from another version of the code)."""
    bundle = read_bundle(path)
    runs = bundle["runs"]
    stale = [r for r in runs if not isinstance(r, dict) or _recomputed_key(r) != r.get("key")]
    if stale:
        made = bundle.get("provenance", {}).get("commit", "an unknown commit")
        raise BundleError(
            f"{path}: {len(stale)} of {len(runs)} runs are keyed differently by this checkout (bundle cache "
            f"version {bundle.get('cache_version')}, this checkout {CACHE_VERSION}; made at {made}): nothing "
            f"imported; import it with that commit's code, or train the study again with this one")
    for i, record in enumerate(runs):  # the cache's own checks, before anything is written
        try:
            check_record({**record, "schema": SCHEMA_VERSION, "weights_sha256": None}, record["key"])
        except RecordError as err:
            raise BundleError(f"{path}: run {i} ({record.get('method')}, seed {record.get('seed')}) {err}: nothing "
                              f"imported; export the bundle again") from None
    results_dir = Path(results_dir)
    added = present = 0
    for record in runs:
        stem = run_stem(results_dir, record["method"], record["key"])
        if stem.with_suffix(".json").exists():
            present += 1
            continue
        save_run(stem, record, None)
        added += 1
    prov = bundle.get("provenance", {})
    digest = hashlib.sha256(json.dumps(prov, sort_keys=True).encode()).hexdigest()[:12]
    (results_dir / PROVENANCE_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(results_dir / PROVENANCE_DIR / f"{prov.get('profile', 'study')}-{digest}.json",
                 lambda p: p.write_text(json.dumps(prov, indent=1), encoding="utf-8"))
    source = f"trained on {prov.get('device', '?')} at {prov.get('date', '?')}, commit {prov.get('commit', '?')}"
    if not added:
        return f"all {present} runs of {path} are already in {results_dir}: nothing imported ({source})"
    already = f"; {present} were already there and were kept" if present else ""
    return f"imported {added} runs into {results_dir} from {path}{already} ({source})"


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
