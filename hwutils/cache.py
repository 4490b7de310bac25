"""The cache of trained runs: one JSON record (History, errors, config) and one weight file per run.

A run is stored under ``<results_dir>/<method>-<key>.json`` and ``.pt``, where ``key`` is the hash
of everything that decides its outcome (:func:`hwutils.experiments.run_key`). Writes are atomic
(temporary file + rename), so an interrupted build leaves either a whole run or none.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["run_stem", "load_run", "save_run", "atomic_write"]


def run_stem(results_dir, method_name: str, key: str) -> Path:
    """Path of a run's files without suffix: ``<results_dir>/<method>-<key>``."""
    return Path(results_dir) / f"{method_name.replace(' ', '_').replace('+', 'p')}-{key}"


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file, then rename it to ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp)
    os.replace(tmp, path)  # an interrupted run leaves no half-written result behind


def load_run(stem: Path):
    """``(record, state_dict)`` of a cached run, or ``None`` when it is not cached."""
    json_path, weights_path = stem.with_suffix(".json"), stem.with_suffix(".pt")
    if not (json_path.exists() and weights_path.exists()):
        return None
    record = json.loads(json_path.read_text())
    return record, torch.load(weights_path, map_location="cpu")


def save_run(stem: Path, record: dict, state_dict: dict) -> None:
    """Store a run: weights first, then the record (a record without weights never exists)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(stem.with_suffix(".pt"), lambda p: torch.save(state_dict, p))
    atomic_write(stem.with_suffix(".json"), lambda p: p.write_text(json.dumps(record)))
