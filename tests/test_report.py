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


def test_missing_latex_tools_are_named_with_the_packages_to_install(monkeypatch):
    monkeypatch.setattr(report.shutil, "which", lambda tool: None if tool == "xelatex" else "/usr/bin/" + tool)
    with pytest.raises(report.ReportError, match="xelatex not found.*texlive-xetex"):
        report.check_tools()


def test_main_reports_a_bad_profile_in_one_line_and_exits_2(capsys):
    assert report.main(["--profile", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown profile" in err and "\n" not in err


def test_missing_mnist_stops_the_build_before_any_notebook_runs(monkeypatch, capsys):
    monkeypatch.setattr(report, "check_tools", lambda: None)

    def missing(*args, **kwargs):
        raise report.DataError("MNIST not found; set HWUTILS_DATA_DIR=/path/to/that/folder")

    monkeypatch.setattr(report, "find_mnist_dir", missing)
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **k: pytest.fail("a notebook ran"))
    assert report.main(["--profile", "smoke"]) == 2
    assert "HWUTILS_DATA_DIR" in capsys.readouterr().err


def test_combined_report_has_title_contents_and_the_parts_in_order():
    import nbformat

    parts = [nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Part {i}\n\ntext")]) for i in (1, 2, 3)]
    combined = report.combine(parts, "smoke")
    title, toc, *rest = combined.cells
    assert report.HTML_ONLY in title.metadata["tags"] and "1. Part 1" in title.source and "3. Part 3" in title.source
    assert toc.cell_type == "raw" and "tableofcontents" in toc.source and toc.metadata["raw_mimetype"] == "application/pdf"
    assert [c.source.splitlines()[0] for c in rest] == ["# Part 1", "# Part 2", "# Part 3"]
