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
runner (``python -m hwutils.study``, :mod:`hwutils.study_cli`) trains, in parts with ``--shard i/n``.
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
from pathlib import Path

from .cache import run_stem
from .experiments import (MAX_TOGETHER, Method, choices_at_edge, edge_margins, grid_fields, prefix_key, run_key,
                          run_sweep, search_candidates, search_choices, sweep_epochs)
from .profiles import (authors_recipe_methods, final_methods, inherit_l2, mnist_methods, mnist_profile,
                       mnist_search_grids, mnist_splits)

__all__ = ["Study", "Stage", "Batch", "Estimate", "SearchOutcome", "shard_jobs", "busy_note", "duration",
           "GRID_EXTENSIONS", "FINAL_EXTENSIONS"]

#: How many times a search grid is extended outward, one step at a time, while its choice is at an edge:
#: on the search data, and at the final budget (where each step costs full runs).
GRID_EXTENSIONS = 2
FINAL_EXTENSIONS = 1
#: The learning rates of the input-scaling diagnosis: the first two of the grid at or above this.
DIAGNOSIS_LR_FROM = 0.1
#: The warm-up probe: L2 at this learning rate for this many epochs, these seeds.
WARMUP_PROBE = {"lr": 0.3, "epochs": 2, "seeds": (0, 1, 2, 3)}
#: The momentum probe: dropout + max-norm at a rate that kills units at momentum 0.9, with this momentum.
PROBE_MOMENTUM = 0.5


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

    @property
    def minutes(self) -> float:
        return self.seconds / 60

    def text(self) -> str:
        """One paragraph for the report and the terminal."""
        stacked = f", {self.together} runs stacked per step" if self.together > 1 else ""
        todo = self.runs - self.runs_cached
        extra = (f" Grid extensions, where a choice lands at an edge, may add up to {self.extensions} runs."
                 if self.extensions else "")
        if todo == 0:
            return f"All {self.runs} runs of the plan are in the cache: nothing to train."
        return (f"Measured just now: {self.per_step_ms:.2f} ms per training step per run on {self.device}"
                f"{stacked}.{self.busy} The plan has {self.runs} runs, {self.runs_cached} already in the cache; "
                f"the {todo} to train need {_count(self.run_steps)} run-steps: about "
                f"{duration(self.seconds)}, validation passes aside.{extra}")


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
                 progress: bool = True, device=None, shard: tuple[int, int] = (0, 1), wait_seconds: float = 10.0,
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

    def _sweep(self, batch: Batch, jobs=None) -> list:
        methods, seeds = batch.methods, batch.seeds
        common = dict(results_dir=self.results_dir, force=self.force, progress=self.progress,
                      on_nan=batch.on_nan, evaluate_test=batch.evaluate_test, desc=batch.label)
        if jobs is None:
            return run_sweep(methods, self._data(batch.data), seeds=seeds, **common)
        results = []
        for seed in dict.fromkeys(s for _, s in jobs):  # one sweep per seed: its methods train together
            mine = [m for m, s in jobs if s == seed]
            results += run_sweep(mine, self._data(batch.data), seeds=(seed,), **common)
        return results

    def _cached(self, batch: Batch, method: Method, seed: int) -> bool:
        key = run_key(method, self._data(batch.data).spec, seed)
        return bool(self.results_dir) and run_stem(self.results_dir, method.name, key).with_suffix(".json").exists()

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
        last = 0.0
        while True:
            missing = [(m, s) for b, m, s in stage.jobs() if not self._cached(stage.batches[b], m, s)]
            if not missing:
                return
            if time.perf_counter() - last > 60:
                print(f"shard {self.shard[0] + 1}/{self.shard[1]}: waiting for {len(missing)} runs of stage "
                      f"'{stage.name}' from the other shards (first: {missing[0][0].name}, seed {missing[0][1]})",
                      flush=True)
                last = time.perf_counter()
            time.sleep(self.wait_seconds)

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
        candidates = tuple(search_candidates(self._methods(self.small), grid))
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
        """The constants searched at the final budget (all training images, the final epochs). The
        chosen L2 at the final budget trains with them - it is a final run, and L2 + L1's candidates
        are it until their L1 switches on, so those epochs train once (:func:`~hwutils.experiments.prefix_key`)."""
        candidates = tuple(search_candidates(methods, grid))
        l2 = self._method(methods, "L2")
        forks = any(prefix_key(c, 0) == prefix_key(l2, 0) for c in candidates)  # L2's key is never None
        trunk = (l2,) if round_ == 0 and l2 not in candidates and forks else ()
        name = "constants at the final budget" + (f", grid extended ({round_})" if round_ else "")
        return Stage(name, (Batch("constants", trunk + candidates, self.sizes.seeds, "final"),))

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
                    if self._cached(batch, m, s):
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
        extensions = (GRID_EXTENSIONS * sum(_runs_per_value(g) for g in stage1.values()) * len(self.small.seeds)
                      + FINAL_EXTENSIONS * sum(_runs_per_value(g) for g in stage2.values()) * len(self.sizes.seeds))
        self.last_estimate = Estimate(runs, cached, steps_total, planned, seconds, per_step, self.device_name,
                                      max((shape[3] for shape in timed), default=1), extensions, busy_note(began))
        return self.last_estimate

    # ------------------------------------------------------------------ the stages' results
    @functools.cached_property
    def probes(self) -> list[list]:
        return self.complete(self.probe_stage())

    @functools.cached_property
    def lr_search(self) -> "SearchOutcome":
        """Stage 2: learning rate x constant on the search data, extended while a choice is at an edge."""
        stage1, _ = mnist_search_grids(self.sizes)
        return self._search(self._methods(self.small), stage1, self.lr_stage, "search data")

    @functools.cached_property
    def constant_search(self) -> "SearchOutcome":
        """Stage 3: L1 and KL on the chosen L2, and the constants that tied on the search data, at
        the final budget; the chosen runs are the final runs."""
        _, stage2 = mnist_search_grids(self.sizes)
        methods = self.constant_methods(self.lr_search.chosen)
        grid = {**stage2, **self.lr_search.tied}
        return self._search(methods, grid, lambda g, r: self.constant_stage(methods, g, r), "final budget",
                            FINAL_EXTENSIONS)

    def _search(self, methods, grid: dict, stage_of, where: str, extensions: int = GRID_EXTENSIONS):
        _, outcome = self._search_rounds(methods, grid, stage_of, dry=False, extensions=extensions)
        outcome.where = where
        return outcome

    def _search_rounds(self, methods, grid: dict, stage_of, dry: bool, extensions: int = GRID_EXTENSIONS):
        """The search's stages - its grid, then the grid extended while a choice is at an edge and
        beats its neighbour beyond the noise, or equals it (:func:`~hwutils.experiments.edge_margins`;
        at most ``extensions`` times) - and its outcome. ``dry``: train nothing; stop at the first
        round not in the cache (its outcome is then None)."""
        base, stages = grid, []
        for round_ in range(extensions + 1):
            stage = stage_of(grid, round_)
            stages.append(stage)
            if dry and not all(self._cached(stage.batches[b], m, s) for b, m, s in stage.jobs()):
                return stages, None
            results, = self.complete(stage) if not dry else [self._sweep(b) for b in stage.batches]
            chosen, table = search_choices(methods, grid, results)
            edges = choices_at_edge(table, grid)
            margins = edge_margins(table, grid, edges, len(self._data(stage.batches[0].data).val))
            wider = _extend(grid, base, [e for e, m in zip(edges, margins) if m["extend"]], extensions) \
                if round_ < extensions else None
            if wider is None:
                break
            grid = wider
        return stages, SearchOutcome(chosen, table, grid, base, edges, stages, "", results, margins)

    @functools.cached_property
    def momentum_probe(self):
        return self.complete(self.momentum_stage(self.chosen_method("dropout + max-norm")))[0][0]

    @functools.cached_property
    def chosen(self) -> list[Method]:
        """Every method with the learning rate and constant the search chose (at the search's budget)."""
        by_name = {m.name: m for m in self.constant_search.chosen}
        return [by_name.get(m.name, m) for m in self.lr_search.chosen]

    def chosen_method(self, name: str) -> Method:
        return self._method(self.chosen, name)

    @functools.cached_property
    def _final_batches(self) -> list[list]:
        return self.complete(self.final_stage(self.chosen))

    @property
    def final(self) -> list:
        """The final runs: the six methods at the final budget and the control, every seed."""
        return [r for batch in self._final_batches[:-1] for r in batch]

    @property
    def recipe(self) -> list:
        """The authors'-recipe runs, every seed."""
        return self._final_batches[-1]

    def train_all(self) -> None:
        """Every stage in order - what the headless runner does."""
        self.probes, self.lr_search, self.constant_search, self.momentum_probe, self.final  # noqa: B018

    # ------------------------------------------------------------------ names
    @property
    def method_names(self) -> list[str]:
        return [m.name for m in final_methods(self.sizes, mnist_methods(self.sizes))]

    def first_seed(self) -> dict:
        """The final run of each method with the first seed."""
        return {r.method: r for r in self.final if r.seed == self.sizes.seeds[0]}


def _runs_per_value(spec) -> int:
    """Runs one more value of a grid's field adds: the combinations of the other fields (the largest)."""
    fields = grid_fields(spec)
    return max(math.prod(len(v) for g, v in fields.items() if g != f) for f in fields)


def _extend(grid: dict, base: dict, edges, extensions: int = GRID_EXTENSIONS) -> dict | None:
    """``grid`` with one more value beyond each chosen edge (the ratio of the two outermost values),
    at most ``extensions`` steps beyond ``base``; None when nothing is extended."""
    wider = {name: grid_fields(spec) for name, spec in grid.items()}
    changed = False
    for name, field, value, side in edges:
        values = sorted(wider[name][field])
        original = sorted(grid_fields(base[name])[field])
        if len(values) - len(original) >= extensions:
            continue
        step = values[1] / values[0] if side == "smallest" else values[-1] / values[-2]
        new = values[0] / step if side == "smallest" else values[-1] * step
        wider[name][field] = tuple(sorted((*values, float(f"{new:.3g}"))))
        changed = True
    return wider if changed else None


@dataclass
class SearchOutcome:
    """A search's result: the chosen methods, the table of every candidate, the grid as finally
    searched and as first planned, the choices at an edge of the final grid, its stages, where it
    ran, and the candidates' runs."""

    chosen: list
    table: "pd.DataFrame"
    grid: dict
    base: dict
    edges: list
    stages: list
    where: str
    results: list
    margins: list = field(default_factory=list)  # edge_margins of the edges, in their order

    @property
    def tied(self) -> dict:
        """``{method: (field, values)}`` for each method whose lowest validation error and loss at
        the chosen learning rate are shared by several values of its own constant: runs the same in
        both, where the constant did not act between those values (as a max-norm radius that never
        binds), so that validation cannot choose among them."""
        out = {}
        for name, spec in self.grid.items():
            fields = grid_fields(spec)
            own = next((f for f in fields if f != "lr"), None)
            if own is None or len(fields[own]) < 2:
                continue
            chosen = next(m for m in self.chosen if m.name == name)
            mine = self.table[self.table["method"] == name]
            if "lr" in fields:
                mine = mine[mine["lr"] == chosen.train.lr]
            means = mine.groupby(own)[["val_error_pct", "val_loss"]].mean()
            top = means.loc[getattr(chosen.train, own)]
            best = tuple(float(v) for v in means.index[(means["val_error_pct"] == top["val_error_pct"])
                                                        & (means["val_loss"] == top["val_loss"])])
            if len(best) > 1:
                out[name] = (own, best)
        return out


# --------------------------------------------------------------------------- the headless runner
NOTEBOOK = "03_mnist_regularization"  # whose parameters the runner takes (hwutils.params.SPEC)
_PARAMS = ("profile", "downsample", "seeds", "epochs", "dropout_epochs", "hidden", "lr_grid", "results_dir", "force")
RUN_LOG = "study-runs.jsonl"  # in the results folder: one line per finished runner call (provenance)


def _parser():
    import argparse

    from .precision import PRECISIONS

    parser = argparse.ArgumentParser(
        prog="python -m hwutils.study",
        description="Train every run Part 3 needs into the results cache (headless: no Jupyter), estimate "
                    "its time, or move its results between machines. 'make report' with the same profile "
                    "and parameters then renders from the cache and trains nothing.",
        epilog="Train on a GPU node, render elsewhere:  python -m hwutils.study --profile paper && "
               "python -m hwutils.study export --profile paper --out paper.json.gz;  then, on the other "
               "machine:  python -m hwutils.study import paper.json.gz && make report PROFILE=paper")
    sub = parser.add_subparsers(dest="command")

    def study_options(p):
        p.add_argument("--profile", default="quick", help="smoke | quick | full | paper (default quick)")
        p.add_argument("--seeds", type=int, nargs="+", help="seeds of the final runs")
        p.add_argument("--epochs", type=int, help="epochs of the methods without dropout")
        p.add_argument("--dropout-epochs", type=int, help="epochs of the dropout methods and the control")
        p.add_argument("--hidden", type=int, nargs="+", help="hidden widths, e.g. 800 800")
        p.add_argument("--lr-grid", type=float, nargs="+", help="learning rates searched")
        p.add_argument("--downsample", type=int, help="image side after pooling: 7, 14 (default 28)")
        p.add_argument("--results-dir", default="results", help="the cache of trained runs (default results)")
        p.add_argument("--precision", choices=PRECISIONS, help="of the matrix products: fp32, tf32 (CUDA) or bf16 "
                                                               "(default: tf32 on CUDA, fp32 on the CPU)")

    train = sub.add_parser("train", help="train the study into the cache (the default command)")
    study_options(train)
    train.add_argument("--force", action="store_true", help="retrain runs that are cached")
    train.add_argument("--shard", default="1/1", help="i/n: train the i-th of n parts of each stage, then wait "
                                                      "for the other parts in the shared results folder")
    train.add_argument("--estimate", action="store_true", help="print the plan's estimate and stop")
    export = sub.add_parser("export", help="write the study's results (no weights) to one file")
    study_options(export)
    export.add_argument("--out", required=True, help="the bundle to write, e.g. paper.json.gz")
    export.add_argument("--partial", action="store_true",
                        help="write the runs trained so far (to carry them to another machine and train on there)")
    imp = sub.add_parser("import", help="put a bundle's runs into a results folder")
    imp.add_argument("bundle", help="a file written by 'export'")
    imp.add_argument("--results-dir", default="results", help="where to put them (default results)")
    return parser


def _study_kwargs(args) -> dict:
    """The parameters as the notebook takes them, each checked by :mod:`hwutils.params` (one line each)."""
    from .params import check_value

    given = {"profile": args.profile, "seeds": args.seeds, "epochs": args.epochs,
             "dropout_epochs": args.dropout_epochs, "hidden": args.hidden, "lr_grid": args.lr_grid,
             "downsample": args.downsample, "precision": getattr(args, "precision", None),
             "results_dir": args.results_dir}
    return {name: check_value(name, value, NOTEBOOK) if value is not None else None for name, value in given.items()}


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: write it as i/n, e.g. 2/4") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"--shard {text}: need 1 <= i <= n")
    return i - 1, n


def _train(args) -> int:
    import json

    from .bundle import provenance
    from .cache import check_writable
    from .fused import chosen_update

    kwargs = _study_kwargs(args)
    shard = _shard(args.shard)
    check_writable(kwargs["results_dir"])
    profile = kwargs.pop("profile")
    study = Study(profile, force=args.force, shard=shard, **kwargs)
    estimate = study.estimate()
    print(f"hwutils.study, profile {profile}: {estimate.text()}", flush=True)
    if args.estimate:
        return 0
    start = time.perf_counter()
    study.train_all()
    wall = time.perf_counter() - start
    stages = "; ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in study.stage_log)
    print(f"hwutils.study: done in {wall / 60:.1f} min ({stages}); estimated {estimate.minutes:.1f} min", flush=True)
    log = provenance(profile=profile, params={k: v for k, v in kwargs.items() if k != "results_dir"},
                     wall_seconds=round(wall, 1), estimated_seconds=round(estimate.seconds, 1),
                     stages={name: round(seconds, 1) for name, seconds in study.stage_log},
                     runs=estimate.runs, runs_cached_at_start=estimate.runs_cached, busy=bool(estimate.busy),
                     shard=args.shard,
                     update=chosen_update())  # the SGD update's path: the same weights, another speed
    with open(Path(study.results_dir) / RUN_LOG, "a", encoding="utf-8") as out:
        out.write(json.dumps(log) + "\n")
    return 0


def _export(args) -> int:
    import json

    from .bundle import export_runs, provenance
    from .cache import load_run

    kwargs = _study_kwargs(args)
    profile = kwargs.pop("profile")
    study = Study(profile, progress=False, **kwargs)
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
    if missing and not args.partial:
        print(f"hwutils.study export: {missing} of {len(seen)} runs of profile {profile} are not in "
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
    partial = {"partial": f"{len(records)} of {len(seen)} runs"} if missing else {}
    summary = export_runs(records, args.out, {**origin, "profile": profile, "exported": provenance()["date"],
                                              **partial})
    print(f"hwutils.study export: {summary['runs']} runs of profile {profile} to {summary['path']} "
          f"({summary['bytes'] / 1e6:.2f} MB, no weights)"
          + (f"; partial: {missing} of {len(seen)} runs still to train" if missing else ""))
    return 0


def _import(args) -> int:
    from .bundle import import_runs

    print("hwutils.study import: " + import_runs(args.bundle, args.results_dir))
    return 0


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "export", "import", "-h", "--help"):
        argv = ["train", *argv]
    args = _parser().parse_args(argv)
    from .bundle import BundleError
    from .cache import CacheError
    from .data import DataError
    from .params import ParameterError

    try:
        return {"train": _train, "export": _export, "import": _import}[args.command](args)
    except (ParameterError, ValueError, BundleError, CacheError, DataError) as err:
        print(f"hwutils.study: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwutils.study: interrupted; the runs finished so far are cached: run the same command again to "
              "resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
