"""Specifications of hwutils.bundle: results that travel without weights, sealed by digests; an
import refuses an edited or malformed bundle, or one that names a file outside the results folder,
in one line and before it writes anything, and moves the runs in only when all are written."""
import dataclasses
import errno
import gzip
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

from hwutils import bundle
from hwutils.bundle import BundleError, export_runs, import_runs, read_provenance
from hwutils.cache import canonical_sha256, load_run, run_stem, save_run
from hwutils.experiments import Method, run_key
from hwutils.models import ModelConfig
from hwutils.training import History, TrainConfig

SPEC = {"name": "moons", "n_train": 200, "noise": 0.1}
RUNS = [("L2 + L1 (late)", 0.1, 0), ("dropout + max-norm (paper's B.1)", 0.3, 0), ("L2, dropout's epochs", 0.1, 1)]


def a_cached_record(folder, name, lr, seed, test_error=0.02):
    """A run as the cache holds it after training (keyed as this checkout keys it), without training."""
    method = Method(name, ModelConfig(hidden=(4,)), TrainConfig(epochs=2, batch_size=50, lr=lr))
    key = run_key(method, SPEC, seed)
    history = History(train_loss=[0.5, 0.3], val_loss=[0.4, 0.35], val_error=[0.1, 0.08], epoch_seconds=[0.01] * 2,
                      iter_loss=[0.7, 0.6, 0.5, 0.4], best_epoch=2)
    record = {"method": name, "seed": seed, "key": key, "val_error": 0.08, "test_error": test_error,
              "config": {"model": dataclasses.asdict(method.model), "train": dataclasses.asdict(method.train),
                         "data": SPEC},
              "history": history.to_dict(), "measurements": {"version": 1, "units": {"0": [1.5, 2.0]}}}
    stem = run_stem(folder, name, key)
    save_run(stem, record, {"0.weight": torch.ones(4, 2)})
    return load_run(stem)[0]


@pytest.fixture
def exported(tmp_path):
    """A bundle of three runs (one a search's, without a test error yet) and its provenance."""
    trained = tmp_path / "trained"
    records = [a_cached_record(trained, name, lr, seed, test_error=math.nan if i == 2 else 0.02)
               for i, (name, lr, seed) in enumerate(RUNS)]
    path = tmp_path / "smoke.json.gz"
    export_runs(records, path, {"profile": "smoke", "device": "a GPU", "date": "2026-01-01", "commit": "abc"})
    return path, records


def content_of(path):
    return json.loads(gzip.decompress(Path(path).read_bytes()))


def sealed_again(content):
    """What an export would have written for ``content``: each run's and the bundle's digests made to
    match (so that only the checks after the digests can refuse it)."""
    if isinstance(content, dict) and isinstance(content.get("runs"), list):
        content["runs"] = [{**{k: v for k, v in run.items() if k != "record_sha256"},
                            "record_sha256": canonical_sha256({k: v for k, v in run.items() if k != "record_sha256"})}
                           if isinstance(run, dict) else run for run in content["runs"]]
    if isinstance(content, dict):  # over the header, the provenance and each run's digest
        rest = {k: v for k, v in content.items() if k != "bundle_sha256"}
        runs = [run.get("record_sha256") if isinstance(run, dict) else run for run in rest.get("runs", [])]
        content["bundle_sha256"] = canonical_sha256({**rest, "runs": runs})
    return content


def written(path, content):
    Path(path).write_bytes(gzip.compress(json.dumps(content).encode()))
    return path


def tree(root):
    """Everything under ``root``: {relative path: bytes, or None for a folder}."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(Path(root).rglob("*"))}


def refused(path, results, root):
    """import_runs refuses the bundle in one BundleError line and nothing under ``root`` changes."""
    before = tree(root)
    with pytest.raises(BundleError) as err:
        import_runs(path, results)
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message
    assert tree(root) == before
    return message


def test_an_exported_study_imports_elsewhere_and_loads_as_cached_runs_without_weights(exported, tmp_path, capsys):
    path, records = exported
    results = tmp_path / "elsewhere" / "results"
    summary = import_runs(path, results)
    assert summary.startswith(f"imported 3 runs into {results} from {path}") and "trained on a GPU" in summary
    for record in records:
        loaded, state = load_run(run_stem(results, record["method"], record["key"]))
        assert state is None and loaded["weights_sha256"] is None
        same = ("method", "seed", "key", "val_error", "config", "measurements")
        assert {k: loaded[k] for k in same} == {k: record[k] for k in same}
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in results.iterdir()) == sorted(
        [run_stem(results, r["method"], r["key"]).name + ".json" for r in records] + ["provenance"])
    assert read_provenance(results, "smoke")[0]["device"] == "a GPU"


def test_each_run_travels_with_the_digest_of_its_record_as_it_travels(exported):
    path, records = exported
    content = content_of(path)
    assert content["version"] == bundle.VERSION and len(content["bundle_sha256"]) == 64
    for run, record in zip(content["runs"], records):
        assert "weights_sha256" not in run and "schema" not in run
        assert run["record_sha256"] == canonical_sha256({k: v for k, v in run.items() if k != "record_sha256"})
        assert run["record_sha256"] != record["record_sha256"]  # the cache's covers the weights' digest too
    assert sealed_again(content_of(path)) == content


@pytest.mark.parametrize("edit", [
    lambda run: run.update(test_error=0.0123),
    lambda run: run.update(val_error=0.0123),
    lambda run: run["history"]["val_error"].__setitem__(0, 0.0123),
    lambda run: run["measurements"]["units"]["0"].append(3.0),
    lambda run: run["config"]["train"].update(lr=0.2),
], ids=["test_error", "val_error", "history", "measurements", "config"])
def test_a_bundle_with_an_edited_number_is_refused_in_one_line_and_writes_nothing(exported, tmp_path, edit):
    path, _ = exported
    content = content_of(path)
    edit(content["runs"][1])
    message = refused(written(path, content), tmp_path / "elsewhere" / "results", tmp_path)
    assert message.startswith(f"{path}: run 1 (dropout + max-norm (paper's B.1), seed 0) was edited or damaged")
    assert "record_sha256" in message and "nothing imported" in message
    content["bundle_sha256"] = bundle._sealed(content)["bundle_sha256"]  # the bundle's digest alone is not enough
    assert "record_sha256" in refused(written(path, content), tmp_path / "elsewhere" / "results", tmp_path)


def test_a_bundle_with_edited_provenance_is_refused_in_one_line(exported, tmp_path):
    path, _ = exported
    content = content_of(path)
    content["provenance"]["device"] = "a bigger GPU"
    message = refused(written(path, content), tmp_path / "elsewhere", tmp_path)
    assert "does not match its bundle_sha256" in message and "nothing imported" in message


def test_a_bundle_of_the_format_before_digests_is_refused_in_one_line(exported, tmp_path):
    path, _ = exported
    content = content_of(path)
    content["version"] = 1
    message = refused(written(path, sealed_again(content)), tmp_path / "elsewhere", tmp_path)
    assert "is bundle format 1, this checkout reads 2" in message


def test_a_bundle_from_another_version_of_the_code_is_refused_as_keyed_differently(exported, tmp_path):
    path, _ = exported
    content = content_of(path)
    content["runs"][0]["config"]["train"]["lr"] *= 2  # sealed as its own version's export would have
    message = refused(written(path, sealed_again(content)), tmp_path / "elsewhere", tmp_path)
    assert "1 of 3 runs are keyed differently by this checkout" in message and "nothing imported" in message


def _outside(tmp_path):
    return str(tmp_path / "outside" / "abs")


@pytest.mark.parametrize("craft, problem", [
    (lambda c, t: c["runs"][0].update(method=_outside(t)), "cannot name a run's files (it contains '/')"),
    (lambda c, t: c["runs"][0].update(method="../x"), "cannot name a run's files (it contains '/')"),
    (lambda c, t: c["runs"][0].update(method="../../../../../../tmp/x"), "it contains '/'"),
    (lambda c, t: c["runs"][0].update(method="sub/dir"), "it contains '/'"),
    (lambda c, t: c["runs"][0].update(method=".."), "it starts with '.'"),
    (lambda c, t: c["runs"][0].update(method="..\\x"), "it contains '\\\\'"),
    (lambda c, t: c["runs"][0].update(method="a\x00b"), "it contains '\\x00'"),
    (lambda c, t: c["runs"][0].update(method="x" * 500), "it has 500 characters"),
    (lambda c, t: c["runs"][0].update(key="../" + c["runs"][0]["key"]), "is not 16 hex digits"),
    (lambda c, t: c["runs"][0].update(key=c["runs"][0]["key"][:8] + "/" + c["runs"][0]["key"][9:]),
     "is not 16 hex digits"),
    (lambda c, t: c["provenance"].update(profile="../../etc/x"), "names profile ../../etc/x"),
    (lambda c, t: c["provenance"].update(profile=_outside(t)), "which cannot begin a file name"),
    (lambda c, t: c["provenance"].update(profile=".."), "names profile .."),
    (lambda c, t: c["provenance"].update(profile=["smoke"]), "names profile ['smoke']"),
], ids=["absolute", "dot-dot-slash", "deep", "sub-folder", "dot-dot", "backslash", "nul", "long", "key-dot-dot",
        "key-slash", "profile-dot-dot", "profile-absolute", "profile-is-dot-dot", "profile-list"])
def test_a_run_name_that_is_an_absolute_path_is_refused_and_writes_nothing_anywhere(exported, tmp_path, craft,
                                                                                     problem):
    path, _ = exported
    content = content_of(path)
    craft(content, tmp_path)
    results = tmp_path / "here" / "results"
    message = refused(written(path, sealed_again(content)), results, tmp_path)  # the whole tmp tree, its parent too
    assert problem in message and "nothing imported" in message
    assert not (tmp_path / "outside").exists() and not results.exists()


def edited(change):
    """A mutation that changes the bundle's content in place."""
    return lambda content: (change(content), content)[1]


MALFORMED = {
    "top-level list": lambda c: [c],
    "top-level text": lambda c: "hw3-results-bundle",
    "no format": edited(lambda c: c.pop("format")),
    "no runs": edited(lambda c: c.pop("runs")),
    "runs a mapping": edited(lambda c: c.update(runs={"0": c["runs"][0]})),
    "runs of numbers": edited(lambda c: c.update(runs=[1, 2])),
    "a run a list": edited(lambda c: c["runs"].__setitem__(0, list(c["runs"][0].items()))),
    "a run null": edited(lambda c: c["runs"].__setitem__(1, None)),
    "no runs at all": edited(lambda c: c.update(runs=[])),
    "version text": edited(lambda c: c.update(version="2")),
    "provenance a list": edited(lambda c: c.update(provenance=[["profile", "smoke"]])),
    "provenance null": edited(lambda c: c.update(provenance=None)),
    "no provenance": edited(lambda c: c.pop("provenance")),
    "no bundle digest": edited(lambda c: c.pop("bundle_sha256")),
    "bundle digest a number": edited(lambda c: c.update(bundle_sha256=5)),
    "no run digest": edited(lambda c: c["runs"][0].pop("record_sha256")),
    "run digest a list": edited(lambda c: c["runs"][0].update(record_sha256=[])),
    "method a number": edited(lambda c: c["runs"][0].update(method=5)),
    "method null": edited(lambda c: c["runs"][0].update(method=None)),
    "method a list": edited(lambda c: c["runs"][0].update(method=["L2"])),
    "method with a newline": edited(lambda c: c["runs"][0].update(method="L2\nL1")),
    "no method": edited(lambda c: c["runs"][0].pop("method")),
    "seed text": edited(lambda c: c["runs"][0].update(seed="0")),
    "no key": edited(lambda c: c["runs"][0].pop("key")),
    "key a number": edited(lambda c: c["runs"][0].update(key=123)),
    "config a list": edited(lambda c: c["runs"][0].update(config=[])),
    "model settings a list": edited(lambda c: c["runs"][0]["config"].update(model=[4])),
    "no data spec": edited(lambda c: c["runs"][0]["config"].pop("data")),
    "unknown train setting": edited(lambda c: c["runs"][0]["config"]["train"].update(speed=1)),
    "train setting of a wrong kind": edited(lambda c: c["runs"][0]["config"]["train"].update(epochs="two")),
    "history a list": edited(lambda c: c["runs"][0].update(history=[])),
    "history's errors a mapping": edited(lambda c: c["runs"][0]["history"].update(val_error={"a": 1})),
    "test error text": edited(lambda c: c["runs"][0].update(test_error="0.02")),
    "a run twice": edited(lambda c: c["runs"].append(c["runs"][0])),
}


DIGESTS = {"no bundle digest", "bundle digest a number", "no run digest", "run digest a list"}  # not resealed


@pytest.mark.parametrize("mutate, reseal", [
    pytest.param(mutate, reseal, id=f"{name}-{'resealed' if reseal else 'as-edited'}")
    for name, mutate in MALFORMED.items() for reseal in (True, False) if not (reseal and name in DIGESTS)])
def test_a_malformed_bundle_is_one_line_not_a_traceback(exported, tmp_path, mutate, reseal):
    path, _ = exported
    content = mutate(content_of(path))
    if reseal:
        sealed_again(content)
    refused(written(path, content), tmp_path / "elsewhere", tmp_path)


@pytest.mark.parametrize("raw", [b"not gzip", gzip.compress(b"{not json"), gzip.compress(b"\xff\xfe"),
                                 gzip.compress(b'{"format": "hw3-results-bundle", "version": 2, "runs": '
                                               + b"[" * 100_000 + b"]" * 100_000 + b"}")],
                         ids=["not-gzip", "not-json", "not-text", "nested-too-deeply"])
def test_a_file_that_is_not_a_bundle_is_one_line(tmp_path, raw):
    path = tmp_path / "bundle.json.gz"
    path.write_bytes(raw)
    message = refused(path, tmp_path / "results", tmp_path)
    assert str(path) in message


def _paths_into(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths_into(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from _paths_into(v, prefix + (i,))


REPLACEMENTS = [None, True, 0, -1, 2.5, math.inf, "", "x", "../x", "/abs", [], [1], {}, {"a": 1}, "0" * 16]


def test_random_mutations_of_a_bundle_are_imported_whole_or_refused_in_one_line(exported, tmp_path, capsys):
    path, _ = exported
    rng = random.Random(0)
    paths = [p for p in _paths_into(content_of(path)) if p]
    outcomes = {"imported": 0, "refused": 0}
    for case in range(150):
        content = content_of(path)
        where = rng.choice(paths)
        *parent_keys, last = where
        parent = content
        for k in parent_keys:
            parent = parent[k]
        if isinstance(parent, dict) and rng.random() < 0.3:
            del parent[last]
        else:
            parent[last] = rng.choice(REPLACEMENTS)
        if rng.random() < 0.8:
            sealed_again(content)
        results = tmp_path / f"case{case}" / "results"
        try:
            summary = import_runs(written(tmp_path / "mutated.json.gz", content), results)
        except BundleError as err:
            assert "\n" not in str(err), (where, str(err))
            assert not results.exists() or not list(results.glob("*.json")), where
            outcomes["refused"] += 1
        else:  # a mutation that leaves a valid bundle: every run imported loads quietly
            assert "\n" not in summary
            assert all(load_run(p.with_suffix("")) is not None for p in results.glob("*.json")), where
            assert capsys.readouterr().err == "", where
            outcomes["imported"] += 1
        left = [p for p in results.parent.rglob("*") if p != results and results not in p.parents]
        assert left == [] and not list(results.glob(".import-*")), where
    assert outcomes["refused"] > 100 and outcomes["imported"] > 0, outcomes
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("case")) == [
        "mutated.json.gz", "smoke.json.gz", "trained"]


@pytest.mark.parametrize("moves_that_work, said, runs_in", [
    (2, "moved 2 of 3 runs of", 2), (3, "moved all 3 runs but not their provenance", 3), (0, "nothing imported", 0)])
def test_an_import_that_fails_half_way_says_how_many_runs_it_moved_in(exported, tmp_path, monkeypatch,
                                                                     moves_that_work, said, runs_in):
    path, records = exported
    results = tmp_path / "elsewhere"
    real, calls = os.replace, []

    def replace_until_it_fails(src, dst):
        calls.append(dst)
        if len(calls) > moves_that_work:
            raise OSError(errno.EACCES, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace_until_it_fails)
    with pytest.raises(BundleError) as err:
        import_runs(path, results)
    message = str(err.value)
    assert "\n" not in message and f"cannot write {results}: Permission denied" in message and said in message
    assert ("now partial" in message) == (runs_in > 0) and "import again" in message
    monkeypatch.undo()
    assert len(list(results.glob("*.json"))) == runs_in and not list(results.glob(".import-*"))
    import_runs(path, results)  # a second import finishes it
    assert all(load_run(run_stem(results, r["method"], r["key"])) is not None for r in records)
    assert read_provenance(results, "smoke")


def test_a_full_disk_while_writing_the_runs_imports_none_and_leaves_no_temporary_folder(exported, tmp_path,
                                                                                        monkeypatch):
    path, _ = exported
    results = tmp_path / "elsewhere"
    real, calls = Path.write_text, []

    def full_after_one(self, *args, **kwargs):
        calls.append(self)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_after_one)
    with pytest.raises(BundleError) as err:
        import_runs(path, results)
    message = str(err.value)
    assert "\n" not in message and f"no space left on device writing {results}" in message
    assert "nothing imported" in message
    assert not list(results.glob("*.json")) and not list(results.glob(".import-*"))


def test_importing_again_keeps_the_runs_already_there_and_says_how_many(exported, tmp_path):
    path, records = exported
    results = tmp_path / "elsewhere"
    import_runs(path, results)
    assert import_runs(path, results).startswith(f"all 3 runs of {path} are already in {results}: nothing imported")
    run_stem(results, records[0]["method"], records[0]["key"]).with_suffix(".json").unlink()
    summary = import_runs(path, results)
    assert summary.startswith(f"imported 1 runs into {results}") and "2 were already there and were kept" in summary
    assert len(list((results / "provenance").iterdir())) == 1
