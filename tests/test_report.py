import re

import pytest

from hwutils import report


def test_a_wrong_profile_fails_before_anything_runs():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        report.resolve_parameters("fast", {}, report.notebook_paths())


def test_an_override_no_notebook_declares_is_rejected_with_the_declared_names():
    with pytest.raises(report.ReportError, match="unknown parameter.*downsampel.*declare:.*downsample"):
        report.resolve_parameters("smoke", {"downsampel": 7}, report.notebook_paths())


def test_overrides_go_only_to_the_notebooks_that_declare_them():
    params = report.resolve_parameters("smoke", {"downsample": 7}, report.notebook_paths())
    by_name = {p.name[:2]: v for p, v in params.items()}
    assert by_name["03"] == {"profile": "smoke", "downsample": 7}
    assert by_name["01"] == {"profile": "smoke"}


def test_the_default_pdf_engine_needs_no_system_tool(monkeypatch):
    monkeypatch.delenv(report.PDF_ENGINE_ENV, raising=False)
    monkeypatch.setattr(report.shutil, "which", lambda tool: None)  # no xelatex, no pandoc on PATH
    assert report.pdf_engine() == "typst"
    report.check_tools()


def test_missing_xelatex_is_named_with_the_packages_to_install_when_chosen(monkeypatch):
    monkeypatch.setattr(report.shutil, "which", lambda tool: None if tool == "xelatex" else "/usr/bin/" + tool)
    with pytest.raises(report.ReportError, match="xelatex not found.*texlive-xetex"):
        report.check_tools("xelatex")
    monkeypatch.setenv(report.PDF_ENGINE_ENV, "xelatex")
    with pytest.raises(report.ReportError, match="xelatex not found"):
        report.check_tools()


def test_an_unknown_pdf_engine_is_rejected():
    with pytest.raises(report.ReportError, match="unknown PDF engine 'lualatex'.*typst or xelatex"):
        report.pdf_engine("lualatex")


def test_main_reports_a_bad_profile_in_one_line_and_exits_2(capsys):
    assert report.main(["--profile", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown profile" in err and "\n" not in err


def test_missing_mnist_stops_the_build_before_any_notebook_runs(monkeypatch, capsys):
    monkeypatch.setattr(report, "check_tools", lambda *args: None)

    def missing(*args, **kwargs):
        raise report.DataError("MNIST not found; set HWUTILS_DATA_DIR=/path/to/that/folder")

    monkeypatch.setattr(report, "find_mnist_dir", missing)
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **k: pytest.fail("a notebook ran"))
    assert report.main(["--profile", "smoke"]) == 2
    assert "HWUTILS_DATA_DIR" in capsys.readouterr().err


def test_combined_report_has_the_parts_in_order_and_the_title_page_metadata():
    import nbformat

    parts = [nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Part {i}\n\ntext")]) for i in (1, 2, 3)]
    combined = report.combine(parts, "smoke")
    assert [c.source.splitlines()[0] for c in combined.cells] == ["# Part 1", "# Part 2", "# Part 3"]
    meta = combined.metadata["hw3_report"]
    assert meta["titlepage"] and meta["title"] == meta["doc_title"] == report.TITLE
    assert meta["subtitle"].startswith("Course:") and "smoke" in meta["byline"][0] and meta["date"]
    one = report.report_meta("smoke", part="Part 3 — MNIST")
    assert not one["titlepage"] and one["doc_title"].endswith("Part 3 — MNIST")


# --------------------------------------------------------------------------- bad input, checked up front
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from pathlib import Path  # noqa: E402

from hwutils.data import MNIST_FILES  # noqa: E402


@pytest.fixture(autouse=True)
def scratch_build_stamp(tmp_path, monkeypatch):
    """main() removes/writes the build stamp: keep the checkout's report/ out of the tests."""
    monkeypatch.setattr(report, "BUILD_STAMP", tmp_path / "report" / ".build-ok.json")


@pytest.fixture
def no_notebook_may_run(monkeypatch):
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **k: pytest.fail("a notebook ran"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("make report: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("name, value, allowed", [
    ("downsample", "5", "one of None, 7, 14, 28"),
    ("hidden", "[]", "non-empty list of integers >= 1"),
    ("hidden", "[0]", "non-empty list of integers >= 1"),
    ("seeds", "[]", "non-empty list of distinct integers"),
    ("seeds", "3", "non-empty list of distinct integers"),
    ("epochs", "abc", "an integer >= 1"),
    ("epochs", "2.5", "an integer >= 1"),
    ("epochs", "-3", "an integer >= 1"),
    ("seeds", "[99999999999999999999]", "integers >= 0 and < 2**63"),
    ("n_train", "100000000000", "an integer >= 10 and <= 10,000,000"),
])
def test_a_bad_parameter_value_stops_the_build_in_one_line_before_any_notebook(
        capsys, no_notebook_may_run, name, value, allowed):
    started = time.monotonic()
    assert report.main(["--profile", "smoke", "-p", name, value]) == 2
    err = one_line_error(capsys)
    assert f"parameter {name}" in err and allowed in err
    assert time.monotonic() - started < 30


def test_numbers_written_1e_3_in_the_params_file_reach_the_notebook_as_floats(tmp_path):
    params_file = tmp_path / "p.yaml"
    params_file.write_text("lr: 1e-3\nl2_grid: [1e-4, 1e-3]\nhidden: [8]\n")
    overrides = report.read_overrides(str(params_file))
    assert overrides["lr"] == "1e-3"  # what PyYAML makes of it
    params = {p.name[:2]: v for p, v in report.resolve_parameters("smoke", overrides, report.notebook_paths()).items()}
    assert params["02"]["lr"] == 0.001 and params["02"]["l2_grid"] == [1e-4, 1e-3]
    assert params["02"]["hidden"] == params["03"]["hidden"] == [8]


@pytest.mark.parametrize("text, expected", [
    ("downsample: [7\nseeds: 1\n", r"params file .*p\.yaml is not valid YAML: .* at line \d+, column \d+"),
    ("- downsample: 7\n", r"params file .*p\.yaml must be a mapping of parameter: value .*not a list"),
    ("7\n", r"must be a mapping of parameter: value .*not a int"),
])
def test_a_malformed_or_non_mapping_params_file_is_one_line(tmp_path, capsys, no_notebook_may_run, text, expected):
    params_file = tmp_path / "p.yaml"
    params_file.write_text(text)
    assert report.main(["--profile", "smoke", "--params-file", str(params_file)]) == 2
    assert re.search(expected, one_line_error(capsys))


def test_a_missing_params_file_is_named(tmp_path, capsys):
    assert report.main(["--params-file", str(tmp_path / "nope.yaml")]) == 2
    assert f"params file {tmp_path / 'nope.yaml'} not found" in one_line_error(capsys)


def test_an_unwritable_results_dir_is_named_before_any_notebook(tmp_path, capsys, no_notebook_may_run):
    (tmp_path / "a-file").write_text("not a folder")
    assert report.main(["--profile", "smoke", "-p", "results_dir", str(tmp_path / "a-file" / "results")]) == 2
    err = one_line_error(capsys)
    assert f"results_dir {tmp_path / 'a-file' / 'results'}" in err and "writable folder" in err


def test_a_relative_results_dir_is_taken_from_the_current_directory_not_notebooks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = report.resolve_parameters("smoke", {"results_dir": "my-results"}, report.notebook_paths())
    assert {v.get("results_dir") for p, v in params.items() if p.name[:2] != "01"} == {str(tmp_path / "my-results")}


def test_the_kernels_get_the_absolute_data_folder_when_it_was_given_relative(tmp_path, monkeypatch, capsys):
    """HWUTILS_DATA_DIR=data (relative) from the checkout: the notebooks, run in notebooks/, must see it absolute."""
    folder = tmp_path / "data"
    folder.mkdir()
    files = {name: folder / f"{name}.gz" for name in MNIST_FILES}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWUTILS_DATA_DIR", "data")
    monkeypatch.setattr(report, "check_tools", lambda *a, **k: None)
    monkeypatch.setattr(report, "find_mnist_dir", lambda *a, **k: {n: p.relative_to(tmp_path) for n, p in files.items()})
    monkeypatch.setattr(report, "_check_plans", lambda *a, **k: None)  # the files are empty: nothing to plan on
    seen = {}

    def execute(*args, **kwargs):
        seen["data"] = os.environ["HWUTILS_DATA_DIR"]
        raise RuntimeError("stop after the first notebook starts")

    monkeypatch.setattr("papermill.execute_notebook", execute)
    with pytest.raises(RuntimeError, match="stop after"):
        report.build("smoke")
    assert seen["data"] == str(folder)


def fake_outputs():
    stems = [p.stem for p in report.notebook_paths()]
    html = "<img src='data:image/png;base64,AA'>" * 2
    for path in ([report.REPORT / "html" / f"{s}.html" for s in stems] + [report.REPORT / "hw3_report.html"]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html)


def test_check_names_outputs_older_than_the_last_successful_build(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "REPORT", tmp_path / "report")
    fake_outputs()
    report.BUILD_STAMP.write_text(json.dumps({"started": time.time() + 60}))
    assert any("hw3_report.html is older than the last successful build" in p for p in report.check_outputs())


def test_a_successful_build_records_itself_for_check(monkeypatch):
    monkeypatch.setattr(report, "build", lambda *a, **k: [])
    assert report.main(["--profile", "smoke"]) == 0
    assert json.loads(report.BUILD_STAMP.read_text())["profile"] == "smoke"


# --------------------------------------------------------------------------- failures of the build itself
import errno  # noqa: E402


@pytest.fixture
def scratch_report(tmp_path, monkeypatch):
    """report/ in tmp_path, the pre-checks passed (tools, MNIST), one old executed notebook of each part."""
    # build() points HWUTILS_DATA_DIR at the (fake) data: set here, so that it is restored (or removed) after
    monkeypatch.setenv("HWUTILS_DATA_DIR", os.environ.get("HWUTILS_DATA_DIR", ""))
    monkeypatch.setattr(report, "REPORT", tmp_path / "report")
    monkeypatch.setattr(report, "check_tools", lambda *a, **k: None)
    monkeypatch.setattr(report, "find_mnist_dir", lambda *a, **k: {n: tmp_path / f"{n}.gz" for n in MNIST_FILES})
    monkeypatch.setattr(report, "_check_plans", lambda *a, **k: None)  # no real MNIST to plan on
    executed = tmp_path / "report" / "executed"
    executed.mkdir(parents=True)
    for path in report.notebook_paths():
        (executed / path.name).write_text("the last good build's notebook")
    return executed


def build_args(tmp_path):
    return ["--profile", "smoke", "-p", "results_dir", str(tmp_path / "results")]


def test_a_failed_pre_check_leaves_the_last_good_builds_stamp_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "REPORT", tmp_path / "report")
    fake_outputs()
    report.BUILD_STAMP.write_text(json.dumps({"started": time.time() - 60}))
    assert report.main(["--profile", "smoke", "-p", "epochs", "-3"]) == 2  # a typo, caught up front
    assert report.BUILD_STAMP.exists() and not any("successful build" in p for p in report.check_outputs())


def test_a_build_that_fails_after_its_checks_leaves_check_failing(tmp_path, scratch_report, monkeypatch, capsys):
    import papermill

    def failing(*args, **kwargs):
        raise papermill.PapermillExecutionError(3, 3, "x = f()", "ValueError", "bad", [])

    fake_outputs()
    report.BUILD_STAMP.write_text(json.dumps({"started": time.time() - 60}))
    assert not any("successful build" in p for p in report.check_outputs())
    monkeypatch.setattr("papermill.execute_notebook", failing)
    assert report.main(build_args(tmp_path)) == 2  # the old outputs are still there
    assert "failed in cell 3: ValueError: bad" in one_line_error(capsys)
    assert report.main(["--check"]) == 1
    assert "no successful build is recorded" in capsys.readouterr().err


def test_a_read_only_report_folder_is_one_line_before_any_notebook(tmp_path, scratch_report, monkeypatch, capsys,
                                                                   no_notebook_may_run):
    from hwutils import cache

    real = cache.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if str(dir).startswith(str(report.REPORT)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cache.tempfile, "mkstemp", read_only)
    assert report.main(build_args(tmp_path)) == 2
    err = one_line_error(capsys)
    assert f"the report folder {report.REPORT} is not writable: Read-only file system; make it writable" in err


def test_a_disk_full_while_writing_a_notebook_leaves_the_previous_one_whole(tmp_path, scratch_report, monkeypatch,
                                                                            capsys):
    def full(input_path, output_path, **kwargs):
        Path(output_path).write_text('{"cells": [')  # half a notebook, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", output_path)

    monkeypatch.setattr("papermill.execute_notebook", full)
    assert report.main(build_args(tmp_path)) == 2
    err = one_line_error(capsys)
    assert f"no space left on device writing {scratch_report} (" in err and "MB free); free some space" in err
    assert sorted(p.read_text() for p in scratch_report.iterdir()) == ["the last good build's notebook"] * 3


def test_ctrl_c_is_one_line_counting_the_cached_runs(tmp_path, scratch_report, monkeypatch, capsys):
    (tmp_path / "results").mkdir()
    for key in ("0123456789abcdef", "fedcba9876543210"):
        (tmp_path / "results" / f"L2-{key}.json").write_text("{}")
    (tmp_path / "results" / "L2-0123456789abcdef.json.corrupt").write_text("{}")  # not a cached run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("papermill.execute_notebook", interrupted)
    assert report.main(build_args(tmp_path)) == 130
    err = one_line_error(capsys)
    assert err == "make report: interrupted: 2 runs are cached, run the same command again to resume"
    assert sorted(p.read_text() for p in scratch_report.iterdir()) == ["the last good build's notebook"] * 3
