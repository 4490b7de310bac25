"""CPU threads for training on a machine that others share.

A training step on the CPU is a chain of parallel regions, each of which waits for its slowest
thread. Alone, two threads on two cores are the fastest; beside another process that keeps every
core busy, a thread of ours is descheduled at nearly every region and the step takes 3-4x as long
(``make bench`` shows it), while one thread is not held up by anything. So :func:`fit_members`
asks :class:`TrainingThreads` for as many threads as there are cores the other processes leave
free (:func:`thread_count`, the one decision), measured from ``/proc/stat`` over the time since
the last decision and re-decided before a step once :data:`WINDOW_SECONDS` have passed; after a
pause in training (:data:`PAUSE_SECONDS` without a step) over a short window of its own instead, so
that a neighbour who ran during the pause does not decide the first steps after it. Never more
than the caller had set (``torch.set_num_threads``), and put back when training ends.

``HWUTILS_THREADS=N`` fixes the count at N (no adapting); without ``/proc/stat`` (not Linux)
the caller's count is kept.

The count changes no number: ``import hwutils`` sets ``MKL_CBWR=AUTO,STRICT`` (Intel MKL's strict
conditional numerical reproducibility) before torch loads, under which the float32 products round the
same at any thread count; the bf16 products and the rest of a step already did. :func:`numerical_mode`
says whether it is in effect, for a run's record.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["thread_count", "busy_elsewhere", "cpu_sample", "CpuSample", "TrainingThreads", "THREADS_ENV",
           "WINDOW_SECONDS", "PAUSE_SECONDS", "CBWR_ENV", "numerical_mode"]

THREADS_ENV = "HWUTILS_THREADS"  # an integer: exactly that many threads, not adapted
#: The shortest time over which the CPU others take is measured (a shorter one holds too few ticks).
WINDOW_SECONDS = 0.5
#: A gap this long between two steps means training paused (between the runs of a sweep, a benchmark's
#: pause): the CPU others took during the pause says little about now, so the next decision measures anew.
PAUSE_SECONDS = 1.0
_FIRST_WINDOW = 0.1  # a decision with no recent sample (the first, or the first after a pause) measures this long


def thread_count(cores: int, busy_elsewhere: float, limit: int) -> int:
    """Threads for the training step: the ``cores`` we may run on, less what other processes keep
    busy (``busy_elsewhere``, in cores; half a core or more counts as taken), at least one and at
    most ``limit`` (the caller's setting)."""
    free = int(cores - busy_elsewhere + 0.5)
    return max(1, min(limit, cores, free))


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one moment: busy on our cores (all processes) and ours."""

    wall: float
    busy: float
    own: float


def busy_elsewhere(before: CpuSample, after: CpuSample) -> float:
    """Cores that other processes kept busy between two samples (our own CPU time taken out)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy - (after.own - before.own)) / wall)


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_sample(cores=None) -> CpuSample | None:
    """The busy time of ``cores`` (default: those we may run on) from ``/proc/stat`` and this
    process's CPU time; ``None`` where ``/proc/stat`` cannot be read."""
    wanted = {f"cpu{c}" for c in (_cores() if cores is None else cores)}
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and not line.startswith("cpu ")]
    except OSError:
        return None
    # Niced processes (a background job at nice 19) yield their core to us: their time does not
    # count, unless we are niced ourselves (then ours is in that column too).
    niced = os.nice(0) > 0
    busy = 0
    for name, *ticks in lines:
        if name in wanted:
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, ticks[:8])
            busy += user + system + irq + softirq + steal + (nice if niced else 0)
    return CpuSample(time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time())


class TrainingThreads:
    """The thread count of one training run on ``device`` (a no-op off the CPU): :meth:`adapt`
    before each step (it measures only once a window has passed), :meth:`restore` at the end. The
    last sample and decision carry over from one run to the next, so a sweep of short runs measures
    across them."""

    _last: CpuSample | None = None      # shared by all runs of this process
    _threads: int | None = None
    _last_step: float | None = None     # when adapt() was last called (monotonic seconds)
    _caller: int | None = None          # the caller's count while a run holds another one

    def __init__(self, device):
        self.active = torch.device(device).type == "cpu"
        if not self.active:
            return
        current = torch.get_num_threads()
        # an earlier run that ended in an exception left its count set: the caller's is the one before
        held = TrainingThreads._caller is not None and current == TrainingThreads._threads
        self.limit = TrainingThreads._caller if held else current
        TrainingThreads._caller = self.limit
        self.fixed = _fixed_threads()

    def adapt(self) -> int | None:
        """Set the thread count for the next step; return it (``None`` off the CPU)."""
        if not self.active:
            return None
        cls = TrainingThreads
        now_t = time.monotonic()
        called, cls._last_step = cls._last_step, now_t
        # A decision measures over the time since the last sample while training runs on; after a pause,
        # or when the last sample is older than a window and a pause (runs at a fixed count came between),
        # that time says little about now: it measures a short window of its own.
        recent = (cls._last is not None and cls._threads is not None and called is not None
                  and now_t - called <= PAUSE_SECONDS and now_t - cls._last.wall <= WINDOW_SECONDS + PAUSE_SECONDS)
        if self.fixed is not None or self.limit == 1:
            chosen = self.fixed or 1
        elif recent and now_t - cls._last.wall < WINDOW_SECONDS:
            chosen = min(cls._threads, self.limit)  # too short a window to tell: as decided last
        else:
            now = cpu_sample()
            if now is None:
                chosen = self.limit
            elif not recent:
                time.sleep(_FIRST_WINDOW)
                later = cpu_sample()
                chosen = thread_count(len(_cores()), busy_elsewhere(now, later), self.limit)
                cls._last = later
            else:
                chosen = thread_count(len(_cores()), busy_elsewhere(cls._last, now), self.limit)
                cls._last = now
        if chosen != torch.get_num_threads():
            torch.set_num_threads(chosen)
        cls._threads = chosen
        return chosen

    def restore(self) -> None:
        """Put the caller's thread count back."""
        if self.active:
            if torch.get_num_threads() != self.limit:
                torch.set_num_threads(self.limit)
            TrainingThreads._caller = None


def _fixed_threads() -> int | None:
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{THREADS_ENV}={value!r} is not a thread count: set a whole number >= 1, or "
                         f"unset it to follow the cores that other processes leave free")
    return threads


# --------------------------------------------------------------------------- numbers independent of the count
CBWR_ENV = "MKL_CBWR"       # Intel MKL's reproducibility mode, read at its first product (set in hwutils/__init__.py)
_MKL_CBWR_ALL, _MKL_CBWR_STRICT = -1, 0x10000  # mkl_cbwr_get(MKL_CBWR_ALL): the branch, | MKL_CBWR_STRICT


def _mkl_cbwr() -> int | None:
    """MKL's own reproducibility setting (``mkl_cbwr_get(MKL_CBWR_ALL)``) from the MKL linked into torch;
    None where torch has no MKL or the function is not found."""
    if not torch.backends.mkl.is_available():
        return None
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        try:
            get = ctypes.CDLL(str(lib_dir / name)).mkl_serv_cbwr_get  # exported under MKL's internal name
        except (OSError, AttributeError):
            continue
        get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
        return get(_MKL_CBWR_ALL)
    return None


def numerical_mode() -> dict:
    """What decides whether this process's numbers depend on its thread count, for a run's record:
    ``threads`` (torch's count now), ``mkl_cbwr`` (the variable), ``cbwr_in_effect`` (MKL's strict mode
    is on: its float32 products are the same at any thread count). MKL says so itself where torch's MKL
    can be asked; else it is inferred: a strict value, set before torch loaded."""
    value = os.environ.get(CBWR_ENV)
    setting = _mkl_cbwr()
    if setting is not None:
        in_effect = bool(setting & _MKL_CBWR_STRICT)
    else:
        hwutils = sys.modules.get("hwutils")
        late = getattr(hwutils, "_cbwr_after_torch", False) and value == getattr(hwutils, "CBWR_DEFAULT", None)
        in_effect = bool(value) and "STRICT" in value.upper() and not late
    return {"threads": torch.get_num_threads(), "mkl_cbwr": value, "cbwr_in_effect": in_effect}
