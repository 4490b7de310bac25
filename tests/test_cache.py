"""Specifications of hwutils.cache: atomic, concurrency-safe writes; records that prove what they are;
a cached run that is unreadable or fails a check is named, set aside and retrained."""
import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hwutils import cache
from hwutils.cache import (SCHEMA_VERSION, CacheError, RecordError, StaleRecordError, check_record, check_writable,
                           load_run, run_stem, save_run, seal_record, update_record)
from hwutils.experiments import Method, run_sweep
from hwutils.models import ModelConfig
from hwutils.training import History, TrainConfig

KEY = "0123456789abcdef"


def a_record(name="L2", key=KEY, **changes):
    """A complete record of a run (what hwutils.experiments stores), before save_run adds its proofs."""
    history = History(train_loss=[0.5], val_loss=[0.4], val_error=[0.1], epoch_seconds=[0.01], best_epoch=1)
    record = {"method": name, "seed": 0, "key": key, "val_error": 0.1, "test_error": 0.2,
              "config": {"model": {"hidden": [3]}, "train": {"lr": 0.1}, "data": {}}, "history": history.to_dict()}
    return {**record, **changes}


def small_run(tmp_path, name="L2"):
    stem = run_stem(tmp_path / "results", name, KEY)
    record, state = a_record(name), {"0.weight": torch.arange(6.0).reshape(2, 3), "0.bias": torch.zeros(2)}
    save_run(stem, record, state)
    return stem, record, state


def test_a_saved_run_loads_back_with_its_proofs_and_leaves_no_temporary_files(tmp_path):
    stem, record, state = small_run(tmp_path)
    loaded_record, loaded_state = load_run(stem)
    assert loaded_record == {**record, "schema": SCHEMA_VERSION, "weights_sha256": loaded_record["weights_sha256"],
                             "record_sha256": loaded_record["record_sha256"]}
    assert len(loaded_record["weights_sha256"]) == 64 and len(loaded_record["record_sha256"]) == 64
    assert torch.equal(loaded_state["0.weight"], state["0.weight"])
    assert sorted(p.name for p in stem.parent.iterdir()) == [stem.name + ".json", stem.name + ".pt"]


def test_a_run_that_was_never_saved_is_not_cached(tmp_path):
    assert load_run(run_stem(tmp_path, "L2", "00000000feedface")) is None


def test_a_run_saved_without_weights_loads_as_its_record_alone(tmp_path):
    stem = run_stem(tmp_path, "L2", KEY)
    save_run(stem, a_record(), None)
    record, state = load_run(stem)
    assert state is None and record["weights_sha256"] is None and record["val_error"] == 0.1
    assert not stem.with_suffix(".pt").exists()


@pytest.mark.parametrize("damage, reason", [
    (lambda stem: stem.with_suffix(".json").write_text('{"method": "L2", "hist'), "JSONDecodeError"),
    (lambda stem: stem.with_suffix(".json").write_text("[1, 2]"), "not an object"),
    (lambda stem: stem.with_suffix(".json").write_bytes(b"\xff\xfe\x00"), "UnicodeDecodeError"),
    (lambda stem: stem.with_suffix(".pt").write_bytes(stem.with_suffix(".pt").read_bytes()[:100]), "sha256"),
    (lambda stem: stem.with_suffix(".pt").write_bytes(b""), "sha256"),
    (lambda stem: stem.with_suffix(".pt").unlink(), "weight file"),
], ids=["truncated-json", "json-list", "binary-json", "truncated-weights", "empty-weights", "no-weights"])
def test_a_damaged_cached_run_is_named_in_one_line_moved_aside_and_not_loaded(tmp_path, capsys, damage, reason):
    stem, record, state = small_run(tmp_path)
    damage(stem)
    assert load_run(stem) is None  # the caller retrains
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and reason in err and "retraining" in err
    assert str(stem) in err and ".corrupt" in err
    assert not stem.with_suffix(".json").exists() and not stem.with_suffix(".pt").exists()
    assert stem.with_name(stem.name + ".json.corrupt").exists()
    save_run(stem, record, state)  # the retrained run is stored and loads again
    assert load_run(stem)[0]["val_error"] == record["val_error"]


@pytest.mark.parametrize("change, reason", [
    (lambda r: r.pop("val_error"), "lacks val_error"),
    (lambda r: r.pop("history"), "lacks history"),
    (lambda r: r.update(val_error="0.1"), "its val_error is str '0.1', not a number"),
    (lambda r: r.update(seed=True), "its seed is bool"),
    (lambda r: r.update(test_error="nan"), "its test_error is str"),
    (lambda r: r.update(config={"model": {}}), "config lacks the train settings"),
    (lambda r: r["history"].pop("val_loss"), "history lacks val_loss"),
    (lambda r: r["history"].update(val_error=["0.1"]), "val_error is not a list of numbers"),
    (lambda r: r["history"].update(best_epoch=5), "best_epoch 5 is not one of its 1 epochs"),
    (lambda r: r["history"].update(surprise=1), "unknown field(s) surprise"),
    (lambda r: r.update(key="fedcba9876543210"), "the record of another run"),
    (lambda r: r.update(weights_sha256="abc"), "64 hex digits"),
    (lambda r: r.pop("record_sha256"), "lacks record_sha256"),
    (lambda r: r.update(test_error=0.0123), "does not match its record_sha256: edited or damaged"),
    (lambda r: r["history"]["val_error"].append(0.2), "does not match its record_sha256"),
    (lambda r: r["config"]["train"].update(lr=0.2), "does not match its record_sha256"),
    (lambda r: r.update(weights_sha256="0" * 64), "does not match its record_sha256"),
    (lambda r: r.update(extra=1), "does not match its record_sha256"),
])
def test_check_record_names_a_missing_or_mistyped_field_in_one_line(change, reason):
    record = seal_record(a_record(), None)
    check_record(record, KEY)
    change(record)
    with pytest.raises(RecordError) as err:
        check_record(record, KEY)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_a_record_without_a_schema_version_is_stale():
    with pytest.raises(StaleRecordError, match="no record schema version"):
        check_record(a_record(), KEY)


def test_a_record_that_does_not_belong_to_its_file_is_not_saved(tmp_path):
    with pytest.raises(RecordError, match="the record of another run"):
        save_run(run_stem(tmp_path, "L2", "fedcba9876543210"), a_record(), None)
    with pytest.raises(RecordError, match="of method 'L1' does not belong"):
        save_run(run_stem(tmp_path, "L2", KEY), a_record("L1"), None)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- a tiny point-cloud cache
def tiny(name, hidden=(4,), lr=0.1):
    return Method(name, ModelConfig(hidden=hidden), TrainConfig(epochs=1, batch_size=50, lr=lr))


def sweep(methods, data, folder):
    return run_sweep(methods, data, results_dir=folder, progress=False)


@pytest.fixture
def cached(tmp_path, moons):
    """Two runs of one architecture, cached in tmp_path: (methods, results, {name: stem})."""
    methods = [tiny("A", lr=0.1), tiny("B", lr=0.3)]
    results = sweep(methods, moons, tmp_path)
    stems = {r.method: run_stem(tmp_path, r.method, r.key) for r in results}
    return methods, results, stems


def heals(methods, first, data, folder, capsys):
    """The next run retrains what was set aside, under the right names, and the one after loads quietly."""
    again = sweep(methods, data, folder)
    assert [r.method for r in again] == [r.method for r in first]
    for new, old in zip(again, first):
        assert new.val_error == pytest.approx(old.val_error, abs=1e-6)
        assert torch.allclose(new.model.layers[0].weight, old.model.layers[0].weight, atol=1e-5)
    warnings = capsys.readouterr().err
    third = sweep(methods, data, folder)
    assert capsys.readouterr().err == "" and [r.val_error for r in third] == [r.val_error for r in again]
    return warnings


def one_line_per_run(warnings, n):
    lines = [line for line in warnings.splitlines() if line.startswith("warning: cached run")]
    assert len(lines) == n, warnings
    return lines


@pytest.mark.parametrize("change, reason", [
    (lambda r: r.pop("val_error"), "lacks val_error"),
    (lambda r: r.pop("history"), "lacks history"),
    (lambda r: r.update(val_error="0.1"), "its val_error is str"),
])
def test_a_cached_record_missing_a_field_or_mistyped_is_named_and_retrained(cached, moons, tmp_path, capsys,
                                                                            change, reason):
    methods, first, stems = cached
    path = stems["A"].with_suffix(".json")
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    line, = one_line_per_run(heals(methods, first, moons, tmp_path, capsys), 1)
    assert str(path) in line and reason in line and f"{path}.corrupt" in line


def test_a_record_of_an_older_schema_is_set_aside_as_stale_and_retrained(cached, moons, tmp_path, capsys):
    methods, first, stems = cached
    path = stems["B"].with_suffix(".json")
    record = json.loads(path.read_text())
    del record["schema"], record["weights_sha256"], record["record_sha256"]  # before records carried proofs
    path.write_text(json.dumps(record))
    line, = one_line_per_run(heals(methods, first, moons, tmp_path, capsys), 1)
    assert "no record schema version" in line and f"{path}.stale" in line
    assert Path(f"{path}.stale").exists()


def test_a_record_of_schema_2_without_its_own_digest_is_stale_and_retrained(cached, moons, tmp_path, capsys):
    methods, first, stems = cached
    path = stems["A"].with_suffix(".json")
    record = json.loads(path.read_text())
    del record["record_sha256"]
    path.write_text(json.dumps({**record, "schema": 2}))
    line, = one_line_per_run(heals(methods, first, moons, tmp_path, capsys), 1)
    assert f"has record schema 2, this hwutils reads version {SCHEMA_VERSION}" in line and f"{path}.stale" in line


def test_an_edited_test_error_in_a_cached_record_is_set_aside_and_retrained(cached, moons, tmp_path, capsys):
    methods, first, stems = cached
    path = stems["A"].with_suffix(".json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "test_error": 0.0123}))
    line, = one_line_per_run(heals(methods, first, moons, tmp_path, capsys), 1)
    assert str(path) in line and "its content does not match its record_sha256: edited or damaged" in line
    assert f"{path}.corrupt" in line and Path(f"{path}.corrupt").exists()
    assert json.loads(path.read_text())["test_error"] == first[0].test_error


def test_an_edited_number_anywhere_in_a_cached_record_is_caught(tmp_path, capsys):
    stem, _, _ = small_run(tmp_path)
    path = stem.with_suffix(".json")
    text = path.read_text()
    for old, new in (('"val_error": 0.1,', '"val_error": 0.09,'), ('[0.5]', '[0.25]'), ('"lr": 0.1', '"lr": 1'),
                     ('"seed": 0', '"seed": 1')):
        assert old in text
        path.write_text(text.replace(old, new, 1))
        assert load_run(stem) is None
        assert "does not match its record_sha256" in capsys.readouterr().err
        for p in tmp_path.glob("results/*.corrupt"):
            p.rename(p.with_suffix(""))  # back in place for the next edit


def test_a_record_brought_up_to_date_with_update_record_loads_without_a_warning(tmp_path, capsys):
    stem, _, state = small_run(tmp_path)
    record, _ = load_run(stem)
    update_record(stem, {**record, "test_error": 0.05, "measurements": {"version": 9, "units": [1, 2]}})
    loaded, loaded_state = load_run(stem)
    assert capsys.readouterr().err == ""
    assert loaded["test_error"] == 0.05 and loaded["measurements"]["units"] == [1, 2]
    assert loaded["weights_sha256"] == record["weights_sha256"] and loaded["record_sha256"] != record["record_sha256"]
    assert torch.equal(loaded_state["0.weight"], state["0.weight"])
    assert sorted(p.name for p in stem.parent.iterdir()) == [stem.name + ".json", stem.name + ".pt"]


def test_update_record_refuses_a_record_that_is_not_of_its_run(tmp_path):
    stem, _, _ = small_run(tmp_path)
    record, _ = load_run(stem)
    with pytest.raises(RecordError, match="the record of another run"):
        update_record(run_stem(stem.parent, "L2", "fedcba9876543210"), record)
    with pytest.raises(RecordError, match="lacks weights_sha256"):
        update_record(stem, a_record())


def test_swapped_weight_files_are_detected_and_both_runs_retrained(cached, moons, tmp_path, capsys):
    methods, first, stems = cached
    a, b = stems["A"].with_suffix(".pt"), stems["B"].with_suffix(".pt")
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    lines = one_line_per_run(heals(methods, first, moons, tmp_path, capsys), 2)
    assert all("sha256 is not the one its record names" in line for line in lines)


def test_swapped_records_are_detected_and_nothing_is_returned_under_another_name(cached, moons, tmp_path, capsys):
    methods, first, stems = cached
    a, b = stems["A"].with_suffix(".json"), stems["B"].with_suffix(".json")
    text_a, text_b = a.read_text(), b.read_text()
    a.write_text(text_b)
    b.write_text(text_a)
    lines = one_line_per_run(heals(methods, first, moons, tmp_path, capsys), 2)
    assert all("the record of another run" in line for line in lines)


def test_weights_of_another_architecture_are_named_and_retrained(cached, moons, tmp_path, capsys):
    methods, first, stems = cached
    wide = sweep([tiny("wide", hidden=(8,))], moons, tmp_path)[0]
    wide_weights = run_stem(tmp_path, "wide", wide.key).with_suffix(".pt").read_bytes()
    stems["A"].with_suffix(".pt").write_bytes(wide_weights)
    record = json.loads(stems["A"].with_suffix(".json").read_text())  # its digests made to match: only the
    update_record(stems["A"], {**record, "weights_sha256": cache._digest(wide_weights)})  # architecture is left
    line, = one_line_per_run(heals(methods, first, moons, tmp_path, capsys), 1)
    assert "weights are of another architecture (layers.0.weight is 8x2, this run's model needs 4x2)" in line


def test_a_disk_full_while_saving_is_one_line_naming_the_folder_and_leaves_nothing(tmp_path, monkeypatch):
    def full(path, data):
        with open(path, "wb") as f:
            f.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(CacheError) as err:
        save_run(run_stem(tmp_path, "L2", KEY), a_record(), {"w": torch.zeros(3)})
    message = str(err.value)
    assert message.startswith(f"no space left on device writing {tmp_path} (") and " MB free)" in message
    assert "\n" not in message and "results_dir" in message
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_neither_the_final_nor_a_temporary_file(tmp_path):
    def fail(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.atomic_write(tmp_path / "run.pt", fail)
    assert list(tmp_path.iterdir()) == []


WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from hwutils.cache import load_run, save_run
    from hwutils.training import History
    stem, me, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    state = {"w": torch.full((8, 8), 1.0)}
    history = History(train_loss=[0.5], val_loss=[0.4], val_error=[0.1], epoch_seconds=[0.01], best_epoch=1)
    record = {"method": "L2", "seed": 0, "key": stem.name.split("-")[-1], "val_error": 0.1, "test_error": 0.2,
              "config": {"model": {}, "train": {}}, "history": history.to_dict()}
    failures = 0
    for i in range(n):
        try:
            save_run(stem, {**record, "writer": me, "i": i}, state)
            loaded = load_run(stem)
            assert loaded is not None and torch.equal(loaded[1]["w"], state["w"])
        except Exception as err:
            failures += 1
            print(f"{type(err).__name__}: {err}", file=sys.stderr)
    print(failures)
""")


def test_two_processes_writing_the_same_run_never_fail_and_leave_it_loadable(tmp_path):
    stem = tmp_path / "results" / f"L2-{KEY}"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(stem), str(k), "150"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    outputs = [w.communicate(timeout=120) for w in writers]
    for (out, err), w in zip(outputs, writers):
        assert w.returncode == 0, err
        assert out.strip() == "0", f"failed writes: {out.strip()}; {err[:500]}"
        assert "warning" not in err
    record, state = load_run(stem)
    assert record["writer"] in (1, 2) and torch.equal(state["w"], torch.full((8, 8), 1.0))
    assert sorted(p.name for p in stem.parent.iterdir()) == [stem.name + ".json", stem.name + ".pt"]


def test_a_writable_results_folder_passes_and_is_not_created(tmp_path):
    assert check_writable(tmp_path / "new" / "results") == tmp_path / "new" / "results"
    assert list(tmp_path.iterdir()) == []


def test_a_results_folder_below_a_file_is_named_up_front(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError) as err:
        check_writable(tmp_path / "file" / "results")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "file" / "results") in message and "writable folder" in message


def test_an_unwritable_results_folder_is_named_with_the_reason(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.tempfile, "mkstemp", denied)  # what a read-only folder does (tests may run as root)
    with pytest.raises(CacheError, match=f"results_dir {tmp_path} is not writable: Permission denied"):
        check_writable(tmp_path)


def test_runs_of_a_method_whose_name_has_a_dot_each_keep_their_own_files(tmp_path):
    name = "dropout + max-norm (paper's B.1)"   # a dot: Path.with_suffix would cut the key off the file name
    keys = ["0123456789abcdef", "fedcba9876543210"]
    for key in keys:
        save_run(run_stem(tmp_path, name, key), a_record(name, key), None)
    for key in keys:
        assert load_run(run_stem(tmp_path, name, key))[0]["key"] == key
    assert len(list(tmp_path.glob("*.json"))) == 2


PROJECT_FILE_NAMES = {  # as run_stem named them before it checked names: caches made then stay valid
    "L2": "L2", "L1": "L1", "no penalty": "no_penalty", "early stopping": "early_stopping",
    "L1 (proximal)": "L1_(proximal)", "max-norm": "max-norm", "L2 + L1 (late)": "L2_p_L1_(late)",
    "L2 + KL-sparsity": "L2_p_KL-sparsity", "dropout + L2": "dropout_p_L2", "dropout + max-norm": "dropout_p_max-norm",
    "dropout + max-norm (authors' recipe)": "dropout_p_max-norm_(authors'_recipe)",
    "dropout + max-norm (paper's B.1)": "dropout_p_max-norm_(paper's_B_1)",
    "L2, dropout's epochs": "L2,_dropout's_epochs",
}


def test_the_project_method_names_keep_their_file_names(tmp_path):
    from hwutils.profiles import AUTHORS_RECIPE, LONG_L2, PAPER_B1, mnist_methods, mnist_profile, point_cloud_methods

    names = {m.name for m in mnist_methods(mnist_profile("smoke")) + point_cloud_methods()}
    assert names | {AUTHORS_RECIPE, LONG_L2, PAPER_B1} <= set(PROJECT_FILE_NAMES)  # every name the project uses
    for name, file_name in PROJECT_FILE_NAMES.items():
        assert run_stem(tmp_path, name, KEY) == tmp_path / f"{file_name}-{KEY}"


@pytest.mark.parametrize("name, problem", [
    ("/elsewhere/abs", "contains '/'"), ("../x", "contains '/'"), ("sub/dir", "contains '/'"),
    ("a\\b", "contains '\\\\'"), ("..", "starts with '.'"), (".hidden", "starts with '.'"),
    ("-rf", "starts with '-'"), ("", "is empty"), ("a\x00b", "contains '\\x00'"), ("a\nb", "contains '\\n'"),
    ("x" * 121, "has 121 characters"), (None, "not text"), (["L2"], "not text"),
])
def test_a_method_name_that_could_make_a_path_is_refused_in_one_line(tmp_path, name, problem):
    with pytest.raises(ValueError) as err:
        run_stem(tmp_path / "results", name, KEY)
    assert problem in str(err.value) and "cannot name a run's files" in str(err.value)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "../../etc/passwd",
                                 "01234567/9abcdef", "/123456789abcdef", None])
def test_a_run_key_that_is_not_16_hex_digits_is_refused(tmp_path, key):
    with pytest.raises(ValueError, match="is not 16 hex digits"):
        run_stem(tmp_path, "L2", key)


def test_a_run_whose_files_would_lie_outside_the_folder_through_a_link_is_refused(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / f"L2-{KEY}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="would lie outside"):
        run_stem(tmp_path / "results", "L2", KEY)


def test_a_cached_record_whose_method_names_a_path_is_set_aside_not_followed(tmp_path, capsys):
    stem, _, _ = small_run(tmp_path)
    record, _ = load_run(stem)
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(seal_record({**record, "method": "../../elsewhere"}, record["weights_sha256"])))
    assert load_run(stem) is None
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot name a run's files (it contains '/')" in err and f"{path}.corrupt" in err
