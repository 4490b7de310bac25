"""Know the cost before paying it: each notebook's plan and estimate before any training, and a
stop, in one line naming CONFIRM=1, for a plan far beyond its profile's own."""
from pathlib import Path

import pytest

from hwutils import report
from hwutils.preflight import (FAR_BEYOND, LONG_SECONDS, MemoryRefusal, NotebookPlan, memory_check, plan_of,
                               too_costly)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_a_plan_within_its_profile_goes_ahead_and_one_far_beyond_it_needs_confirm():
    own = NotebookPlan("02", 1_000, 1_000, 1_000, 60.0, "")
    assert too_costly(own) is None
    far = NotebookPlan("02", FAR_BEYOND * 1_000, FAR_BEYOND * 1_000, 1_000, 600.0, "")
    assert "CONFIRM=1" in too_costly(far) and "10 times the run-steps" in too_costly(far)
    cached = NotebookPlan("02", FAR_BEYOND * 1_000, 0, 1_000, 0.0, "")  # all cached: nothing to pay
    assert too_costly(cached) is None
    long = NotebookPlan("03", 1_000, 1_000, 1_000, LONG_SECONDS, "")
    assert "CONFIRM=1" in too_costly(long) and "2.0 hours" in too_costly(long)


def test_part2_with_a_hundred_thousand_epochs_is_stopped_before_it_starts():
    plan = plan_of(NOTEBOOKS / "02_point_cloud_regularization.ipynb", {"profile": "quick", "epochs": 100_000},
                   NOTEBOOKS)
    assert plan.run_steps_planned == 100 * plan.profile_run_steps
    assert "Part 2:" in plan.text and "run-steps" in plan.text and "ms per training step" in plan.text
    assert "CONFIRM=1" in too_costly(plan)
    assert plan_of(NOTEBOOKS / "01_adam_bias_correction.ipynb", {"profile": "quick"}, NOTEBOOKS) is None


def test_part3_with_a_hundred_thousand_dropout_epochs_is_stopped_before_it_starts(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(mnist_dir))  # a build in an earlier test may have set another
    values = {"profile": "smoke", "dropout_epochs": 100_000, "results_dir": str(tmp_path)}
    plan = plan_of(NOTEBOOKS / "03_mnist_regularization.ipynb", values, NOTEBOOKS)
    assert plan.text.startswith("Part 3: Measured just now:") and plan.run_steps_to_train == plan.run_steps_planned
    assert "CONFIRM=1" in too_costly(plan)
    monkeypatch.setattr(report, "resolve_parameters", lambda *a: {NOTEBOOKS / "03_mnist_regularization.ipynb": values})
    monkeypatch.setattr(report, "notebook_paths", lambda: [NOTEBOOKS / "03_mnist_regularization.ipynb"])
    monkeypatch.setattr(report, "check_tools", lambda *a, **k: None)
    stamp = report.BUILD_STAMP.exists()
    with pytest.raises(report.ReportError, match="CONFIRM=1"):
        report.build("smoke")
    assert report.BUILD_STAMP.exists() == stamp  # a refused plan leaves the last good build's stamp alone


def test_an_estimate_calls_the_machine_busy_only_for_cpu_that_other_processes_took_while_it_timed(monkeypatch):
    import os

    from hwutils import threads
    from hwutils.study import busy_note

    monkeypatch.setattr(os, "getloadavg", lambda: (1.8, 1.8, 1.8))  # the notebook before us trained for minutes
    since = threads.CpuSample(wall=0.0, busy=0.0, own=0.0)
    ours = threads.CpuSample(wall=10.0, busy=19.0, own=18.5)           # 1.85 cores busy, nearly all of it ours
    monkeypatch.setattr(threads, "cpu_sample", lambda cores=None: ours)
    assert busy_note(since) == ""
    theirs = threads.CpuSample(wall=10.0, busy=19.0, own=9.0)         # another process took a core
    monkeypatch.setattr(threads, "cpu_sample", lambda cores=None: theirs)
    assert "Other processes kept 1.0 of the" in busy_note(since)


def test_networks_or_batches_too_large_for_memory_are_refused_with_the_estimate():
    with pytest.raises(MemoryRefusal, match=r"hidden \[800, 800\] at batch 1000000000 needs about .* GB .* available"):
        memory_check({((800, 800), 10**9, 1)}, "cpu", 784, 10)
    weights = 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    small = memory_check({((800, 800), 100, 1)}, "cpu", 784, 10)
    assert 4 * 4 * weights < small < 4 * 4 * weights + 10e6  # weights, gradient, momentum, best copy; activations
    stacked = memory_check({((800, 800), 100, 24)}, "cpu", 784, 10)
    assert stacked == 24 * small


def test_make_reports_plan_refuses_part3_and_part2_networks_too_large_for_memory(tmp_path):
    values = {"profile": "smoke", "hidden": [100000, 100000], "results_dir": str(tmp_path)}
    with pytest.raises(MemoryRefusal, match=r"hidden \[100000, 100000\] .* set smaller hidden widths \(-p hidden"):
        plan_of(NOTEBOOKS / "03_mnist_regularization.ipynb", values, NOTEBOOKS)
    with pytest.raises(MemoryRefusal, match="-p batch_size"):
        plan_of(NOTEBOOKS / "02_point_cloud_regularization.ipynb", {"profile": "quick", "hidden": [100000, 100000]},
                NOTEBOOKS)
    assert issubclass(MemoryRefusal, ValueError)  # hwutils.report says it in one line, CONFIRM=1 or not
