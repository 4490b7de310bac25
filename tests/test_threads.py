"""Specifications of hwutils.threads: training takes the cores other processes leave free."""
import pytest
import torch

from hwutils import threads
from hwutils.threads import CpuSample, TrainingThreads, busy_elsewhere, thread_count


@pytest.mark.parametrize("cores, elsewhere, limit, expected", [
    (2, 0.0, 2, 2),    # alone: every core
    (2, 0.3, 2, 2),    # a shell, an editor: not worth a core
    (2, 1.0, 2, 1),    # one busy neighbour thread (or a neighbour sharing both cores with our two)
    (2, 2.0, 2, 1),    # a neighbour on every core: one thread, never none
    (2, 0.0, 1, 1),    # never more than the caller set
    (16, 4.2, 16, 12),
    (16, 0.0, 8, 8),
])
def test_the_thread_count_is_the_cores_other_processes_leave_free(cores, elsewhere, limit, expected):
    assert thread_count(cores, elsewhere, limit) == expected


def test_busy_elsewhere_is_the_busy_time_of_the_cores_less_our_own():
    before, after = CpuSample(wall=10.0, busy=100.0, own=5.0), CpuSample(wall=12.0, busy=103.0, own=6.0)
    assert busy_elsewhere(before, after) == pytest.approx(1.0)  # 3 busy core-seconds in 2 s, 1 of them ours
    assert busy_elsewhere(after, after) == 0.0


def test_a_training_run_puts_the_callers_thread_count_back(moons, monkeypatch):
    from hwutils.models import MLP
    from hwutils.training import TrainConfig, fit

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "thread_count", lambda cores, elsewhere, limit: 1)  # as if the machine were busy
    monkeypatch.setattr(TrainingThreads, "_last", None)
    seen = []
    monkeypatch.setattr(TrainingThreads, "adapt", lambda self, real=TrainingThreads.adapt: seen.append(real(self)))
    fit(MLP(2, (4,), 2), moons.train, moons.val, TrainConfig(epochs=2, batch_size=50), progress=False)
    assert len(seen) == 2 * 4 and set(seen) == {1}  # before each of the 2 x 4 steps
    assert torch.get_num_threads() == before


def test_threads_fixed_by_the_environment_are_not_adapted(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    monkeypatch.setattr(threads, "cpu_sample", lambda: pytest.fail("measured although the count is fixed"))
    before = torch.get_num_threads()
    run = TrainingThreads("cpu")
    assert run.adapt() == 1 and torch.get_num_threads() == 1
    run.restore()
    assert torch.get_num_threads() == before


def test_a_bad_thread_count_in_the_environment_is_one_line(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "all")
    with pytest.raises(ValueError, match="HWUTILS_THREADS='all' is not a thread count: set a whole number"):
        TrainingThreads("cpu")



@pytest.fixture
def machine(monkeypatch):
    """A 2-core machine on a clock of its own: ``advance(seconds)`` lets time pass while other
    processes keep ``others["cores"]`` cores busy; the thread count is ``counts["n"]`` (2 at first)."""
    clock, others, counts = {"now": 100.0, "busy": 0.0}, {"cores": 0.0}, {"n": 2}

    def advance(seconds):
        clock["busy"] += others["cores"] * seconds
        clock["now"] += seconds

    monkeypatch.setattr(threads, "time", type("Clock", (), {"monotonic": staticmethod(lambda: clock["now"]),
                                                           "sleep": staticmethod(advance)}))
    monkeypatch.setattr(threads, "cpu_sample", lambda cores=None: CpuSample(clock["now"], clock["busy"], 0.0))
    monkeypatch.setattr(threads, "_cores", lambda: [0, 1])
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    for name in ("_last", "_threads", "_last_step", "_caller"):
        monkeypatch.setattr(TrainingThreads, name, None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: counts["n"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: counts.update(n=n))
    return advance, others, counts


def test_after_a_pause_the_threads_follow_the_machine_as_it_is_now_not_during_the_pause(machine):
    """A neighbour that kept every core busy while training paused (between two runs of a sweep) and
    stopped before it resumed does not cost the next steps a thread; one that starts mid-run does."""
    advance, others, counts = machine
    run = TrainingThreads("cpu")
    assert run.adapt() == 2                      # alone
    advance(0.6)
    assert run.adapt() == 2
    others["cores"] = 2.0                        # a pause of 5 s, every core busy elsewhere ...
    advance(5.0)
    others["cores"] = 0.0                        # ... and quiet again when training resumes
    assert run.adapt() == 2
    others["cores"] = 2.0                        # a neighbour starts while we train: one thread
    advance(0.6)
    assert run.adapt() == 1
    run.restore()
    assert counts["n"] == 2


def test_runs_at_a_fixed_thread_count_in_between_do_not_make_an_old_sample_decide(machine, monkeypatch):
    """A sweep that ran some runs at HWUTILS_THREADS=2 while a neighbour was busy, then one at the
    default when the neighbour had stopped: the default measures the machine as it is then."""
    advance, others, _ = machine
    adaptive = TrainingThreads("cpu")
    assert adaptive.adapt() == 2
    adaptive.restore()
    others["cores"] = 2.0
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    fixed = TrainingThreads("cpu")
    for _ in range(30):                          # 3 s of steps at a fixed count, every core busy elsewhere
        fixed.adapt()
        advance(0.1)
    fixed.restore()
    others["cores"] = 0.0
    monkeypatch.delenv(threads.THREADS_ENV)
    assert TrainingThreads("cpu").adapt() == 2
