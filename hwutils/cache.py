"""The cache of trained runs: one JSON record (History, errors, config) and one weight file per run.

A run is stored under ``<results_dir>/<method>-<key>.json`` and ``.pt``, where ``key`` is the hash
of everything that decides its outcome (:func:`hwutils.experiments.run_key`).

* A record proves what it is: it carries the record :data:`SCHEMA_VERSION`, its own ``key`` and
  ``method`` (which must give back its file name), the sha256 of its weight file
  (``weights_sha256``; ``null`` for a run imported without weights, which then has no ``.pt``) and
  the sha256 of its own content (``record_sha256``: every number, the config, the history and
  ``weights_sha256``). :func:`load_run` checks all of that, every field's type
  (:func:`check_record`) and, given the run's model, that the weights fit its architecture - before
  anything is used. So a record or weight file of another run in a run's place, or a record whose
  numbers were edited, is never loaded under its name. A record is rewritten only whole and
  re-sealed (:func:`update_record`).
* A run's files are named by :func:`run_stem`: one file-name component made of the method's name
  and the run's key, always inside the results folder, whatever the name (a bundle may carry any).
* A cached run that fails any check or cannot be read never blocks a build: :func:`load_run`
  names it in one warning line, moves its files aside to ``<file>.corrupt`` (``<file>.stale`` for
  a record of an older schema) and returns ``None``, so the caller retrains that run.
* Writes are atomic: each goes to a temporary file with a unique name in the same folder (so two
  processes writing the same run never share one), then is renamed over the final name. An
  interrupted build leaves either a whole file or none; concurrent writers leave a loadable run.
  A write that fails (disk full, read-only folder) is one :class:`CacheError` line naming the
  folder and, when the disk is full, how much was free.
* :func:`check_writable` checks a folder up front, before any training.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import torch

from .training import History

__all__ = ["SCHEMA_VERSION", "MAX_NAME_CHARS", "run_stem", "load_run", "run_problem", "save_run", "update_record", "seal_record",
           "canonical_sha256", "check_record", "atomic_write", "temporary_beside", "check_writable", "write_failure",
           "full_disk", "CacheError", "RecordError", "StaleRecordError"]

#: The format of a record. 2: records carry ``schema``, ``weights_sha256`` and are checked on load
#: (records without ``schema`` are older: set aside as stale and retrained). 3: and ``record_sha256``.
SCHEMA_VERSION = 3
#: The longest method name a run's file name is made of.
MAX_NAME_CHARS = 120

#: History fields a record must hold: without them the report cannot read the run.
_HISTORY_REQUIRED = ("train_loss", "val_loss", "val_error", "epoch_seconds", "best_epoch")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RUN_KEY = re.compile(r"[0-9a-f]{16}")
_RESULTS_FIX = "or set results_dir to a folder elsewhere (e.g. -p results_dir /tmp/hw3-results)"


class CacheError(RuntimeError):
    """The results folder cannot be used; the message names it and the fix."""


class RecordError(ValueError):
    """A run's record is not a valid record of that run; the message says what is wrong (one line)."""


class StaleRecordError(RecordError):
    """A run's record was written in another record schema (an older hwutils)."""


def run_stem(results_dir, method_name: str, key: str) -> Path:
    """Path of a run's files without suffix: ``<results_dir>/<method>-<key>``, one file-name
    component inside ``results_dir``. In the name a space becomes "_", "+" "p" and "." "_" (the
    files are ``stem.with_suffix(".json")``, which would cut a name at its dot and so drop the key);
    a name that could make a path - empty, with "/", "\\" or a control character, starting with "."
    or "-", over :data:`MAX_NAME_CHARS` characters - or a key that is not 16 hex digits is a
    one-line :class:`ValueError`."""
    problem = _name_problem(method_name)
    if problem:
        raise ValueError(f"method name {_shown(method_name)} cannot name a run's files ({problem}): rename the "
                         f"method (no / \\ or control characters, not starting with . or -, at most "
                         f"{MAX_NAME_CHARS} characters)")
    if not isinstance(key, str) or not _RUN_KEY.fullmatch(key):
        raise ValueError(f"run key {_shown(key)} is not 16 hex digits: not a key hwutils.experiments.run_key gives")
    name = method_name.replace(' ', '_').replace('+', 'p').replace('.', '_')
    stem = Path(results_dir) / f"{name}-{key}"
    root = Path(results_dir).resolve()
    if not stem.resolve().is_relative_to(root):  # a link in the folder that points elsewhere
        raise ValueError(f"the files of run {name}-{key} would lie outside {root}: remove that link there")
    return stem


def _name_problem(name) -> str | None:
    """Why ``name`` cannot be made into a file name, or None."""
    if not isinstance(name, str):
        return f"it is not text but {_type_name(name)}"
    if not name:
        return "it is empty"
    bad = next((c for c in name if c in "/\\" or unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        return f"it contains {bad!r}"
    if name[0] in ".-":
        return f"it starts with {name[0]!r}"
    if len(name) > MAX_NAME_CHARS:
        return f"it has {len(name)} characters"
    return None


def _stem_key(stem: Path) -> str:
    return stem.name.rsplit("-", 1)[-1]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file (mkstemp's are private, 0600)


def temporary_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new, empty file with a unique name in ``path``'s folder (``.<name>.<random><suffix>``), with
    the permissions a new file gets there: to be renamed over ``path`` once it is whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    return Path(tmp)


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a uniquely named temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        write(Path(tmp))
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a half-written one
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def full_disk(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota) is full."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def write_failure(folder, err: OSError) -> str:
    """What a failed write into ``folder`` means, in words: "no space left on device writing
    <folder> (N MB free)", or "cannot write <folder>: <reason>"."""
    folder = Path(folder)
    if full_disk(err):
        try:
            mb = shutil.disk_usage(folder).free / 2**20
            free = f"{mb:.1f} MB free" if mb < 10 else f"{mb:.0f} MB free"
        except OSError:
            free = "free space unknown"
        quota = " (disk quota)" if err.errno == errno.EDQUOT else ""
        return f"no space left on device writing {folder} ({free}){quota}"
    return f"cannot write {folder}: {err.strerror or type(err).__name__}"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())  # one line
    if len(text) > 100 and ". " in text:  # torch's messages go on after the first sentence
        text = text.split(". ")[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class _Unusable(Exception):
    """Internal: the cached run ``path`` cannot be used; ``problem`` completes "cached run <path> ..."."""

    def __init__(self, path: Path, problem: str, suffix: str = ".corrupt", retry: bool = False):
        super().__init__(problem)
        self.path, self.problem, self.suffix, self.retry = path, problem, suffix, retry


def _set_aside(bad: _Unusable, *paths: Path) -> None:
    """Report ``bad`` in one line and rename each of ``paths`` that exists to ``<path><suffix>``."""
    moved, failed = [], []
    for p in paths:
        try:
            os.replace(p, p.with_name(p.name + bad.suffix))
            moved.append(p)
        except FileNotFoundError:
            pass
        except OSError as err:
            failed.append(f"{p} ({err.strerror})")
    what = (f"moving it aside to {bad.path}{bad.suffix}" if moved
            else "could not move it aside: " + ", ".join(failed) if failed else "it is gone")
    _warn(f"cached run {bad.path} {bad.problem}; {what} and retraining")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_history(history: dict) -> None:
    fields = {f.name: f for f in dataclasses.fields(History)}
    unknown = sorted(set(history) - set(fields))
    if unknown:
        names = ", ".join(n if n.isprintable() and len(n) <= 40 else _shown(n) for n in unknown)
        raise RecordError(f"its history has unknown field(s) {names}")
    missing = [name for name in _HISTORY_REQUIRED if name not in history]
    if missing:
        raise RecordError(f"its history lacks {', '.join(missing)}")
    for name, value in history.items():
        f = fields[name]
        if f.default_factory is list:
            if not isinstance(value, list) or not all(_is_number(v) for v in value):
                raise RecordError(f"its history's {name} is not a list of numbers")
        elif isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise RecordError(f"its history's {name} is a {_type_name(value)}, not true/false")
        elif isinstance(f.default, int) and (not isinstance(value, int) or isinstance(value, bool)):
            raise RecordError(f"its history's {name} is a {_type_name(value)}, not an integer")
    if not 0 <= history["best_epoch"] <= len(history["val_error"]):
        raise RecordError(f"its history's best_epoch {history['best_epoch']} is not one of its "
                          f"{len(history['val_error'])} epochs")


def check_record(record, expected_key: str) -> None:
    """Raise a one-line :class:`RecordError` unless ``record`` is a valid record of the run
    ``expected_key``: this :data:`SCHEMA_VERSION` (else :class:`StaleRecordError`), its ``key``,
    and every field the report reads, of the right type - ``method`` (text), ``seed`` (integer),
    ``val_error`` (number), ``test_error`` (number or null), ``config`` (with ``model`` and
    ``train``), ``history`` (a :class:`~hwutils.training.History`), ``weights_sha256`` (64 hex
    digits, or null for a run without weights), and last ``record_sha256``, which must be the
    sha256 of the rest of the record (:func:`seal_record`). Other fields are allowed."""
    if not isinstance(record, dict):
        raise RecordError(f"the record is a JSON {_type_name(record)}, not an object")
    if "schema" not in record:
        raise StaleRecordError(f"has no record schema version (written by an older hwutils; this one "
                               f"writes version {SCHEMA_VERSION})")
    if record["schema"] != SCHEMA_VERSION:
        raise StaleRecordError(f"has record schema {_shown(record['schema'])}, this hwutils reads "
                               f"version {SCHEMA_VERSION}")
    kinds = {"key": (str, "text"), "method": (str, "text"), "seed": (int, "an integer"),
             "val_error": (_is_number, "a number"), "test_error": (lambda v: v is None or _is_number(v),
                                                                     "a number or null"),
             "config": (dict, "an object"), "history": (dict, "an object"),
             "weights_sha256": (lambda v: v is None or (isinstance(v, str) and _SHA256.fullmatch(v)),
                                "64 hex digits or null"),
             "record_sha256": (lambda v: isinstance(v, str) and _SHA256.fullmatch(v), "64 hex digits")}
    missing = [name for name in kinds if name not in record]
    if missing:
        raise RecordError(f"lacks {', '.join(missing)}")
    for name, (kind, words) in kinds.items():
        value = record[name]
        if isinstance(kind, type):
            ok = isinstance(value, kind) and not isinstance(value, bool)
        else:
            ok = kind(value)
        if not ok:
            shown = "null" if value is None else f"{_type_name(value)} {_shown(value)}"
            raise RecordError(f"its {name} is {shown}, not {words}")
    if record["key"] != expected_key:
        raise RecordError(f"its key is {_shown(record['key'])}, not {expected_key}: the record of another run")
    for part in ("model", "train"):
        if not isinstance(record["config"].get(part), dict):
            raise RecordError(f"its config lacks the {part} settings")
    _check_history(record["history"])
    if _record_digest(record) != record["record_sha256"]:
        raise RecordError("its content does not match its record_sha256: edited or damaged")


def canonical_sha256(value) -> str:
    """The sha256 of ``value``'s canonical JSON (keys sorted, no spaces), as it reads back from a JSON
    file (a tuple is a list, a key is text), so a value and its copy read back have one digest."""
    value = json.loads(json.dumps(value))
    return _digest(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def _record_digest(record: dict) -> str:
    return canonical_sha256({k: v for k, v in record.items() if k != "record_sha256"})


def seal_record(record: dict, weights_sha256: str | None) -> dict:
    """``record`` as it is stored: with this :data:`SCHEMA_VERSION`, ``weights_sha256`` and the
    ``record_sha256`` of all of that (any older ``record_sha256`` replaced)."""
    sealed = {k: v for k, v in record.items() if k != "record_sha256"}
    sealed.update(schema=SCHEMA_VERSION, weights_sha256=weights_sha256)
    sealed["record_sha256"] = _record_digest(sealed)
    return sealed


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_run(stem: Path, model):
    """``(record, state)`` of the run at ``stem``, ``None`` when it is not (or no longer) there, or
    :class:`_Unusable`."""
    json_path, weights_path = stem.with_suffix(".json"), stem.with_suffix(".pt")
    try:
        text = json_path.read_text(encoding="utf-8")
    except FileNotFoundError:  # not cached, or another process set it aside just now
        return None
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise _Unusable(json_path, f"is unreadable ({_reason(err)})") from None
    try:
        record = json.loads(text)
    except ValueError as err:
        raise _Unusable(json_path, f"is unreadable ({_reason(err)})") from None
    try:
        check_record(record, _stem_key(stem))
    except StaleRecordError as err:
        raise _Unusable(json_path, str(err), suffix=".stale") from None
    except RecordError as err:
        what = "is unreadable" if not isinstance(record, dict) else "fails its check"
        raise _Unusable(json_path, f"{what} ({err})") from None
    try:
        own = run_stem(stem.parent, record["method"], record["key"])
    except ValueError as err:
        raise _Unusable(json_path, f"fails its check ({err})") from None
    if own != stem:
        raise _Unusable(json_path, f"fails its check (it is the record of method {_shown(record['method'])}, "
                                   f"not of this file's)")
    if record["weights_sha256"] is None:  # imported without weights
        return record, None
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        if not json_path.exists():  # another process set the run aside just now
            return None
        problem = f"fails its check (its weight file {weights_path.name} is missing)"
        raise _Unusable(json_path, problem) from None
    except OSError as err:
        raise _Unusable(weights_path, f"is unreadable ({_reason(err)})") from None
    if _digest(data) != record["weights_sha256"]:  # or another process is between its two writes
        raise _Unusable(weights_path, "fails its check (its sha256 is not the one its record names: "
                                      "the weights of another run, or damaged)", retry=True)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu")
        if not isinstance(state, Mapping):
            raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    except Exception as err:  # torch raises RuntimeError (PytorchStreamReader), EOFError, UnpicklingError...
        raise _Unusable(weights_path, f"is unreadable ({_reason(err)})") from None
    if model is not None:
        _load_into(model, state, weights_path)
    return record, state


def _load_into(model: torch.nn.Module, state: Mapping, weights_path: Path) -> None:
    """``model.load_state_dict(state)``, or :class:`_Unusable` naming the first misfit."""
    expected = model.state_dict()
    problem = None
    if set(state) != set(expected):
        odd = sorted(set(state) ^ set(expected))
        problem = f"its weights are not this model's (tensors {', '.join(odd[:3])} differ)"
    else:
        for name, tensor in expected.items():
            got = state[name]
            if not isinstance(got, torch.Tensor) or got.shape != tensor.shape:
                shape = "x".join(map(str, got.shape)) if isinstance(got, torch.Tensor) else type(got).__name__
                problem = (f"its weights are of another architecture ({name} is {shape}, this run's model "
                           f"needs {'x'.join(map(str, tensor.shape))})")
                break
    try:
        if problem is None:
            model.load_state_dict(state)
    except RuntimeError as err:
        problem = f"its weights do not fit this run's model ({_reason(err)})"
    if problem is not None:
        raise _Unusable(weights_path, f"fails its check ({problem})")


def load_run(stem: Path, model: torch.nn.Module | None = None, *, set_aside: bool = True):
    """``(record, state_dict)`` of a cached run, or ``None`` when it is not cached or unusable.

    ``state_dict`` is ``None`` for a run imported without weights (``weights_sha256`` null). With
    ``model``, the weights are also loaded into it, checked against its architecture. A run that
    cannot be read or fails a check (:func:`check_record`, with its ``record_sha256``; its file name,
    its weights' sha256, the architecture) is named in one warning line on stderr and its files are renamed to
    ``<file>.corrupt`` (a record of an older schema: ``<file>.stale``); the caller then retrains it.
    ``set_aside=False`` (a dry command) leaves every file as it is and returns ``None`` without a word:
    :func:`run_problem` says what is wrong.
    """
    stem = Path(stem)
    for attempt in range(2):
        try:
            return _read_run(stem, model)
        except _Unusable as bad:
            if bad.retry and attempt == 0:
                time.sleep(0.1)  # a writer puts the weights first, the record a moment later
                continue
            if set_aside:
                _set_aside(bad, stem.with_suffix(".json"), stem.with_suffix(".pt"))
            return None


def run_problem(stem: Path) -> str | None:
    """Why the cached run at ``stem`` cannot be used ("not cached", or "<file> <problem>"), or None
    when it can; reads only, changes nothing (for dry commands: estimates, plans, exports)."""
    stem = Path(stem)
    try:
        found = _read_run(stem, None)
    except _Unusable as bad:
        return f"{bad.path.name} {bad.problem}"
    return "not cached" if found is None else None


def save_run(stem: Path, record: dict, state_dict: Mapping | None) -> None:
    """Store a run: weights first, then the record, sealed (:func:`seal_record`; ``state_dict``
    ``None``: a record without weights). A record that is not a valid record of the run at ``stem``
    is a :class:`RecordError`; a write that fails, a one-line :class:`CacheError` (nothing
    half-written is left)."""
    data = None
    if state_dict is not None:
        buffer = io.BytesIO()  # bytes, not a file: the same weights give the same bytes and digest
        torch.save(dict(state_dict), buffer)
        data = buffer.getvalue()
    _store(Path(stem), seal_record(record, None if data is None else _digest(data)), data)


def update_record(stem: Path, record: dict) -> None:
    """Rewrite the record of the cached run at ``stem`` (with a test error or measurements added),
    sealed again with its own ``weights_sha256`` (its weights are unchanged); errors as :func:`save_run`."""
    if "weights_sha256" not in record:
        raise RecordError("lacks weights_sha256: update the record load_run returned")
    _store(Path(stem), seal_record(record, record["weights_sha256"]), None)


def _store(stem: Path, record: dict, weights: bytes | None) -> None:
    """Check the sealed ``record`` belongs at ``stem``, then write ``weights`` (if any) and it."""
    check_record(record, _stem_key(stem))
    if run_stem(stem.parent, record["method"], record["key"]) != stem:
        raise RecordError(f"a record of method {record['method']!r} does not belong at {stem}")
    text = json.dumps(record)
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        if weights is not None:
            atomic_write(stem.with_suffix(".pt"), lambda p: p.write_bytes(weights))
        atomic_write(stem.with_suffix(".json"), lambda p: p.write_text(text, encoding="utf-8"))
    except OSError as err:
        fix = "free some space there" if full_disk(err) else "make it writable"
        raise CacheError(f"{write_failure(stem.parent, err)}; {fix}, {_RESULTS_FIX}") from None


def check_writable(folder, what: str = "results_dir", fix: str | None = None) -> Path:
    """The absolute ``folder`` if files can be written there (it, or the nearest folder above it that
    exists, accepts a new file); else a one-line :class:`CacheError` with the path and the fix
    (``fix``; default: set ``what`` to a writable folder). Nothing is created."""
    folder = Path(os.path.abspath(os.path.expanduser(folder)))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = fix or f"make it writable, or set {what} to a writable folder (e.g. -p {what} /tmp/hw3-results)"
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
