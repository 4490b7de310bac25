"""Specifications of hwutils.cache: atomic, concurrency-safe writes; unreadable runs named and retrained."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from hwutils import cache
from hwutils.cache import CacheError, check_writable, load_run, run_stem, save_run


def small_run(tmp_path, name="L2"):
    stem = run_stem(tmp_path / "results", name, "0123456789abcdef")
    record = {"method": name, "seed": 0, "val_error": 0.1, "test_error": 0.2}
    state = {"0.weight": torch.arange(6.0).reshape(2, 3), "0.bias": torch.zeros(2)}
    save_run(stem, record, state)
    return stem, record, state


def test_a_saved_run_loads_back_and_leaves_no_temporary_files(tmp_path):
    stem, record, state = small_run(tmp_path)
    loaded_record, loaded_state = load_run(stem)
    assert loaded_record == record and torch.equal(loaded_state["0.weight"], state["0.weight"])
    assert sorted(p.name for p in stem.parent.iterdir()) == [stem.name + ".json", stem.name + ".pt"]


def test_a_run_that_was_never_saved_is_not_cached(tmp_path):
    assert load_run(run_stem(tmp_path, "L2", "feedface")) is None


@pytest.mark.parametrize("damage, reason", [
    (lambda stem: stem.with_suffix(".json").write_text('{"method": "L2", "hist'), "JSONDecodeError"),
    (lambda stem: stem.with_suffix(".json").write_text("[1, 2]"), "not an object"),
    (lambda stem: stem.with_suffix(".json").write_bytes(b"\xff\xfe\x00"), "UnicodeDecodeError"),
    (lambda stem: stem.with_suffix(".pt").write_bytes(stem.with_suffix(".pt").read_bytes()[:100]), "PytorchStreamReader"),
    (lambda stem: stem.with_suffix(".pt").write_bytes(b""), "Error"),
], ids=["truncated-json", "json-list", "binary-json", "truncated-weights", "empty-weights"])
def test_a_corrupt_cached_run_is_named_moved_aside_and_not_loaded(tmp_path, capsys, damage, reason):
    stem, record, state = small_run(tmp_path)
    damage(stem)
    assert load_run(stem) is None  # the caller retrains
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is unreadable" in err and reason in err and "retraining" in err
    assert str(stem) in err and ".corrupt" in err
    assert not stem.with_suffix(".json").exists() and not stem.with_suffix(".pt").exists()
    assert stem.with_name(stem.name + ".json.corrupt").exists() and stem.with_name(stem.name + ".pt.corrupt").exists()
    save_run(stem, record, state)  # the retrained run is stored and loads again
    assert load_run(stem)[0] == record


def test_a_truncated_cached_record_is_named_and_retrained_by_run(tmp_path, moons, capsys):
    from hwutils.experiments import Method, run
    from hwutils.models import ModelConfig
    from hwutils.training import TrainConfig

    method = Method("tiny", ModelConfig(hidden=(4,)), TrainConfig(epochs=1, batch_size=50, lr=0.1))
    first = run(method, moons, seed=0, results_dir=tmp_path, progress=False)
    json_path = next(tmp_path.glob("*.json"))
    json_path.write_text(json_path.read_text()[:40])
    again = run(method, moons, seed=0, results_dir=tmp_path, progress=False)  # no JSONDecodeError
    assert again.val_error == pytest.approx(first.val_error)
    assert f"cached run {json_path} is unreadable" in capsys.readouterr().err
    assert json.loads(json_path.read_text())["method"] == "tiny"  # stored again, readable


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
    stem, me, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    state = {"w": torch.full((8, 8), 1.0)}
    failures = 0
    for i in range(n):
        try:
            save_run(stem, {"writer": me, "i": i}, state)
            loaded = load_run(stem)
            assert loaded is not None and torch.equal(loaded[1]["w"], state["w"])
        except Exception as err:
            failures += 1
            print(f"{type(err).__name__}: {err}", file=sys.stderr)
    print(failures)
""")


def test_two_processes_writing_the_same_run_never_fail_and_leave_it_loadable(tmp_path):
    stem = tmp_path / "results" / "L2-0123456789abcdef"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(stem), str(k), "150"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    outputs = [w.communicate(timeout=120) for w in writers]
    for (out, err), w in zip(outputs, writers):
        assert w.returncode == 0, err
        assert out.strip() == "0", f"failed writes: {out.strip()}; {err[:500]}"
        assert "unreadable" not in err
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
