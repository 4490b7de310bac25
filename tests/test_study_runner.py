"""Part 3 as a study that runs anywhere: the plan and its shards, the headless runner without
Jupyter, and results that travel from the machine that trained them to the one that renders."""
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwutils import bundle, experiments, findings
from hwutils.cache import seal_record
from hwutils.profiles import mnist_search_grids, mnist_methods
from hwutils.search import FINAL_EXTENSIONS, GRID_EXTENSIONS, runs_per_value
from hwutils.study import Study, shard_jobs

ROOT = Path(__file__).resolve().parents[1]
#: What the GPU machines lack: the runner must not import any of it.
NOT_ON_THE_GPU_IMAGE = ("papermill", "nbclient", "nbformat", "ipykernel", "IPython", "jupyter_client",
                        "matplotlib", "seaborn", "yaml", "scipy", "tabulate")
# As on a machine without them: importing one fails, and importlib.util.find_spec finds nothing to
# load (torch._dynamo, which torchvision imports, looks for some of them that way).
BLOCKER = """
import importlib.abc, importlib.machinery, sys
class Absent(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ModuleNotFoundError(f"{{module.__name__}} is not on this machine (blocked by the test)")
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            return importlib.machinery.ModuleSpec(name, Absent())
sys.meta_path.insert(0, Blocked())
from hwutils.runner import main
sys.exit(main({argv!r}))
"""


def _stages(study: Study):
    """The plan's stages as the builders make them, with the profile's default methods."""
    stage1, stage2 = mnist_search_grids(study.sizes)
    methods = study.constant_methods(mnist_methods(study.small))
    return [study.probe_stage(), study.lr_stage(stage1), study.constant_stage(methods, stage2),
            study.momentum_stage(next(m for m in methods if m.name == "dropout + max-norm")),
            study.final_stage(methods)]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_shards_of_each_stage_are_disjoint_and_together_exactly_the_plan(count):
    study = Study("quick", seeds=[0, 1, 2])
    for stage in _stages(study):
        parts = [shard_jobs(stage, study._steps, i, count) for i in range(count)]
        together = [job for part in parts for job in part]
        key = lambda job: (job[0], job[1], job[2])  # noqa: E731  (batch, method, seed)
        assert sorted(together, key=repr) == sorted(stage.jobs(), key=repr)
        assert len({repr(key(j)) for j in together}) == len(together)
        if count > 1 and len(stage.jobs()) >= count:
            loads = [sum(study._steps(stage.batches[b], m) for b, m, _ in part) for part in parts]
            longest = max(study._steps(stage.batches[b], m) for b, m, _ in stage.jobs())
            assert max(loads) - min(loads) <= longest  # balanced by run-steps, as far as runs allow


def test_a_shard_that_does_not_exist_is_one_line():
    stage = _stages(Study("smoke"))[0]
    with pytest.raises(ValueError, match="shard 3/2 does not exist"):
        shard_jobs(stage, lambda b, m: 1, 2, 2)


def test_the_paper_profiles_bundle_fits_in_16_MB_without_weights(tmp_path):
    # Every run of the paper plan, with grid extensions at their bound, as records of the real size:
    # histories of every epoch and every minibatch, measurements of the Table 9 network.
    import numpy as np
    import torch

    from hwutils.diagnostics import end_of_training
    from hwutils.models import MLP
    from hwutils.training import History

    study = Study("paper")
    stage1, stage2 = mnist_search_grids(study.sizes)
    stages = _stages(study)
    runs = [(stage.batches[b], m, s) for stage in stages for b, m, s in stage.jobs()]
    extra = (GRID_EXTENSIONS * sum(runs_per_value(g) for g in stage1.values()) * len(study.small.seeds)
             + FINAL_EXTENSIONS * sum(runs_per_value(g) for g in stage2.values()) * len(study.sizes.seeds))
    measurements = end_of_training(MLP(784, study.sizes.hidden, 10), torch.rand(256, 784))
    rng = np.random.default_rng(0)
    records = []
    for i, (batch, method, seed) in enumerate(runs + runs[:extra]):
        epochs, steps = method.train.epochs, study._steps(batch, method)
        per_epoch = {f: rng.random(epochs).tolist() for f in ("train_loss", "penalty", "val_loss", "val_error",
                                                              "lr", "small_weights", "max_unit_norm", "at_cap",
                                                              "epoch_seconds")}
        history = History(iter_loss=rng.random(steps).tolist(), best_epoch=epochs, steps_per_epoch=steps // epochs,
                          **per_epoch)
        records.append({"method": method.name, "seed": seed, "key": f"{i:016x}", "val_error": 0.01,
                        "test_error": 0.01, "config": {"model": {}, "train": {}, "data": {}},
                        "history": history.to_dict(), "measurements": measurements})
    summary = bundle.export_runs(records, tmp_path / "paper.json.gz", bundle.provenance(profile="paper"))
    assert summary["runs"] == len(runs) + extra > 100
    assert summary["bytes"] < 16e6, f"{summary['bytes'] / 1e6:.1f} MB"


# --------------------------------------------------------------------------- with real MNIST
@pytest.fixture(scope="session")
def smoke_results(mnist_dir, tmp_path_factory):
    """The smoke study trained by the headless runner, in a Python where Jupyter, matplotlib and
    YAML cannot be imported (as on the GPU machines)."""
    results = tmp_path_factory.mktemp("smoke-results")
    argv = ["--profile", "smoke", "--results-dir", str(results)]
    code = BLOCKER.format(names=set(NOT_ON_THE_GPU_IMAGE), argv=argv)
    env = {**os.environ, "HWUTILS_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return results, done.stdout


def test_the_runner_trains_the_smoke_study_without_jupyter_and_says_what_it_costs(smoke_results):
    results, out = smoke_results
    assert "hwutils.study, profile smoke: Measured just now:" in out and "run-steps" in out
    assert "hwutils.study: done in" in out
    assert len(list(results.glob("*.json"))) > 30
    log = [json.loads(line) for line in (results / "study-runs.jsonl").read_text().splitlines()]
    assert log[-1]["profile"] == "smoke" and log[-1]["wall_seconds"] > 0 and log[-1]["torch"]


def _no_training(*args, **kwargs):
    raise AssertionError("trained a run that should have come from the cache")


def test_a_second_runner_call_finds_every_run_in_the_cache(smoke_results, mnist_dir, monkeypatch):
    results, _ = smoke_results
    monkeypatch.setattr(experiments, "fit_members", _no_training)
    study = Study("smoke", results_dir=results, progress=False)
    estimate = study.estimate()
    assert estimate.runs == estimate.runs_cached > 30 and estimate.run_steps == 0
    study.train_all()


def _tables(study: Study) -> dict:
    study = study.results()
    return {"choices": findings.choices_table(study), "results": findings.results_table(study),
            "activity": findings.activity_table(study), "diagnosis": findings.diagnosis_table(study),
            "warm-up": findings.warmup_table(study), "l1": findings.l1_tradeoff_table(study)}


def _texts(study: Study) -> dict:
    study = study.results()
    return {"search": findings.search_text(study), "lr": findings.lr_facts_text(study),
            "momentum": findings.momentum_text(study), "activity": findings.activity_text(study),
            "discussion": findings.discussion_text(study), "late l1": findings.late_l1_text(study)}


def test_an_exported_study_imported_elsewhere_renders_the_same_tables_and_trains_nothing(
        smoke_results, tmp_path, monkeypatch, capsys):
    from hwutils.runner import main

    results, _ = smoke_results
    out = tmp_path / "smoke.json.gz"
    assert main(["export", "--profile", "smoke", "--results-dir", str(results), "--out", str(out)]) == 0
    assert "runs of profile smoke" in capsys.readouterr().out
    elsewhere = tmp_path / "elsewhere"
    assert main(["import", str(out), "--results-dir", str(elsewhere)]) == 0
    assert "imported" in capsys.readouterr().out
    assert not list(elsewhere.glob("*.pt"))  # no weights travel
    monkeypatch.setattr(experiments, "fit_members", _no_training)
    here, there = Study("smoke", results_dir=results, progress=False), Study("smoke", results_dir=elsewhere,
                                                                              progress=False)
    for name, table in _tables(here).items():
        assert table.round(4).equals(_tables(there)[name].round(4)), name
    assert _texts(here) == _texts(there)
    provenance = bundle.read_provenance(elsewhere, "smoke")
    assert provenance and provenance[0]["device"] and provenance[0]["commit"]


def test_importing_twice_or_a_bundle_keyed_differently_is_said_in_one_line(smoke_results, tmp_path, capsys):
    from hwutils.runner import main

    results, _ = smoke_results
    out = tmp_path / "smoke.json.gz"
    main(["export", "--profile", "smoke", "--results-dir", str(results), "--out", str(out)])
    target = tmp_path / "target"
    main(["import", str(out), "--results-dir", str(target)])
    capsys.readouterr()
    assert main(["import", str(out), "--results-dir", str(target)]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith("hwutils.study import: all ") and "already in" in said and "\n" not in said
    record = json.loads(next(results.glob("*.json")).read_text())
    record["config"]["train"]["lr"] *= 2  # a run another version would key differently, sealed as it would
    other = tmp_path / "other.json.gz"
    bundle.export_runs([seal_record(record, record["weights_sha256"])], other, bundle.provenance(profile="smoke"))
    fresh = tmp_path / "fresh"
    assert main(["import", str(other), "--results-dir", str(fresh)]) == 2
    said = capsys.readouterr().err.strip()
    assert "keyed differently by this checkout" in said and "nothing imported" in said and "\n" not in said
    assert not fresh.exists() or not list(fresh.glob("*.json"))


def test_the_notebook_after_the_runner_trains_no_mnist_run(smoke_results, tmp_path):
    # What `make report PROFILE=smoke` does with the runner's results folder: execute notebook 03.
    papermill = pytest.importorskip("papermill")
    results, _ = smoke_results
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    before = {p.name: p.stat().st_mtime_ns for p in copy.glob("*.json")}
    papermill.execute_notebook(str(ROOT / "notebooks" / "03_mnist_regularization.ipynb"),
                               str(tmp_path / "03.ipynb"), parameters={"profile": "smoke", "results_dir": str(copy)},
                               kernel_name="hw3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    after = {p.name: p.stat().st_mtime_ns for p in copy.glob("*.json")}
    assert after == before, "runs trained or rewritten: " + ", ".join(sorted(set(after.items()) ^ set(before.items())))


def test_a_study_stopped_before_its_final_runs_travels_as_a_partial_bundle_and_finishes_elsewhere(
        smoke_results, tmp_path, capsys):
    # A GPU window ended after the constants were searched: its results go elsewhere without
    # weights, and the final runs, which read test errors off the constants' runs, train there.
    import math

    from hwutils.cache import run_stem
    from hwutils.experiments import run_key
    from hwutils.runner import main

    results, _ = smoke_results
    copy = tmp_path / "stopped"
    shutil.copytree(results, copy)
    study = Study("smoke", results_dir=copy, progress=False)
    *earlier, final = study.plan()
    key = lambda m, s: run_key(m, study.data.spec, s)  # noqa: E731  (the final runs' key)
    before = {run_key(m, study._data(stage.batches[b].data).spec, s) for stage in earlier for b, m, s in stage.jobs()}
    dropped = [(m, s) for _, m, s in final.jobs() if key(m, s) not in before]
    for m, s in dropped:
        stem = run_stem(copy, m.name, key(m, s))
        for path in stem.parent.glob(stem.name + ".*"):
            path.unlink()
    reread = [(m, s) for _, m, s in final.jobs() if key(m, s) in before]  # a search's choice is a final run
    for m, s in reread:  # as the search left them: no test error yet
        path = run_stem(copy, m.name, key(m, s)).with_suffix(".json")
        record = json.loads(path.read_text())
        path.write_text(json.dumps(seal_record({**record, "test_error": float("nan")}, record["weights_sha256"])))
    out = tmp_path / "partial.json.gz"
    assert main(["export", "--profile", "smoke", "--results-dir", str(copy), "--out", str(out)]) == 1
    assert main(["export", "--profile", "smoke", "--results-dir", str(copy), "--out", str(out), "--partial"]) == 0
    names = {(m.name, key(m, s)) for m, s in dropped}
    assert f"partial: {len(names)} of" in capsys.readouterr().out
    content = json.loads(gzip.decompress(out.read_bytes()))
    assert content["provenance"]["partial"].endswith("runs")
    travelled = {r["key"]: r for r in content["runs"]}
    assert reread and all(math.isfinite(travelled[key(m, s)]["test_error"]) for m, s in reread)
    elsewhere = tmp_path / "elsewhere"
    assert main(["import", str(out), "--results-dir", str(elsewhere)]) == 0
    trained = []
    real = experiments.fit_members
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiments, "fit_members",
                      lambda models, *a, **k: trained.append(len(models)) or real(models, *a, **k))
        Study("smoke", results_dir=elsewhere, progress=False).train_all()
    assert sum(trained) == len(names)  # the final runs alone
    whole = ["export", "--profile", "smoke", "--results-dir", str(elsewhere), "--out", str(tmp_path / "all.json.gz")]
    assert main(whole) == 0


def test_the_discussion_names_where_table9s_gaps_fall_against_this_runs_paired_intervals(smoke_results, monkeypatch):
    from hwutils.profiles import TABLE9_TEST_ERROR

    results, _ = smoke_results
    monkeypatch.setattr(experiments, "fit_members", _no_training)
    study = Study("smoke", results_dir=results, progress=False).results()
    rows, text = findings.table9_rows(study), findings.table9_text(study)
    assert list(rows.index) == list(TABLE9_TEST_ERROR)
    for name, row in rows.drop(index="L2").iterrows():
        assert name in text
        low, high = (float(x) for x in row["95 % interval"].strip("[]").split(", "))
        assert (row["Table 9's gap inside"] == "yes") == (low <= row["gap to L2, Table 9"] <= high)
    questions = findings.questions_text(study)
    assert all(q in questions for q in ("doing something?", "tuned as well as the others?", "larger than the noise?"))
    assert "tie" not in (questions + text + findings.discussion_text(study)).lower().replace("tied", "")


# --------------------------------------------------------------------------- shards, SLURM, faults, tables
def _records(folder: Path) -> dict:
    """Each run's file name and its validation and test errors (NaN as None, so that equal means equal)."""
    import math

    def plain(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    return {path.name: (plain(r.get("val_error")), plain(r.get("test_error")))
            for path in sorted(folder.glob("*.json")) for r in [json.loads(path.read_text())]}


def _runner_env(mnist_dir) -> dict:
    return {**os.environ, "HWUTILS_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(ROOT)}


def test_a_lone_shard_ends_by_itself_naming_the_runs_it_waits_for(mnist_dir, tmp_path):
    import time

    from hwutils.study import PENDING_EXIT

    argv = [sys.executable, "-m", "hwutils.study", "--profile", "smoke", "--results-dir", str(tmp_path / "r"),
            "--shard", "1/2", "--wait", "1"]
    start = time.monotonic()
    done = subprocess.run(argv, cwd=tmp_path, env=_runner_env(mnist_dir), capture_output=True, text=True, timeout=300)
    assert done.returncode == PENDING_EXIT == 75, done.stderr[-2000:]
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("hwutils.study: shard 1/2: its part of stage 'probes' is done; the stage still needs ")
    assert "stage 'learning rates' needs" in said  # the search does not wait for the probes: its part trained too
    assert said.endswith("run the other shards, then this command again") and "Traceback" not in done.stderr
    assert time.monotonic() - start < 120


def test_two_shards_at_once_then_one_process_give_exactly_the_records_of_a_one_process_run(
        smoke_results, mnist_dir, tmp_path):
    from hwutils.runner import main

    results, _ = smoke_results
    shared = tmp_path / "shared"
    argv = [sys.executable, "-m", "hwutils.study", "--profile", "smoke", "--results-dir", str(shared), "--wait", "30"]
    shards = [subprocess.Popen([*argv, "--shard", f"{i}/2"], cwd=tmp_path, env=_runner_env(mnist_dir),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    said = [shard.communicate(timeout=600) for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], [err[-1500:] for _, err in said]
    assert main(["--profile", "smoke", "--results-dir", str(shared)]) == 0
    assert _records(shared) == _records(results)


@pytest.mark.parametrize("first", [0, 1, 7])
def test_shard_auto_reads_the_slurm_array_whatever_its_first_index(first):
    from hwutils.runner import shard_of

    for i in range(3):
        env = {"SLURM_ARRAY_TASK_ID": str(first + i), "SLURM_ARRAY_TASK_COUNT": "3",
               "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_MAX": str(first + 2)}
        assert shard_of("auto", env) == (i, 3)
    assert shard_of("2/5", {}) == (1, 5)


def test_shard_auto_outside_a_slurm_array_is_one_line(monkeypatch, capsys, tmp_path):
    from hwutils.runner import SLURM_ARRAY, main, shard_of

    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN not set"):
        shard_of("auto", {})
    with pytest.raises(ValueError, match="contiguous array"):
        shard_of("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1",
                          "SLURM_ARRAY_TASK_MAX": "3"})  # --array=1-3:2
    for name in SLURM_ARRAY:
        monkeypatch.delenv(name, raising=False)
    assert main(["--profile", "smoke", "--shard", "auto", "--results-dir", str(tmp_path)]) == 2
    said = capsys.readouterr().err.strip()
    assert "--shard auto:" in said and "sbatch --array=1-N" in said and "\n" not in said


def test_check_says_whether_the_study_is_complete_and_trains_nothing(smoke_results, tmp_path, monkeypatch, capsys):
    from hwutils.runner import main

    results, _ = smoke_results
    monkeypatch.setattr(experiments, "fit_members", _no_training)
    assert main(["--profile", "smoke", "--results-dir", str(results), "--check"]) == 0
    assert "the study is complete" in capsys.readouterr().out
    assert main(["--profile", "smoke", "--results-dir", str(tmp_path / "empty"), "--check"]) == 75
    assert "runs of profile smoke are not in" in capsys.readouterr().out


def test_a_results_folder_is_expanded_and_a_relative_one_is_in_the_project_wherever_the_command_runs(
        smoke_results, tmp_path, monkeypatch, capsys):
    from hwutils import runner
    from hwutils.runner import main, results_folder

    assert (runner.PROJECT_ROOT / "pyproject.toml").is_file()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert results_folder("~/x") == tmp_path / "home" / "x"
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(runner, "PROJECT_ROOT", project)
    monkeypatch.chdir(elsewhere)
    assert results_folder("results") == project / "results"
    results, _ = smoke_results
    bundle_file = tmp_path / "smoke.json.gz"
    assert main(["export", "--profile", "smoke", "--results-dir", str(results), "--out", str(bundle_file)]) == 0
    assert main(["import", str(bundle_file), "--results-dir", "results"]) == 0
    assert f"into {project / 'results'}" in capsys.readouterr().out
    assert list((project / "results").glob("*.json")) and not (elsewhere / "results").exists()
    monkeypatch.setattr(experiments, "fit_members", _no_training)
    assert main(["--profile", "smoke", "--results-dir", "~/cache", "--check"]) == 75
    assert f"hwutils.study: results in {tmp_path / 'home' / 'cache'}" in capsys.readouterr().out


def test_networks_too_large_for_memory_are_refused_up_front_with_the_estimate(tmp_path, capsys, monkeypatch):
    from hwutils.runner import main

    monkeypatch.setattr(experiments, "fit_members", _no_training)
    assert main(["--profile", "smoke", "--hidden", "100000", "100000", "--results-dir", str(tmp_path)]) == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith("hwutils.study: hidden [100000, 100000] at batch") and "\n" not in said
    assert "GB (weights, gradients, momentum and activations) but this machine has" in said
    assert "give smaller --hidden widths" in said


def test_a_run_whose_loss_becomes_nan_ends_in_one_line_naming_it_and_its_learning_rate(
        mnist_dir, tmp_path, monkeypatch, capsys):
    from hwutils import training
    from hwutils.runner import main

    real = training.fit_members

    def diverging(models, train, val, configs, **kwargs):  # the first run trains at a rate that blows up
        return real(models, train, val, [c.replace(lr=1e12, warmup_epochs=0.0) for c in configs],
                    **{**kwargs, "on_nan": "raise"})

    monkeypatch.setenv("HWUTILS_DATA_DIR", str(mnist_dir))
    monkeypatch.setattr(experiments, "fit_members", diverging)
    assert main(["--profile", "smoke", "--results-dir", str(tmp_path), "--seeds", "0"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars, closed first
    assert said.startswith("hwutils.study: a run diverged: ")
    assert "(seed 0): training loss became nan" in said and "lr=1e+12" in said and "lower the learning rate" in said


def test_the_results_export_as_csv_tables_that_pandas_reads_back(smoke_results, tmp_path, capsys):
    import pandas as pd

    from hwutils.runner import main

    results, _ = smoke_results
    assert main(["export", "--profile", "smoke", "--results-dir", str(results), "--csv", str(tmp_path)]) == 0
    assert "runs.csv and" in capsys.readouterr().out
    runs, curves = pd.read_csv(tmp_path / "runs.csv"), pd.read_csv(tmp_path / "curves.csv")
    study = Study("smoke", results_dir=results, progress=False)
    planned = {(m.name, experiments.run_key(m, study._data(st.batches[b].data).spec, s))
               for st in study.plan() for b, m, s in st.jobs()}
    assert set(zip(runs["method"], runs["key"])) == planned and len(runs) == len(planned)
    for column in ("method", "seed", "model.hidden", "model.dropout_hidden", "train.lr", "train.l2", "train.max_norm",
                   "data.train_subset", "val_error", "test_error", "epochs_run", "best_epoch", "wall_seconds",
                   "device", "precision"):
        assert column in runs.columns, column
    assert runs["test_error"].notna().any() and (runs["best_epoch"] <= runs["epochs_run"]).all()
    assert (runs["wall_seconds"] > 0).all() and set(runs["precision"]) == {"fp32"}
    assert list(curves.columns) == ["key", "method", "seed", "epoch", "metric", "value"]
    assert {"train_loss", "val_loss", "val_error"} <= set(curves["metric"])
    run = ["method", "key"]  # two methods may be the same run (the control is L2 at dropout's epochs)
    val = curves[curves["metric"] == "val_error"]
    assert val.groupby(run)["epoch"].max().to_dict() == runs.set_index(run)["epochs_run"].to_dict()
    per_epoch = val.groupby(run)["value"].apply(list)
    for (method, key), error in runs.set_index(run)["val_error"].items():
        assert min(abs(error - v) for v in per_epoch[method, key]) < 1e-6  # one of its epochs' errors
