"""The cache of trained runs: one JSON record (History, errors, config) and one weight file per run.

A run is stored under ``<results_dir>/<method>-<key>.json`` and ``.pt``, where ``key`` is the hash
of everything that decides its outcome (:func:`hwutils.experiments.run_key`).

* Writes are atomic: each goes to a temporary file with a unique name in the same folder (so two
  processes writing the same run never share one), then is renamed over the final name. An
  interrupted build leaves either a whole file or none; concurrent writers leave a loadable run.
* A cached run that cannot be read (truncated or corrupt JSON or weights) never blocks a build:
  :func:`load_run` names it in one warning line, moves its files aside to ``<file>.corrupt`` and
  returns ``None``, so the caller retrains that run.
* :func:`check_writable` checks a results folder up front, before any training.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["run_stem", "load_run", "save_run", "atomic_write", "check_writable", "CacheError"]


class CacheError(RuntimeError):
    """The results folder cannot be used; the message names it and the fix."""


def run_stem(results_dir, method_name: str, key: str) -> Path:
    """Path of a run's files without suffix: ``<results_dir>/<method>-<key>``."""
    return Path(results_dir) / f"{method_name.replace(' ', '_').replace('+', 'p')}-{key}"


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a uniquely named temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a half-written one
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())  # one line
    if len(text) > 100 and ". " in text:  # torch's messages go on after the first sentence
        text = text.split(". ")[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _set_aside(bad: Path, reason: str, *paths: Path) -> None:
    """Report ``bad`` in one line and rename each of ``paths`` that exists to ``<path>.corrupt``."""
    moved, failed = [], []
    for p in paths:
        try:
            os.replace(p, p.with_name(p.name + ".corrupt"))
            moved.append(p)
        except FileNotFoundError:
            pass
        except OSError as err:
            failed.append(f"{p} ({err.strerror})")
    what = (f"moving it aside to {bad}.corrupt" if moved else "could not move it aside: " + ", ".join(failed)
            if failed else "it is gone")
    _warn(f"cached run {bad} is unreadable ({reason}); {what} and retraining")


def load_run(stem: Path):
    """``(record, state_dict)`` of a cached run, or ``None`` when it is not cached or unreadable.

    An unreadable run (truncated/corrupt JSON or weights, a record that is not a JSON object) is
    named in one warning line on stderr and its files are renamed to ``<file>.corrupt``; the caller
    then retrains it.
    """
    stem = Path(stem)
    json_path, weights_path = stem.with_suffix(".json"), stem.with_suffix(".pt")
    if not (json_path.exists() and weights_path.exists()):
        return None
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError(f"the record is a JSON {type(record).__name__}, not an object")
    except FileNotFoundError:  # another process set it aside or replaced it just now
        return None
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        _set_aside(json_path, _reason(err), json_path, weights_path)
        return None
    try:
        state = torch.load(weights_path, map_location="cpu")
        if not isinstance(state, Mapping):
            raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    except FileNotFoundError:
        return None
    except Exception as err:  # torch raises RuntimeError (PytorchStreamReader), EOFError, UnpicklingError...
        _set_aside(weights_path, _reason(err), json_path, weights_path)
        return None
    return record, state


def save_run(stem: Path, record: dict, state_dict: dict) -> None:
    """Store a run: weights first, then the record (a record without weights never exists)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(stem.with_suffix(".pt"), lambda p: torch.save(state_dict, p))
    atomic_write(stem.with_suffix(".json"), lambda p: p.write_text(json.dumps(record), encoding="utf-8"))


def check_writable(folder, what: str = "results_dir") -> Path:
    """The absolute ``folder`` if runs can be written there (it, or the nearest folder above it that
    exists, accepts a new file); else a one-line :class:`CacheError` with the path and the fix.
    Nothing is created."""
    folder = Path(os.path.abspath(os.path.expanduser(folder)))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = f"make it writable, or set {what} to a writable folder (e.g. -p {what} /tmp/hw3-results)"
    if not existing.is_dir():
        raise CacheError(f"{what} {folder} cannot be created: {existing} is a file, not a folder; {fix}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        where = "" if existing == folder else f" (it does not exist yet, and its parent {existing} is not writable)"
        raise CacheError(f"{what} {folder} is not writable{where}: {err.strerror or err}; {fix}") from None
    return folder
