"""Faults of the build itself, each on a tiny hand-made notebook run by the real kernel: a full disk
while rendering, a kernel that dies, a cell that stalls or runs past its time-out, and Ctrl-C,
SIGTERM and SIGHUP. Each ends in one line, and leaves the last good outputs whole."""
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from hwutils import report, typeset
from hwutils.data import MNIST_FILES

RUN_BUILD = """
import sys
from pathlib import Path
from hwutils import report
root = Path(sys.argv[1])
report.NOTEBOOKS, report.REPORT = root / "notebooks", root / "report"
report.BUILD_STAMP = report.REPORT / ".build-ok.json"
report.check_tools = report._check_plans = lambda *a, **k: None
report.find_mnist_dir = lambda *a, **k: {n: root / (n + ".gz") for n in %r}
sys.exit(report.main(["--profile", "smoke"]))
""" % (list(MNIST_FILES),)


def write_notebook(folder: Path, name: str, *sources: str) -> Path:
    """A notebook with a parameters cell (``profile``) and one code cell per source."""
    cells = [nbformat.v4.new_code_cell("profile = 'quick'", metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(source) for source in sources]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": report.KERNEL, "display_name": report.KERNEL, "language": "python"}})
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


@pytest.fixture
def tiny_build(tmp_path, monkeypatch):
    """report.main() over tmp_path/notebooks into tmp_path/report, the pre-checks passed."""
    monkeypatch.setenv("HWUTILS_DATA_DIR", os.environ.get("HWUTILS_DATA_DIR", ""))  # build() sets it
    monkeypatch.setattr(report, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(report, "REPORT", tmp_path / "report")
    monkeypatch.setattr(report, "BUILD_STAMP", tmp_path / "report" / ".build-ok.json")
    monkeypatch.setattr(report, "check_tools", lambda *a, **k: None)
    monkeypatch.setattr(report, "find_mnist_dir", lambda *a, **k: {n: tmp_path / f"{n}.gz" for n in MNIST_FILES})
    monkeypatch.setattr(report, "_check_plans", lambda *a, **k: None)
    return tmp_path


def one_line_error(capsys) -> str:
    """The one line on stderr, papermill's cell counter ("Executing: 2/4 ...", redrawn after a \\r) aside."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Executing:")]
    assert len(lines) == 1 and lines[0].startswith("make report: "), lines
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files of the build (hidden files beside the outputs), anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != ".build-ok.json")


# --------------------------------------------------------------------------- a full disk while rendering
def test_a_full_disk_while_rendering_leaves_the_last_good_html_whole_and_names_the_file(tiny_build, monkeypatch,
                                                                                        capsys):
    import papermill

    write_notebook(tiny_build / "notebooks", "01_part.ipynb", "print('hello')")
    good = b"<html>the last good part</html>"
    (tiny_build / "report" / "html").mkdir(parents=True)
    (tiny_build / "report" / "html" / "01_part.html").write_bytes(good)

    def full(markdown, html_path, workdir, **kwargs):
        Path(html_path).write_bytes(b"<html>half")  # pandoc got this far, then the disk was full
        raise typeset.TypesetError(f"pandoc failed: pandoc: {html_path}: withFile: resource exhausted "
                                   f"(No space left on device)\nCallStack (from HasCallStack): ...")

    def copy(src, dst, **kwargs):  # a notebook executed in no time
        Path(dst).write_bytes(Path(src).read_bytes())

    monkeypatch.setattr(papermill, "execute_notebook", copy)
    monkeypatch.setattr(typeset, "notebook_markdown", lambda *a, **k: "# Part\n")
    monkeypatch.setattr(typeset, "markdown_to_html", full)
    assert report.main(["--profile", "smoke"]) == 2
    err = one_line_error(capsys)
    folder = tiny_build / "report" / "html"
    assert err.startswith(f"make report: 01_part.html: no space left on device writing {folder} (")
    assert "MB free); free some space there" in err and "CallStack" not in err
    assert (tiny_build / "report" / "html" / "01_part.html").read_bytes() == good
    assert leftovers(tiny_build / "report") == []


def test_a_failed_pdf_write_leaves_the_previous_pdf_byte_identical(tmp_path, monkeypatch):
    pdf = tmp_path / "pdf" / "part.pdf"
    pdf.parent.mkdir()
    pdf.write_bytes(b"%PDF-1.7 the last good one")

    def full(markdown, pdf_path, workdir, **kwargs):
        with open(pdf_path, "wb") as f:
            f.write(b"%PDF-1.7 ha")
            raise OSError(errno.ENOSPC, "No space left on device")

    def html(markdown, html_path, workdir, **kwargs):
        Path(html_path).write_text("<html>the new part</html>")
        return ""

    monkeypatch.setattr(typeset, "markdown_to_html", html)
    monkeypatch.setattr(typeset, "markdown_to_pdf", full)
    monkeypatch.setattr(typeset, "notebook_markdown", lambda *a, **k: "# Part\n")
    with pytest.raises(OSError) as caught:
        report.render(nbformat.v4.new_notebook(), tmp_path / "part.html", pdf, show_code=False, engine="typst")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(pdf)
    assert pdf.read_bytes() == b"%PDF-1.7 the last good one" and leftovers(tmp_path) == []
    assert (tmp_path / "part.html").read_text() == "<html>the new part</html>"  # written whole before the PDF


# --------------------------------------------------------------------------- a kernel that dies
def test_a_dead_kernel_keeps_the_partial_notebook_and_names_the_cell_and_the_likely_cause(tiny_build, capsys):
    write_notebook(tiny_build / "notebooks", "01_part.ipynb", "print('before')",
                   "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does")
    assert report.main(["--profile", "smoke"]) == 2
    err = one_line_error(capsys)
    kept = tiny_build / "report" / "executed" / "01_part.partial.ipynb"
    assert err == (f"make report: 01_part.ipynb: the kernel died in cell 4 (`import os, signal`): killed by SIGKILL, "
                   f"most likely out of memory (the system's OOM killer) (the partially executed notebook is {kept}); "
                   f"run the same command again: trained runs are cached")
    outputs = [o.get("text", "") for c in nbformat.read(kept, as_version=4).cells for o in c.get("outputs", [])]
    assert "before\n" in outputs
    assert not (tiny_build / "report" / "executed" / "01_part.ipynb").exists()
    assert leftovers(tiny_build / "report") == []


# --------------------------------------------------------------------------- a cell that stalls
def test_a_quiet_cell_is_named_while_it_runs_and_a_time_out_stops_it(tiny_build, monkeypatch, capsys):
    write_notebook(tiny_build / "notebooks", "01_part.ipynb", "import time\ntime.sleep(2.5)", "time.sleep(30)")
    monkeypatch.setenv(report.STALL_NOTICE_ENV, "1")
    monkeypatch.setenv(report.CELL_TIMEOUT_ENV, "4")
    started = time.monotonic()
    assert report.main(["--profile", "smoke"]) == 2
    assert time.monotonic() - started < 20
    out, err = capsys.readouterr()
    err = [line for line in err.splitlines() if line.strip() and not line.startswith("Executing:")]
    notices = [line.strip() for line in out.splitlines() if "notice:" in line]
    assert notices[0] == ("notice: 01_part.ipynb, cell 3 (`import time`) has printed nothing for 1 s; still running "
                          "(HWUTILS_CELL_TIMEOUT=SECONDS stops such a cell)")
    assert any(re.search(r"cell 4 \(`time.sleep\(30\)`\) has printed nothing for [23] s", n) for n in notices)
    kept = tiny_build / "report" / "executed" / "01_part.partial.ipynb"
    assert err == [f"make report: 01_part.ipynb: cell 4 (`time.sleep(30)`) ran longer than "
                   f"HWUTILS_CELL_TIMEOUT=4 s and was stopped (the partially executed notebook is {kept}); "
                   f"raise or unset HWUTILS_CELL_TIMEOUT, then run the same command again: trained runs are cached"]


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf"])
def test_a_bad_time_out_or_notice_interval_is_one_line_before_any_notebook(tiny_build, monkeypatch, capsys, value):
    write_notebook(tiny_build / "notebooks", "01_part.ipynb", "print('hello')")
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **k: pytest.fail("a notebook ran"))
    monkeypatch.setenv(report.CELL_TIMEOUT_ENV, value)
    assert report.main(["--profile", "smoke"]) == 2
    assert f"HWUTILS_CELL_TIMEOUT='{value}' is not a number of seconds > 0" in one_line_error(capsys)


# --------------------------------------------------------------------------- Ctrl-C, SIGTERM, SIGHUP
def restore_ctrl_c():
    """A background child of a non-interactive shell ignores SIGINT; the build must see it as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum, line", [
    (signal.SIGTERM, "interrupted by SIGTERM: before any training"),
    (signal.SIGINT, "interrupted: before any training"),
])
def test_a_signal_stops_the_build_in_one_line_with_the_kernel_shut_down_and_no_temporary_files(tmp_path, signum, line):
    write_notebook(tmp_path / "notebooks", "01_part.ipynb", "print('started', flush=True)\nimport time\ntime.sleep(60)")
    (tmp_path / "report" / "executed").mkdir(parents=True)
    (tmp_path / "report" / "executed" / "01_part.ipynb").write_text("the last good build's notebook")
    scratch = tmp_path / "tmp"  # the build's temporary folders, and the kernel's connection file
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    build = subprocess.Popen([sys.executable, "-c", RUN_BUILD, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=restore_ctrl_c)
    deadline = time.monotonic() + 30
    while not list(scratch.glob("*.json")) and time.monotonic() < deadline:  # the kernel is starting
        time.sleep(0.1)
    time.sleep(2)  # and now runs its cell
    # Ctrl-C goes to the whole foreground group (the kernel too); kill(1) and a scheduler to the build
    os.killpg(build.pid, signum) if signum == signal.SIGINT else build.send_signal(signum)
    started = time.monotonic()
    out, err = build.communicate(timeout=30)
    assert build.returncode == 128 + signum, (out, err)
    assert time.monotonic() - started < 10, time.monotonic() - started  # the kernel was not waited for
    stderr = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Executing:")]
    assert stderr == [f"make report: {line}, run the same command again to resume"], err
    assert (tmp_path / "report" / "executed" / "01_part.ipynb").read_text() == "the last good build's notebook"
    assert leftovers(tmp_path / "report") == [] and list(scratch.iterdir()) == []  # the kernel's file, too


def test_sighup_stops_the_build_as_sigterm_does_and_the_handlers_are_restored_after(tiny_build, monkeypatch, capsys):
    write_notebook(tiny_build / "notebooks", "01_part.ipynb", "print('hello')")
    before = signal.getsignal(signal.SIGHUP)

    def hung_up(src, dst, **kwargs):
        Path(dst).write_text('{"cells": [')
        os.kill(os.getpid(), signal.SIGHUP)  # the terminal was closed
        time.sleep(10)
        pytest.fail("SIGHUP did not stop the build")

    monkeypatch.setattr("papermill.execute_notebook", hung_up)
    assert report.main(["--profile", "smoke"]) == 128 + signal.SIGHUP
    assert one_line_error(capsys) == ("make report: interrupted by SIGHUP: before any training, run the same command "
                                      "again to resume")
    assert leftovers(tiny_build / "report") == [] and signal.getsignal(signal.SIGHUP) == before
