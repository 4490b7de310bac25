"""What a build will cost, before it starts: each notebook's planned run-steps and their time on
this machine, measured just now, and a stop when the plan is far beyond its profile's own.

``make report`` prints one line per notebook that trains (Part 2's point-cloud runs, Part 3's
study: :meth:`hwutils.study.Study.estimate`, the same plan its runner trains) and refuses, in one
line naming ``CONFIRM=1``, a plan of at least :data:`FAR_BEYOND` times the profile's own run-steps
or one estimated at :data:`LONG_SECONDS` or more. A plan whose networks cannot fit in this machine's
memory (:func:`memory_check`) is refused before anything is timed, CONFIRM or not; the headless
runner (:mod:`hwutils.runner`) makes the same check.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .study import busy_note, duration

__all__ = ["NotebookPlan", "plan_of", "too_costly", "FAR_BEYOND", "LONG_SECONDS", "MemoryRefusal", "training_bytes",
           "available_bytes", "memory_check", "study_memory_check"]

#: A plan this many times its profile's own run-steps needs an explicit go-ahead.
FAR_BEYOND = 10
#: So does a plan estimated to take this long (seconds) on this machine.
LONG_SECONDS = 2 * 3600


#: Copies of each weight a run holds: the weights, their gradient, the momentum, the best epoch's weights.
WEIGHT_COPIES = 4
#: Copies of each unit's value per example a step holds: input or pre-activation, activation, dropout
#: mask, gradient.
ACTIVATION_COPIES = 4
#: MNIST's images, held on the device once per data set the study uses (final, search, standardized).
MNIST_IMAGES, MNIST_DATA_SETS = 70_000, 3


class MemoryRefusal(ValueError):
    """A plan whose networks cannot fit in memory: one line with the estimate and the fix."""


def training_bytes(hidden, batch_size: int, together: int, in_features: int, classes: int,
                   data_floats: int = 0) -> int:
    """Bytes (float32) that ``together`` stacked runs of an MLP ``in_features`` -> ``hidden`` ->
    ``classes`` hold while they train on minibatches of ``batch_size``: weights, gradients, momentum
    and the best epoch's copy, the activations of one step, and ``data_floats`` of data."""
    widths = (in_features, *hidden, classes)
    weights = sum(a * b + b for a, b in zip(widths, widths[1:]))
    per_run = WEIGHT_COPIES * weights + ACTIVATION_COPIES * batch_size * sum(widths)
    return 4 * (together * per_run + data_floats)


def available_bytes(device) -> tuple[int, str]:
    """Memory free for training on ``device`` and its name: the GPU's free memory
    (``torch.cuda.mem_get_info``), else the host's MemAvailable (/proc/meminfo; else all of its RAM)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"the GPU ({torch.cuda.get_device_name(device)})"
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "this machine"
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"


def memory_check(shapes, device, in_features: int, classes: int, data_floats: int = 0, fix: str = "") -> int:
    """The bytes the largest of ``shapes`` (``(hidden, batch_size, runs stacked)``) needs on
    ``device``; a one-line :class:`MemoryRefusal` with the estimate when that exceeds the memory
    available there. ``fix``: what to change, in the caller's words."""
    need, (hidden, batch, together) = max((training_bytes(h, b, k, in_features, classes, data_floats), (h, b, k))
                                          for h, b, k in shapes)
    have, where = available_bytes(device)
    if need > have:
        stacked = f", {together} runs stacked" if together > 1 else ""
        raise MemoryRefusal(f"hidden {list(hidden)} at batch {batch}{stacked} needs about {_gb(need)} (weights, "
                            f"gradients, momentum and activations) but {where} has {_gb(have)} available: "
                            f"{fix or 'use smaller hidden widths or batch size'}, or a machine with more memory")
    return need


def study_memory_check(study, fix: str = "") -> int:
    """:func:`memory_check` for every network of Part 3's plan, before any data is loaded or step timed."""
    import torch

    from .data import default_device
    from .experiments import MAX_TOGETHER
    from .profiles import mnist_methods

    device = torch.device(study.device or default_device())
    together = MAX_TOGETHER if device.type == "cuda" else 1  # the CPU trains runs one by one (prefixes aside)
    methods = [*mnist_methods(study.sizes), *mnist_methods(study.small), *study.recipe_methods]
    shapes = {(tuple(m.model.hidden), m.train.batch_size, together) for m in methods}
    side = study.downsample or 28
    return memory_check(shapes, device, side * side, 10, MNIST_DATA_SETS * MNIST_IMAGES * side * side, fix)


@dataclass(frozen=True)
class NotebookPlan:
    """One notebook's training: run-steps planned (all runs) and still to train, the profile's own
    planned run-steps, the estimated seconds, and the line the terminal shows."""

    notebook: str
    run_steps_planned: int
    run_steps_to_train: int
    profile_run_steps: int
    seconds: float
    text: str


def _point_cloud_runs(sizes) -> tuple[int, int, int]:
    """Part 2's runs: (trained one by one, stacked in the λ search, stacked as proximal L1)."""
    return 4 * len(sizes.seeds), (len(sizes.l1_grid) + len(sizes.l2_grid)) * len(sizes.sweep_seeds), len(sizes.seeds)


def _point_cloud_steps(sizes, values: dict) -> tuple[int, int]:
    """Part 2: (runs, run-steps): the λ search, the four methods and proximal L1, every seed."""
    n_train, batch = values.get("n_train", 100), values.get("batch_size", 25)
    runs = sum(_point_cloud_runs(sizes))
    return runs, runs * sizes.epochs * math.ceil(n_train / batch)


def plan_of(notebook: Path, values: dict, notebooks_dir: Path) -> NotebookPlan | None:
    """The training plan of one notebook with its papermill ``values``; None for one that trains
    nothing (Part 1)."""
    stem = Path(notebook).stem
    profile = values["profile"]
    if stem.startswith("02_"):
        from .experiments import MAX_TOGETHER
        from .profiles import point_cloud_profile
        from .threads import cpu_sample
        from .training import step_seconds

        began = cpu_sample()

        pick = {k: values.get(k) for k in ("epochs", "seeds", "l1_grid", "l2_grid")}
        sizes = point_cloud_profile(profile, **pick)
        runs, steps = _point_cloud_steps(sizes, values)
        _, own = _point_cloud_steps(point_cloud_profile(profile), {})
        per_run = steps // max(runs, 1)
        hidden, batch = tuple(values.get("hidden") or (256, 256)), values.get("batch_size", 25)
        timed: dict[int, float] = {}

        def step(k: int) -> float:  # seconds per step of k runs stacked, as the notebook trains them
            if k not in timed:
                timed[k] = step_seconds(hidden, batch, k, in_features=2, classes=2, device="cpu")
            return timed[k]

        alone, *stacked = _point_cloud_runs(sizes)
        chunks = [min(MAX_TOGETHER, n - i) for n in stacked for i in range(0, n, MAX_TOGETHER)]
        n_train = values.get("n_train", 100)
        memory_check({(hidden, min(batch, n_train), max(chunks, default=1))}, "cpu", 2, 2, 3 * n_train * 2,
                     "set smaller hidden or batch_size (-p hidden ..., -p batch_size ...)")
        seconds = per_run * (alone * step(1) + sum(step(k) for k in chunks))
        largest = max(chunks, default=1)
        together = (f" ({largest} runs stacked, as the λ search trains them: {1e3 * step(largest) / largest:.2f} ms "
                    f"per run)" if largest > 1 else "")
        text = (f"Part 2: {1e3 * step(1):.2f} ms per training step measured just now{together}; {runs} runs, "
                f"{steps:,} run-steps: about {duration(seconds)} if none is cached, validation passes "
                f"aside.{busy_note(began)}")
        return NotebookPlan(stem, steps, steps, own, seconds, text)
    if stem.startswith("03_"):
        from .study import Study

        options = {k: values.get(k) for k in ("downsample", "seeds", "epochs", "dropout_epochs", "hidden", "lr_grid",
                                              "precision")}
        results = notebooks_dir / values.get("results_dir", "../results")
        study = Study(profile, results_dir=results, progress=False, **options)
        study_memory_check(study, "set smaller hidden widths (-p hidden ...)")
        estimate = study.estimate()
        own = Study(profile, results_dir=None, progress=False).estimate_steps()
        text = f"Part 3: {estimate.text()}"
        return NotebookPlan(stem, estimate.run_steps_planned, estimate.run_steps, own, estimate.seconds, text)
    return None


def too_costly(plan: NotebookPlan) -> str | None:
    """Why ``plan`` needs ``CONFIRM=1`` (one line), or None."""
    ratio = plan.run_steps_planned / max(plan.profile_run_steps, 1)
    if plan.run_steps_to_train and ratio >= FAR_BEYOND:
        return (f"{plan.notebook} plans {ratio:.0f} times the run-steps of its profile (about "
                f"{duration(plan.seconds)} here): check the parameters, or run again with CONFIRM=1 to go ahead")
    if plan.seconds >= LONG_SECONDS:
        return (f"{plan.notebook} would train for about {duration(plan.seconds)} on this machine: run again with "
                f"CONFIRM=1 to go ahead (or a smaller profile)")
    return None


