"""Part 3 as a study: the six regularizers of Table 9 on MNIST, from the probes to the discussion.

One :class:`Study` holds a profile's sizes and the results folder, and its stages are plain
properties that train what they need (or load it from the cache) and remember the result:

1. **probes** - why the inputs are pixel intensities in [0, 1] (:attr:`Study.diagnosis`) and why
   every run warms up (:attr:`Study.warmup`);
2. **learning rates** - each method's learning rate searched with its constant on the search data
   (:attr:`Study.lr_search`), the grid extended outward while a choice lies at its edge;
3. **constants at the final budget** - the L1 and KL constants on top of the chosen L2, and every
   constant that tied on the search data (:attr:`Study.constant_search`), plus the momentum probe;
4. **final** - the methods with their chosen constants, the control, and the authors' recipe
   (:attr:`Study.final`).

The same stage builders make the plan that :meth:`Study.estimate` counts and that the headless
runner (``python -m hwutils.study``, :mod:`hwutils.runner`) trains, in parts with ``--shard i/n``.
Everything the report shows is read off the runs' records - History, errors and the end-of-training
measurements (:func:`hwutils.diagnostics.end_of_training`) - so a study renders from a results
folder imported from another machine (:mod:`hwutils.bundle`) without the weights.

This module imports torch, numpy and pandas only (no plotting, no Jupyter).
"""
from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field

from .cache import run_problem, run_stem
from .experiments import MAX_TOGETHER, Method, run_key, run_sweep, sweep_epochs
from .search import (FINAL_EXTENSIONS, GRID_EXTENSIONS, SearchOutcome, choices_at_edge, edge_decisions, extend_grid,
                     grid_fields, own_field, runs_per_value, search_candidates, search_choices, switched_off,
                     versus_reference)
from .profiles import (DIAGNOSIS_LR_FROM, PROBE_MOMENTUM, WARMUP_PROBE, authors_recipe_methods, final_methods, inherit_l2, mnist_methods, mnist_profile,
                       mnist_search_grids, mnist_splits)

__all__ = ["Study", "StudyResults", "Stage", "Batch", "Estimate", "shard_jobs", "busy_note", "duration", "ShardsPending",
           "PENDING_EXIT"]



# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Batch:
    """Runs trained on one data set with one set of options: one :func:`run_sweep`."""

    label: str
    methods: tuple[Method, ...]
    seeds: tuple[int, ...]
    data: str = "final"            # "final", "search" or "standardized" (the search data, standardized)
    on_nan: str = "raise"
    evaluate_test: bool = False

    def jobs(self) -> list[tuple[Method, int]]:
        return [(m, s) for m in self.methods for s in self.seeds]


@dataclass(frozen=True)
class Stage:
    """Runs whose configurations are all known once the stages before it are done."""

    name: str
    batches: tuple[Batch, ...]

    def jobs(self) -> list[tuple[int, Method, int]]:
        """``(batch index, method, seed)`` of every run of the stage, in order."""
        return [(b, m, s) for b, batch in enumerate(self.batches) for m, s in batch.jobs()]


def shard_jobs(stage: Stage, steps, index: int, count: int) -> list[tuple[int, Method, int]]:
    """The ``index``-th of ``count`` disjoint parts of a stage's runs (together: all of them),
    balanced by run-steps: the longest runs are dealt first, each to the part with the least work
    so far. ``steps(batch, method)``: the run-steps of one run."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index + 1}/{count} does not exist: use i/n with 1 <= i <= n")
    jobs = stage.jobs()
    cost = [steps(stage.batches[b], m) for b, m, _ in jobs]
    load, owner = [0] * count, [0] * len(jobs)
    for j in sorted(range(len(jobs)), key=lambda j: (-cost[j], j)):
        owner[j] = min(range(count), key=lambda part: (load[part], part))
        load[owner[j]] += cost[j]
    return [job for job, part in zip(jobs, owner) if part == index]


@dataclass(frozen=True)
class Estimate:
    """Run-steps of a plan and the time they take on this machine, measured just now."""

    runs: int
    runs_cached: int
    run_steps: int                 # of the runs still to train
    run_steps_planned: int         # of every run of the plan, cached or not
    seconds: float
    per_step_ms: float             # a typical step of one run, as measured (the largest shape's)
    device: str
    together: int                  # runs per stacked step where that pays (1 on the CPU)
    extensions: int                # runs the grid extensions may add (not counted above)
    busy: str = ""                 # non-empty when the machine was busy while measuring
    unusable: tuple = ()           # "file: problem" of cached runs that cannot be used (retrained)

    @property
    def minutes(self) -> float:
        return self.seconds / 60

    def text(self) -> str:
        """One paragraph for the report and the terminal."""
        stacked = f", {self.together} runs stacked per step" if self.together > 1 else ""
        todo = self.runs - self.runs_cached
        extra = (f" Grid extensions, where a choice lands at an edge, may add up to {self.extensions} runs."
                 if self.extensions else "")
        unusable = ""
        if self.unusable:
            unusable = (f" {len(self.unusable)} cached run{'s' if len(self.unusable) > 1 else ''} cannot be used "
                        f"({'; '.join(self.unusable[:3])}{' ...' if len(self.unusable) > 3 else ''}): the next "
                        f"train retrains {'them' if len(self.unusable) > 1 else 'it'}.")
        if todo == 0:
            return f"All {self.runs} runs of the plan are in the cache: nothing to train."
        return (f"Measured just now: {self.per_step_ms:.2f} ms per training step per run on {self.device}"
                f"{stacked}.{self.busy} The plan has {self.runs} runs, {self.runs_cached} already in the cache; "
                f"the {todo} to train need {_count(self.run_steps)} run-steps: about "
                f"{duration(self.seconds)}, validation passes aside.{extra}{unusable}")


def _count(n: int) -> str:
    return f"{n / 1e6:,.2f} million" if n >= 100_000 else f"{n:,}"


def duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes" if seconds >= 90 else f"{seconds:.0f} s"


def busy_note(since=None) -> str:
    """A sentence when other processes kept the CPU busy while the step was timed (the estimate
    is then too high), else "". ``since``: a :func:`hwutils.threads.cpu_sample` taken when the
    timing began - the CPU that *other* processes took since then is what counts (the load average
    would count this process's own work, and that of a notebook that trained just before); without
    it (or without ``/proc/stat``), the load average."""
    from .threads import busy_elsewhere, cpu_sample

    now = cpu_sample() if since is not None else None
    if now is not None:
        taken, cores = busy_elsewhere(since, now), len(os.sched_getaffinity(0))
        if taken < 0.5:
            return ""
        return (f" Other processes kept {taken:.1f} of the {cores} cores busy while this was measured, so the "
                f"estimate is likely too high.")
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return ""
    if load < 0.75 * cores:
        return ""
    return (f" The machine was busy while this was measured (load {load:.1f} on {cores} cores), so the "
            f"estimate is likely too high.")


class ShardsPending(RuntimeError):
    """A shard has trained its part of a stage and the stage still lacks other shards' runs: the
    message names the stage and the missing runs (the runner exits with :data:`PENDING_EXIT`)."""

    def __init__(self, stage: str, missing, shard):
        self.stage, self.missing = stage, list(missing)
        first = ", ".join(f"{m.name} (seed {s})" for m, s in self.missing[:3])
        more = f" and {len(self.missing) - 3} more" if len(self.missing) > 3 else ""
        super().__init__(f"shard {shard[0] + 1}/{shard[1]}: its part of stage '{stage}' is done; the stage still "
                         f"needs {len(self.missing)} runs from the other shards: {first}{more}")


#: The runner's exit code when it waits for other shards' runs (EX_TEMPFAIL: run it again later).
PENDING_EXIT = 75


# --------------------------------------------------------------------------- the study
class Study:
    """Part 3 at one profile: sizes, data, the cache, and each stage's results (computed once).

    The keyword arguments are the notebook's parameters (``None``: from the profile). ``shard``
    ``(i, n)`` makes each stage train only its i-th part (0-based) and then wait until the other
    parts are in the cache (see :meth:`train_all`). ``device``: where the data and training live
    (default: CUDA when available). ``precision``: of every run's matrix products, "fp32", "tf32"
    (CUDA) or "bf16" (:mod:`hwutils.precision`; None: the device's default, TF32 on CUDA, FP32 on
    the CPU); a run at another precision than the default is another cached run. On CUDA the study
    sets PyTorch's float32 product precision to it, so that evaluations outside training use it too.
    """

    def __init__(self, profile: str = "quick", *, downsample=None, seeds=None, epochs=None,
                 dropout_epochs=None, hidden=None, lr_grid=None, results_dir="results", force: bool = False,
                 progress: bool = True, device=None, shard: tuple[int, int] = (0, 1), wait_seconds: float = 60.0,
                 precision: str | None = None):
        from .data import default_device
        from .precision import neutral, use_products

        self.profile = profile
        self.sizes = mnist_profile(profile, seeds=seeds, epochs=epochs, dropout_epochs=dropout_epochs,
                                   hidden=hidden, lr_grid=lr_grid)
        self.small = self.sizes.search_profile()
        self.downsample, self.device = downsample, device
        self.results_dir, self.force, self.progress = results_dir, force, progress
        self.shard, self.wait_seconds = tuple(shard), wait_seconds
        self.stage_log: list[tuple[str, float]] = []  # (stage, seconds) as each completes
        self.unusable: dict[str, str] = {}  # cached runs a dry walk found unusable: file name -> problem
        self._probes = self._lr_search = self._constant_search = self._momentum_probe = self._final_batches = None
        self.last_estimate: Estimate | None = None     # what estimate() said, to set beside the time it took
        self.started = time.perf_counter()
        where = device or default_device()
        self.precision = neutral(precision, where)  # None at the device's default: the runs' keys as before
        use_products(self.precision, where)

    # ------------------------------------------------------------------ data
    @functools.cached_property
    def data(self):
        """The final runs' data: training / validation / test splits of the profile."""
        return mnist_splits(self.sizes, self.downsample, device=self.device)

    @functools.cached_property
    def search_data(self):
        """The learning-rate search's data (a subset where the profile asks for one)."""
        return mnist_splits(self.small, self.downsample, device=self.device)

    @functools.cached_property
    def standardized_data(self):
        """The search data with standardized pixels: only for the input-scaling diagnosis."""
        return mnist_splits(self.small, self.downsample, device=self.device, pixels="standardized")

    def _data(self, which: str):
        return {"final": self.data, "search": self.search_data, "standardized": self.standardized_data}[which]

    @property
    def device_name(self) -> str:
        import torch

        device = self.data.train.X.device
        return (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU, {torch.get_num_threads()} threads")

    @property
    def device_description(self) -> str:
        """Where the runs train, with their products' precision: "CPU, 2 threads (FP32 matrix products)"."""
        from .precision import describe

        return f"{self.device_name} ({describe(self.precision, self.data.train.X.device)})"

    # ------------------------------------------------------------------ running a stage
    def _steps(self, batch: Batch, method: Method, epochs: int | None = None) -> int:
        """Run-steps of one run: epochs (``epochs``: those it trains itself, see
        :meth:`_batch_steps`) x minibatches per epoch (early stopping aside)."""
        n = {"final": self.sizes, "search": self.small, "standardized": self.small}[batch.data]
        images = n.train_subset or 50_000
        return (method.train.epochs if epochs is None else epochs) * math.ceil(images / method.train.batch_size)

    def _batch_steps(self, batch: Batch, jobs) -> list[int]:
        """Run-steps of each of ``jobs`` (``(method, seed)`` of ``batch``, trained in one sweep), the
        epochs some share counted once (:func:`~hwutils.experiments.sweep_epochs`)."""
        return [self._steps(batch, m, e) for (m, _), e in zip(jobs, sweep_epochs(jobs))]

    def _sweep(self, batch: Batch, jobs=None, train: bool = True) -> list:
        methods, seeds = batch.methods, batch.seeds
        common = dict(results_dir=self.results_dir, force=self.force, progress=self.progress,
                      on_nan=batch.on_nan, evaluate_test=batch.evaluate_test, desc=batch.label, train=train)
        if jobs is None:
            return run_sweep(methods, self._data(batch.data), seeds=seeds, **common)
        results = []
        for seed in dict.fromkeys(s for _, s in jobs):  # one sweep per seed: its methods train together
            mine = [m for m, s in jobs if s == seed]
            results += run_sweep(mine, self._data(batch.data), seeds=(seed,), **common)
        return results

    def _stem(self, batch: Batch, method: Method, seed: int):
        return run_stem(self.results_dir, method.name, run_key(method, self._data(batch.data).spec, seed))

    def _cached(self, batch: Batch, method: Method, seed: int) -> bool:
        """Whether the run's record is in the cache (a file test: cheap enough to poll)."""
        return bool(self.results_dir) and self._stem(batch, method, seed).with_suffix(".json").exists()

    def _usable(self, batch: Batch, method: Method, seed: int) -> bool:
        """Whether the run is in the cache and passes every check, read without changing anything; a
        run that is there but unusable is remembered in :attr:`unusable` (file name: problem)."""
        if not self.results_dir:
            return False
        stem = self._stem(batch, method, seed)
        problem = run_problem(stem)
        if problem not in (None, "not cached"):
            self.unusable[stem.name] = problem
        return problem is None

    def complete(self, stage: Stage) -> list[list]:
        """Every run of ``stage``, trained or loaded: one list of results per batch. With a shard
        ``(i, n)``, n > 1, this trains only the i-th part and waits for the others' runs to appear
        in the shared results folder before loading them all."""
        start = time.perf_counter()
        index, count = self.shard
        if count > 1:
            mine = shard_jobs(stage, self._steps, index, count)
            for b, batch in enumerate(stage.batches):
                jobs = [(m, s) for bb, m, s in mine if bb == b]
                if jobs:
                    self._sweep(batch, jobs)
            self._wait_for(stage)
        results = [self._sweep(batch) for batch in stage.batches]
        self.stage_log.append((stage.name, time.perf_counter() - start))
        return results

    def _wait_for(self, stage: Stage) -> None:
        """Return once every run of ``stage`` is in the cache; after ``wait_seconds`` without that,
        :class:`ShardsPending` names the stage and the runs still missing (a shard never waits for ever:
        the other shards may not be running, or may have died)."""
        deadline = time.perf_counter() + self.wait_seconds
        while True:
            missing = [(m, s) for b, m, s in stage.jobs() if not self._cached(stage.batches[b], m, s)]
            if not missing:
                return
            if time.perf_counter() >= deadline:
                raise ShardsPending(stage.name, missing, self.shard)
            time.sleep(min(2.0, max(0.0, deadline - time.perf_counter())))

    # ------------------------------------------------------------------ stage builders (the plan)
    def probe_stage(self) -> Stage:
        """The input-scaling diagnosis and the warm-up probe: independent of every choice."""
        lrs = tuple(lr for lr in self.sizes.lr_grid if lr >= DIAGNOSIS_LR_FROM)[:2] or (max(self.sizes.lr_grid),)
        probe = self._method(self._methods(self.small), "dropout + max-norm")
        diagnosis = tuple(probe.replace(lr=lr) for lr in lrs)
        l2 = self._method(self._methods(self.small), "L2").replace(lr=WARMUP_PROBE["lr"],
                                                                    epochs=WARMUP_PROBE["epochs"])
        warm = l2.train.warmup_epochs
        return Stage("probes", (
            Batch("diagnosis, [0, 1]", diagnosis, self.small.seeds, "search", on_nan="stop"),
            Batch("diagnosis, standardized", diagnosis, self.small.seeds, "standardized", on_nan="stop"),
            Batch("warm-up 0", (l2.replace(warmup_epochs=0.0),), WARMUP_PROBE["seeds"], "search", on_nan="stop"),
            Batch(f"warm-up {warm:g}", (l2,), WARMUP_PROBE["seeds"], "search", on_nan="stop"),
        ))

    def lr_stage(self, grid: dict, round_: int = 0) -> Stage:
        """Learning rate x constant for the methods of the learning-rate study, on the search data."""
        methods = self._methods(self.small)
        candidates = tuple(search_candidates(methods, grid, self.references(methods, grid)))
        name = "learning rates" + (f", grid extended ({round_})" if round_ else "")
        return Stage(name, (Batch("search", candidates, self.small.seeds, "search", on_nan="stop"),))

    def constant_methods(self, lr_chosen) -> list[Method]:
        """The methods whose constant is searched at the final budget: L2 + L1 and L2 + KL on top of
        the chosen L2, and each method whose constant tied on the search data, at its chosen learning
        rate - all at the final number of epochs."""
        budget = {m.name: m.train.epochs for m in mnist_methods(self.sizes)}
        l2 = self._method(lr_chosen, "L2")
        return [m.replace(epochs=budget[m.name]) for m in inherit_l2(lr_chosen, l2)]

    def constant_stage(self, methods, grid: dict, round_: int = 0) -> Stage:
        """The constants searched at the final budget (all training images, the final epochs), with
        their references. The chosen L2 at the final budget is L2 + L1's and L2 + KL's reference and a
        final run, and L2 + L1's candidates are it until their L1 switches on, so those epochs train
        once (:func:`~hwutils.experiments.prefix_key`)."""
        candidates = tuple(search_candidates(methods, grid, self.references(methods, grid)))
        name = "constants at the final budget" + (f", grid extended ({round_})" if round_ else "")
        return Stage(name, (Batch("constants", candidates, self.sizes.seeds, "final"),))

    def references(self, methods, grid: dict) -> dict:
        """Each searched method's reference, its regularizer switched off, at every learning rate its
        grid tries: L2 for L2 + L1 and L2 + KL; for the others the same network without the
        constraint or penalty - "no regularizer" (L2's and max-norm's, one run) or "dropout alone"."""
        out = {}
        for method in methods:
            if method.name not in grid:
                continue
            if method.name.startswith("L2 +"):
                out[method.name] = [self._method(methods, "L2")]
                continue
            fields = grid_fields(grid[method.name])
            dropout = bool(method.model.dropout_input or method.model.dropout_hidden)
            off = switched_off(method, own_field(fields), "dropout alone" if dropout else "no regularizer")
            out[method.name] = [off.replace(lr=lr) for lr in fields.get("lr", (method.train.lr,))]
        return out

    def momentum_stage(self, dropout_max_norm: Method) -> Stage:
        """Dropout + max-norm at a rate that kills units with momentum 0.9, with momentum 0.5."""
        slow = dropout_max_norm.replace(lr=self.high_lr, momentum=PROBE_MOMENTUM, epochs=self.small.dropout_epochs)
        return Stage("momentum probe", (Batch(f"momentum {PROBE_MOMENTUM:g}", (slow,), self.small.seeds, "search",
                                              on_nan="stop"),))

    def final_stage(self, chosen) -> Stage:
        """The six methods at the final budget with their chosen constants, the control, and the
        authors' recipe as configured (no search: it depends on no choice). The control and the
        recipe run the profile's own seeds for them where it sets fewer (``control_seeds``,
        ``recipe_seeds``)."""
        methods = tuple(final_methods(self.sizes, chosen))
        seeds, control = self.sizes.seeds, self.sizes.control_seeds or self.sizes.seeds
        final = [Batch("final runs", methods, seeds, "final", evaluate_test=True)]
        if tuple(control) != tuple(seeds):
            final = [Batch("final runs", methods[:-1], seeds, "final", evaluate_test=True),
                     Batch("control", methods[-1:], tuple(control), "final", evaluate_test=True)]
        recipe = Batch("authors' recipe", tuple(self.recipe_methods), tuple(self.sizes.recipe_seeds or seeds),
                       "final", on_nan="stop", evaluate_test=True)
        return Stage("final runs", (*final, recipe))

    @property
    def recipe_methods(self) -> list[Method]:
        """Dropout + max-norm as the authors configured it, and with the paper's B.1 values where the
        profile pays for it (:func:`hwutils.profiles.authors_recipe_methods`)."""
        methods = self._at_precision(authors_recipe_methods(self.sizes))
        return methods if self.sizes.paper_b1 else methods[:1]

    def _at_precision(self, methods) -> list[Method]:
        return list(methods) if self.precision is None else [m.replace(precision=self.precision) for m in methods]

    def _methods(self, sizes) -> list[Method]:
        """The six methods at ``sizes`` (:func:`hwutils.profiles.mnist_methods`) at the study's precision."""
        return self._at_precision(mnist_methods(sizes))

    @property
    def high_lr(self) -> float:
        """A learning rate that kills units at momentum 0.9 with dropout: 0.3, or the largest tried."""
        return 0.3 if 0.3 in self.sizes.lr_grid else max(self.sizes.lr_grid)

    @staticmethod
    def _method(methods, name: str) -> Method:
        by_name = {m.name: m for m in methods}
        if name not in by_name:
            raise KeyError(f"no method named {name!r}; the methods are: {', '.join(by_name)}")
        return by_name[name]

    def plan(self) -> list[Stage]:
        """Every stage with the runs it will train, without training anything. A search whose
        rounds are all in the cache is followed to its choices; the stages after one that is not
        are counted with the methods' defaults (the number of runs and their steps do not depend on
        the values chosen; only grid extensions add runs, see :attr:`Estimate.extensions`)."""
        stage1, stage2 = mnist_search_grids(self.sizes)
        stages = [self.probe_stage()]
        lr_stages, lr_outcome = self._search_rounds(self._methods(self.small), stage1, self.lr_stage, dry=True)
        stages += lr_stages
        lr_chosen, tied = (lr_outcome.chosen, lr_outcome.tied) if lr_outcome else (self._methods(self.small), {})
        methods = self.constant_methods(lr_chosen)
        grid2 = {**stage2, **tied}
        c_stages, c_outcome = ([self.constant_stage(methods, grid2)], None) if lr_outcome is None else \
            self._search_rounds(methods, grid2, lambda g, r: self.constant_stage(methods, g, r), dry=True,
                                extensions=FINAL_EXTENSIONS)
        stages += c_stages
        chosen = c_outcome.chosen if c_outcome else methods
        stages.append(self.momentum_stage(self._method(chosen, "dropout + max-norm")))
        stages.append(self.final_stage(chosen))
        return stages

    # ------------------------------------------------------------------ the estimate
    def estimate_steps(self) -> int:
        """Run-steps of the whole plan as the profile makes it (nothing loaded, nothing timed): what
        a build's plan is compared with."""
        stage1, stage2 = mnist_search_grids(self.sizes)
        methods = self.constant_methods(self._methods(self.small))
        stages = [self.probe_stage(), self.lr_stage(stage1), self.constant_stage(methods, stage2),
                  self.momentum_stage(self._method(methods, "dropout + max-norm")), self.final_stage(methods)]
        return sum(sum(self._batch_steps(batch, batch.jobs())) for st in stages for batch in st.batches)

    def estimate(self) -> Estimate:
        """The plan's run-steps and their time on this machine: each distinct step shape (network,
        minibatch, dropout, runs stacked) is timed once, just now, on random data."""
        from .threads import cpu_sample
        from .training import step_seconds

        began = cpu_sample()
        on_gpu = self.data.train.X.device.type == "cuda"
        features, classes = self.data.n_features, self.data.n_classes
        timed: dict[tuple, float] = {}
        runs = cached = planned = 0
        steps_total, seconds, seen = 0, 0.0, set()
        for stage in self.plan():
            todo: dict[tuple, list[int]] = {}
            for batch in stage.batches:
                fresh, new = [], []  # the batch's runs not planned before, and those of them to train
                for m, s in batch.jobs():
                    key = (batch.data, m.name, run_key(m, self._data(batch.data).spec, s))
                    if key in seen:  # the same run planned twice (a search's choice is a final run)
                        continue
                    seen.add(key)
                    fresh.append((m, s))
                    if self._usable(batch, m, s):
                        cached += 1
                    else:
                        new.append((m, s))
                runs += len(fresh)
                planned += sum(self._batch_steps(batch, fresh))
                for (m, _), steps in zip(new, self._batch_steps(batch, new)):
                    shape = (m.model.hidden, m.train.batch_size, bool(m.model.dropout_hidden), m.train.epochs)
                    todo.setdefault(shape, []).append(steps)
            for (hidden, batch, dropout, _), steps in todo.items():
                together = min(MAX_TOGETHER, len(steps)) if on_gpu else 1
                shape = (hidden, batch, dropout, together)
                if shape not in timed:
                    timed[shape] = step_seconds(hidden, batch, together, dropout=dropout, in_features=features,
                                                classes=classes, device=self.data.train.X.device,
                                                precision=self.precision) / together
                steps_total += sum(steps)
                seconds += timed[shape] * sum(steps)
        largest = max(timed, key=lambda shape: math.prod(shape[0]), default=None)
        per_step = 1e3 * timed[largest] if largest else 0.0
        stage1, stage2 = mnist_search_grids(self.sizes)
        extensions = (GRID_EXTENSIONS * sum(runs_per_value(g) for g in stage1.values()) * len(self.small.seeds)
                      + FINAL_EXTENSIONS * sum(runs_per_value(g) for g in stage2.values()) * len(self.sizes.seeds))
        self.last_estimate = Estimate(runs, cached, steps_total, planned, seconds, per_step, self.device_name,
                                      max((shape[3] for shape in timed), default=1), extensions, busy_note(began),
                                      tuple(self.unusable.values()))
        return self.last_estimate

    # ------------------------------------------------------------------ the stages: each trains or loads its runs
    def train_probes(self) -> list[list]:
        """Stage 1: the input-scaling diagnosis and the warm-up probe (four lists of runs)."""
        if self._probes is None:
            self._probes = self.complete(self.probe_stage())
        return self._probes

    def search_learning_rates(self) -> SearchOutcome:
        """Stage 2: learning rate x constant on the search data, extended while a choice is at an edge."""
        if self._lr_search is None:
            stage1, _ = mnist_search_grids(self.sizes)
            self._lr_search = self._search(self._methods(self.small), stage1, self.lr_stage, "search data")
        return self._lr_search

    def search_constants(self) -> SearchOutcome:
        """Stage 3: L1 and KL on the chosen L2, and the constants that tied on the search data, at
        the final budget; the chosen runs are final runs."""
        if self._constant_search is None:
            lr_search = self.search_learning_rates()
            _, stage2 = mnist_search_grids(self.sizes)
            methods = self.constant_methods(lr_search.chosen)
            grid = {**stage2, **lr_search.tied}
            self._constant_search = self._search(methods, grid, lambda g, r: self.constant_stage(methods, g, r),
                                                 "final budget", FINAL_EXTENSIONS)
        return self._constant_search

    def train_momentum_probe(self):
        """Stage 4: dropout + max-norm at a rate that kills units, with a lower momentum (one run)."""
        if self._momentum_probe is None:
            self._momentum_probe = self.complete(self.momentum_stage(self.chosen_method("dropout + max-norm")))[0][0]
        return self._momentum_probe

    def train_final(self) -> list:
        """Stage 5: the six methods at the final budget and the control (every seed), and the authors'
        recipe; returns the final runs (the recipe's: :meth:`results`)."""
        if self._final_batches is None:
            self._final_batches = self.complete(self.final_stage(self.chosen))
        return [r for batch in self._final_batches[:-1] for r in batch]

    def run(self) -> "StudyResults":
        """Every stage in order, trained or loaded - what the headless runner does - as plain data."""
        self.train_probes()
        self.search_learning_rates()
        self.search_constants()
        self.train_momentum_probe()
        self.train_final()
        return self.results()

    train_all = run

    def _search(self, methods, grid: dict, stage_of, where: str, extensions: int = GRID_EXTENSIONS):
        _, outcome = self._search_rounds(methods, grid, stage_of, dry=False, extensions=extensions)
        outcome.where = where
        return outcome

    def _search_rounds(self, methods, grid: dict, stage_of, dry: bool, extensions: int = GRID_EXTENSIONS):
        """The search's stages - its grid, then the grid extended while a choice is at an edge and
        beats its neighbour on the paired test, or equals it (:func:`~hwutils.search.edge_decisions`;
        at most ``extensions`` times) - and its outcome. ``dry``: train nothing; stop at the first
        round not in the cache (its outcome is then None)."""
        base, stages = grid, []
        for round_ in range(extensions + 1):
            stage = stage_of(grid, round_)
            stages.append(stage)
            if dry and not all(self._usable(stage.batches[b], m, s) for b, m, s in stage.jobs()):
                return stages, None
            results, = self.complete(stage) if not dry else [self._sweep(b, train=False) for b in stage.batches]
            if any(r is None for r in results):  # dry, and a record lacks what the search reads
                return stages, None
            chosen, table = search_choices(methods, grid, results, self.references(methods, grid))
            edges = choices_at_edge(table, grid)
            decisions = edge_decisions(table, grid, edges, results)
            wider = extend_grid(grid, base, [e for e, d in zip(edges, decisions) if d["extend"]], extensions) \
                if round_ < extensions else None
            if wider is None:
                break
            grid = wider
        return stages, SearchOutcome(chosen, table, grid, base, edges, stages, "", results, decisions,
                                     versus_reference(table, results))

    @property
    def chosen(self) -> list[Method]:
        """Every method with the learning rate and constant the search chose (at the search's budget)."""
        by_name = {m.name: m for m in self.search_constants().chosen}
        return [by_name.get(m.name, m) for m in self.search_learning_rates().chosen]

    def chosen_method(self, name: str) -> Method:
        return self._method(self.chosen, name)

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in final_methods(self.sizes, mnist_methods(self.sizes))]

    def results(self) -> "StudyResults":
        """Every stage's runs as plain data (training what is not done yet): what the report's tables,
        sentences and figures read (:mod:`hwutils.findings`), without the data or the cache."""
        self.train_final()
        data, search = self.data, self.search_data
        norms = {"[0, 1]": float(search.train.X.norm(dim=1).mean()),
                 "standardized": float(self.standardized_data.train.X.norm(dim=1).mean()),
                 "background": float(self.standardized_data.train.X.min())}
        return StudyResults(
            profile=self.profile, sizes=self.sizes, small=self.small, probes=self.train_probes(),
            lr_search=self.search_learning_rates(), constant_search=self.search_constants(),
            momentum_probe=self.train_momentum_probe(), final=self.train_final(), recipe=self._final_batches[-1],
            chosen=self.chosen, method_names=self.method_names, recipe_methods=self.recipe_methods,
            high_lr=self.high_lr, device=self.device_description,
            images={"train": len(data.train), "val": len(data.val), "test": len(data.test),
                    "search train": len(search.train), "search val": len(search.val)},
            network=(data.n_features, *self.sizes.hidden, data.n_classes),
            input_norms=norms, stage_seconds=dict(self.stage_log), results_dir=self.results_dir,
            seconds_so_far=time.perf_counter() - self.started, estimate=self.last_estimate)


@dataclass
class StudyResults:
    """A study's runs and choices as plain data - no data sets, no cache, no training: what the
    report reads (:mod:`hwutils.findings`), and what a test can build by hand."""

    profile: str
    sizes: object                  # the profile (hwutils.profiles.MnistProfile) of the final runs
    small: object                  # ... and of the search
    probes: list                   # four lists of runs: diagnosis [0, 1], standardized; warm-up without, with
    lr_search: SearchOutcome
    constant_search: SearchOutcome
    momentum_probe: object         # one run
    final: list                    # the six methods and the control, every seed
    recipe: list                   # the authors' recipe, every seed
    chosen: list                   # every method with its chosen constants (search budget)
    method_names: list
    recipe_methods: list
    high_lr: float
    device: str                    # where it trained, with its products' precision
    images: dict                   # images per split: train, val, test, search train, search val
    network: tuple = ()            # the widths of the final runs' layers, inputs to classes
    input_norms: dict = field(default_factory=dict)  # mean |x| of [0, 1] and standardized pixels, background
    stage_seconds: dict = field(default_factory=dict)  # wall time of each stage trained in this process
    results_dir: object = None
    seconds_so_far: float = 0.0    # this process's wall time when the results were read
    estimate: object = None        # what the estimate before training said (hwutils.study.Estimate)

    def chosen_method(self, name: str):
        """The method ``name`` with its chosen learning rate and constant."""
        return next(m for m in self.chosen if m.name == name)

    def first_seed(self) -> dict:
        """The final run of each method with the first seed."""
        return {r.method: r for r in self.final if r.seed == self.sizes.seeds[0]}


if __name__ == "__main__":  # python -m hwutils.study: the headless runner (hwutils.runner)
    from hwutils.runner import main

    raise SystemExit(main())
