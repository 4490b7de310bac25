"""The report: execute the notebooks with papermill, render HTML + PDF per notebook and combined.

``python -m hwutils.report --profile quick`` (what ``make report`` runs):

1. checks the profile, the parameter overrides, the PDF tools (pandoc and typst from the report
   extra's wheels; xelatex only with PDF_ENGINE=xelatex) and the MNIST files - before any work;
2. executes ``notebooks/*.ipynb`` into ``report/executed/`` (papermill, kernel ``hw3``); a failing
   cell stops the build with papermill's error and leaves ``<name>.partial.ipynb`` there; the training
   bars' status lines (:mod:`hwutils.progress`) are printed as they come; a notebook that plots but
   holds no figure stops the build;
3. renders ``report/html/<name>.html`` and ``report/pdf/<name>.pdf`` per notebook and the combined
   ``report/hw3_report.html`` / ``.pdf`` (title page, contents, the three parts in order).

Code cells are hidden unless ``--show-code``; progress bars (stderr) are left out of the
rendered pages but kept in the executed notebooks. ``--check`` verifies the outputs exist and come
from the last build, which succeeded (``report/.build-ok.json``: removed when a build has passed its
checks and starts to change the outputs, written when it ends well; a build stopped by a check leaves
the last good build's stamp alone).

Every failure of the build itself is one line, and none leaves a half-written file: each file the
build writes (executed notebooks, the HTML and PDF of each part and combined, the build record) goes
to a temporary file beside it, renamed over it only when whole, so a failed write leaves the last good
one and names the file, its folder and, when the disk is full, how much was free. A notebook that
stops (a failing cell, a kernel that dies - out of memory - or a cell past ``$HWUTILS_CELL_TIMEOUT``
seconds) leaves ``report/executed/<name>.partial.ipynb`` and says which cell; a cell that prints
nothing for ``$HWUTILS_STALL_NOTICE`` seconds (default 600) is named while it runs. Ctrl-C, SIGTERM
and SIGHUP shut the kernel down, remove the temporary files and say how many runs are cached for the
resume (exit 128 + the signal's number).
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import copy
import datetime as dt
import errno
import functools
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from .cache import CacheError, check_writable, full_disk, temporary_beside, write_failure
from .data import DATA_ENV_VAR, DataError, find_mnist_dir, mnist_folder
from .params import check_overrides
from .profiles import check_profile
from .progress import LOG_ENV, follow

__all__ = ["build", "check_outputs", "check_tools", "pdf_engine", "resolve_parameters", "combine", "render", "main",
           "written_whole", "execution_limits"]

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "templates"  # hw3_typst (default PDF), hw3_html, hw3_latex
NOTEBOOKS = ROOT / "notebooks"
REPORT = ROOT / "report"
BUILD_STAMP = REPORT / ".build-ok.json"  # written by main() after a successful build; --check needs it
KERNEL = "hw3"
HTML_ONLY = "html-only"  # cell tag: shown in the HTML report, left out of the PDF
TITLE = "HW3: Regularization and optimization in deep networks"
LATEX_PACKAGES = ("Debian/Ubuntu: apt-get install texlive-xetex texlive-fonts-recommended "
                  "texlive-plain-generic; conda: conda install -c conda-forge texlive-core")
COURSE = "Course: Deep Neural Networks — homework 3"
PDF_ENGINES = ("typst", "xelatex")  # typst: wheels only (the default); xelatex: nbconvert's LaTeX, needs TeX
PDF_ENGINE_ENV = "HWUTILS_PDF_ENGINE"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
CELL_TIMEOUT_ENV = "HWUTILS_CELL_TIMEOUT"  # seconds a cell may run before it is stopped (default: no limit)
STALL_NOTICE_ENV = "HWUTILS_STALL_NOTICE"  # seconds without output before a cell is named (default 600)
STALL_NOTICE_SECONDS = 600.0
RESUME = "run the same command again: trained runs are cached"


class ReportError(RuntimeError):
    """Something the user must fix before the report can be built; the message says what."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the build unwinds as for Ctrl-C (kernel shut down, temporary files removed)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def pdf_engine(engine: str | None = None) -> str:
    """The PDF engine: ``engine``, else ``$HWUTILS_PDF_ENGINE`` (the Makefile's PDF_ENGINE), else typst."""
    engine = (engine or os.environ.get(PDF_ENGINE_ENV) or "typst").strip().lower()
    if engine not in PDF_ENGINES:
        raise ReportError(f"unknown PDF engine {engine!r} (PDF_ENGINE / ${PDF_ENGINE_ENV}); choose "
                          f"{' or '.join(PDF_ENGINES)}")
    return engine


def check_tools(engine: str | None = None) -> None:
    """Fail, naming what to install, when the PDF engine's tools are missing.

    typst (the default) needs only the report extra's wheels: pandoc from pypandoc-binary and the
    Typst compiler from typst. xelatex needs a TeX installation (pandoc still comes from the wheel).
    """
    from . import typeset

    engine = pdf_engine(engine)
    try:
        typeset.pandoc()
        if engine == "typst":
            import typst  # noqa: F401
    except (ImportError, typeset.TypesetError) as err:
        raise ReportError(f"{err}; the report needs the 'report' extra: .venv/bin/python -m pip install -e "
                          f"'.[report]' (make setup does it)") from None
    if engine == "xelatex" and shutil.which("xelatex") is None:
        raise ReportError(f"xelatex not found, needed for PDF_ENGINE=xelatex (the default, typst, needs no TeX); "
                          f"install it ({LATEX_PACKAGES})")


def resolve_parameters(profile: str, overrides: dict, paths: list[Path]) -> dict[Path, dict]:
    """Per-notebook papermill parameters: the profile plus each override the notebook declares.

    Everything is checked here, before any notebook runs: an override that no notebook declares is
    an error (a typo would otherwise be ignored); each value must be allowed by the spec
    (:mod:`hwutils.params`) of every notebook that declares it, and is normalized (``"1e-3"`` → 0.001);
    an overridden ``results_dir`` is made absolute (relative to the current directory, not to the
    notebooks' ``notebooks/``), and every notebook's results folder must be writable.
    """
    import papermill

    check_profile(profile)
    inspected = {p: papermill.inspect_notebook(str(p)) for p in paths}
    declared = {p: set(info) for p, info in inspected.items()}
    for path, names in declared.items():
        if "profile" not in names:
            raise ReportError(f"{path.name} has no 'profile' in its parameters cell")
    unknown = {str(k) for k in overrides} - set().union(*declared.values())
    if unknown:
        raise ReportError(f"unknown parameter(s) {', '.join(sorted(unknown))}; the notebooks declare: "
                          f"{', '.join(sorted(set().union(*declared.values())))}")
    checked = check_overrides(overrides, declared)
    _RESULTS_FOLDERS.clear()
    for path, values in checked.items():
        if "results_dir" in values:
            values["results_dir"] = os.path.abspath(os.path.expanduser(values["results_dir"]))
        if "results_dir" in declared[path]:
            folder = values.get("results_dir") or _declared_default(inspected[path]["results_dir"])
            if isinstance(folder, str):
                _RESULTS_FOLDERS.append(check_writable(NOTEBOOKS / folder))  # the notebooks run in notebooks/
    return {p: {"profile": profile, **checked[p]} for p in paths}


#: The results folders of the build being made (set by resolve_parameters): what an interrupt counts.
_RESULTS_FOLDERS: list[Path] = []


def _declared_default(info: dict):
    """The default value of a parameter as papermill's inspect_notebook reports it, or None."""
    try:
        return ast.literal_eval(info.get("default") or "None")
    except (ValueError, SyntaxError):
        return None


def _exporter_kwargs(show_code: bool) -> dict:
    from nbconvert.preprocessors import Preprocessor

    from .typeset import wrap_code

    class DropStderr(Preprocessor):
        """Progress bars and warnings go to stderr; the rendered report leaves them out. Long lines of
        code and printed output are broken to the page width."""

        def preprocess_cell(self, cell, resources, index):
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
                cell.source = wrap_code(cell.source)
                for output in cell.outputs:
                    if output.output_type == "stream":
                        output.text = wrap_code(output.text)
                    elif "text/plain" in output.get("data", {}):
                        output.data["text/plain"] = wrap_code(output.data["text/plain"])
            return cell, resources

    return {"exclude_input": not show_code, "exclude_input_prompt": True, "exclude_output_prompt": True,
            "preprocessors": [DropStderr]}


def report_meta(profile: str, part: str | None = None) -> dict:
    """What the title block shows: title, course line, by-line (hwutils version, profile), the date
    (once), the PDF's Title metadata, and whether the PDF gets a title page and contents (the
    combined report) or a one-line header (one part, ``part``: its title)."""
    from . import __version__

    return {"title": TITLE, "doc_title": TITLE if part is None else f"{TITLE} — {part}", "subtitle": COURSE,
            "byline": [f"hwutils {__version__} · profile {profile}"], "date": dt.date.today().isoformat(),
            "titlepage": part is None}


def render(nb, html_path: Path, pdf_path: Path, show_code: bool, engine: str | None = None) -> None:
    """Write one notebook as self-contained HTML and as PDF.

    Both come from nbconvert's Markdown of the notebook (stderr dropped, code hidden unless
    ``show_code``; cells tagged ``html-only`` only in the HTML): the HTML through pandoc (figures as
    data URIs, math as MathML - reads offline), the PDF through pandoc's Typst writer and the typst
    compiler (``engine`` typst, the default) or nbconvert's LaTeX and xelatex (``engine`` xelatex).
    The title block comes from ``nb.metadata["hw3_report"]`` (:func:`report_meta`).
    """
    from nbconvert.preprocessors import TagRemovePreprocessor

    from . import typeset

    engine = pdf_engine(engine)
    meta = {"title": nb.metadata.get("title", TITLE), "subtitle": None, "byline": [], "date": None,
            "titlepage": False, **nb.metadata.get("hw3_report", {})}
    meta.setdefault("doc_title", meta["title"])
    text = {k: meta[k] for k in ("title", "subtitle", "date")} | {"byline": tuple(meta["byline"])}
    kwargs = _exporter_kwargs(show_code)
    pdf_kwargs = {**kwargs, "preprocessors": [TagRemovePreprocessor(remove_cell_tags={HTML_ONLY}, enabled=True),
                                              *kwargs["preprocessors"]]}
    writing = html_path
    with tempfile.TemporaryDirectory(prefix="hw3-render-") as tmp:
        work = Path(tmp)
        try:
            markdown = typeset.notebook_markdown(nb, work, **kwargs)
            with written_whole(html_path) as partial:
                warnings = typeset.markdown_to_html(markdown, partial, work, toc=meta["titlepage"], **text).splitlines()
            if engine == "typst":
                writing, pdf_markdown = pdf_path, typeset.notebook_markdown(nb, work, **pdf_kwargs)
                with written_whole(pdf_path) as partial:
                    warnings += typeset.markdown_to_pdf(pdf_markdown, partial, work, doc_title=meta["doc_title"],
                                                        description=meta["subtitle"], titlepage=meta["titlepage"],
                                                        **text)
        except typeset.TypesetError as err:
            code = next((c for c in (errno.ENOSPC, errno.EDQUOT) if os.strerror(c) in str(err)), None)
            if code is not None:  # pandoc says so in words: one line naming the file, not its backtrace
                raise OSError(code, os.strerror(code), str(writing)) from None
            raise ReportError(f"rendering {Path(pdf_path).stem}: {err}") from None
    for warning in dict.fromkeys(w.strip() for w in warnings if w.strip()):
        print(f"   {Path(pdf_path).stem}: {warning}", flush=True)
    if engine == "xelatex":
        _xelatex_pdf(nb, pdf_path, pdf_kwargs, meta)


def _xelatex_pdf(nb, pdf_path: Path, kwargs: dict, meta: dict) -> None:
    """The PDF through nbconvert's LaTeX (template hw3_latex) and xelatex."""
    from nbconvert import PDFExporter

    from . import typeset

    nb = copy.deepcopy(nb)
    nb.metadata["title"] = meta["doc_title"]
    nb.metadata["authors"] = [{"name": line} for line in [meta["subtitle"], *meta["byline"]] if line]
    if meta["date"]:
        nb.metadata["date"] = meta["date"]
    if meta["titlepage"]:
        nb.cells.insert(0, _raw("\\clearpage\\tableofcontents\\clearpage", "application/pdf"))
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(typeset.pandoc()).parent), path])  # nbconvert runs `pandoc`
    try:
        pdf, _ = PDFExporter(extra_template_basedirs=[str(TEMPLATES)], template_name="hw3_latex",
                             **kwargs).from_notebook_node(nb)
    finally:
        os.environ["PATH"] = path
    with written_whole(pdf_path) as partial:
        partial.write_bytes(pdf)


#: errno values of a write that failed for want of space or permission: named with the final file.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def written_whole(path: Path):
    """A temporary file beside ``path`` for the block to write, renamed over ``path`` when the block
    ends well and removed otherwise: ``path`` is always the last whole version. A write that fails for
    want of space or permission is raised as an OSError naming ``path``, not the temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = temporary_beside(path, suffix=path.suffix)
    except OSError as err:
        raise (OSError(err.errno, err.strerror, str(path)) if err.errno in _WRITE_ERRNOS else err) from None
    try:
        yield partial
        os.replace(partial, path)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def _raw(text: str, mimetype: str):
    import nbformat

    cell = nbformat.v4.new_raw_cell(text)
    # nbconvert keeps a raw cell when its raw_mimetype is the exporter's output type: the PDF
    # exporter's is application/pdf (a "text/latex" cell is dropped from the PDF), HTML's text/html.
    cell.metadata["raw_mimetype"] = mimetype
    return cell


def part_title(nb) -> str:
    """The notebook's first level-1 Markdown heading."""
    return next((line.lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown"
                 for line in c.source.splitlines() if line.startswith("# ")), "Untitled part")


def combine(executed: list, profile: str):
    """One notebook: the executed parts in order (headings kept), with the title-page metadata
    (``hw3_report``: title, course, by-line, date; the renderers add the contents)."""
    import nbformat

    cells = []
    for nb in executed:
        cells += copy.deepcopy(nb.cells)
    combined = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(executed[0].metadata))
    combined.metadata["title"] = TITLE
    combined.metadata["hw3_report"] = report_meta(profile)
    return combined


PLOTTING_CALL = re.compile(r"^(?!\s*(?:from|import)\b).*?\b(plot_\w+|plt\.(?:plot|subplots|figure|imshow|show)|"
                           r"sns\.\w+plot)\s*\(", re.MULTILINE)


def figure_problem(nb, name: str) -> str | None:
    """One line when ``nb`` calls plotting functions but holds no figure (PNG or SVG output), else None.

    That happens when the kernel draws with a non-inline backend (e.g. MPLBACKEND=Agg inherited from
    the environment): the figures are made and never displayed.
    """
    calls = sorted({m.group(1) for c in nb.cells if c.cell_type == "code" for m in PLOTTING_CALL.finditer(c.source)})
    images = sum(bool({"image/png", "image/svg+xml"} & set(o.get("data", {})))
                 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    if calls and not images:
        return (f"{name} calls {', '.join(calls[:3])}{', ...' if len(calls) > 3 else ''} but its executed notebook "
                f"holds no figure: the kernel did not use the inline matplotlib backend (MPLBACKEND="
                f"{os.environ.get('MPLBACKEND', '')!r} outside the build?)")
    return None


def build(profile: str = "quick", overrides: dict | None = None, show_code: bool = False,
          engine: str | None = None, confirm: bool = False) -> list[Path]:
    """Execute and render everything (PDF ``engine``: typst, the default, or xelatex); return the paths written.
    Before anything runs, each notebook's training plan and its estimated time are printed, and a plan
    far beyond its profile's own stops the build unless ``confirm`` (:mod:`hwutils.preflight`)."""
    paths = notebook_paths()
    if not paths:
        raise ReportError(f"no notebooks found in {NOTEBOOKS}")
    parameters = resolve_parameters(profile, overrides or {}, paths)
    engine = pdf_engine(engine)
    check_tools(engine)
    files = find_mnist_dir()  # MNIST present and intact before hours of work, not after
    check_writable(REPORT, what="the report folder", fix=f"make it writable (chmod -R u+w {REPORT})")
    # The kernels run in notebooks/ and inherit this environment: give them the absolute folder (a
    # relative $HWUTILS_DATA_DIR, or ./data, would otherwise point elsewhere there).
    os.environ[DATA_ENV_VAR] = str(mnist_folder(files))
    limits = execution_limits()
    _check_plans(paths, parameters, confirm)
    # The checks passed: from here the outputs change, and `--check` fails until this build has succeeded.
    BUILD_STAMP.unlink(missing_ok=True)
    written, executed = [], []
    with tempfile.TemporaryDirectory(prefix="hw3-progress-") as progress_dir:
        for path in paths:
            print(f">> executing {path.name} with {parameters[path]}", flush=True)
            out = REPORT / "executed" / path.name
            nb = _execute(path, out, parameters[path], Path(progress_dir), limits)
            problem = figure_problem(nb, path.name)
            if problem:
                raise ReportError(problem)
            executed.append(nb)
            written.append(out)
    for path, nb in zip(paths, executed):
        print(f">> rendering {path.stem}", flush=True)
        html, pdf = REPORT / "html" / f"{path.stem}.html", REPORT / "pdf" / f"{path.stem}.pdf"
        titled = copy.deepcopy(nb)
        titled.metadata["title"] = f"{TITLE} — {part_title(nb)}"
        titled.metadata["hw3_report"] = report_meta(profile, part=part_title(nb))
        render(titled, html, pdf, show_code, engine)
        written += [html, pdf]
    print(">> rendering the combined report", flush=True)
    html, pdf = REPORT / "hw3_report.html", REPORT / "hw3_report.pdf"
    render(combine(executed, profile), html, pdf, show_code, engine)
    return written + [html, pdf]


def _check_plans(paths, parameters, confirm: bool) -> None:
    """Print each notebook's training plan and estimate; stop (one line) at a plan far beyond its
    profile's own unless ``confirm``."""
    from .preflight import plan_of, too_costly

    for path in paths:
        plan = plan_of(path, parameters[path], NOTEBOOKS)
        if plan is None:
            continue
        print(f">> plan: {plan.text}", flush=True)
        problem = too_costly(plan)
        if problem and not confirm:
            raise ReportError(problem)


def execution_limits() -> dict:
    """Seconds: ``timeout``, how long one cell may run ($HWUTILS_CELL_TIMEOUT; None, the default: no
    limit) and ``notice``, how long a running cell may print nothing before it is named
    ($HWUTILS_STALL_NOTICE, default 600; named again after as long again)."""
    def seconds(name: str, default):
        text = os.environ.get(name, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise ReportError(f"{name}={text!r} is not a number of seconds > 0; set it to one (e.g. {name}=3600) "
                              f"or unset it")
        return value

    timeout = seconds(CELL_TIMEOUT_ENV, None)
    return {"timeout": None if timeout is None else max(1, round(timeout)),  # nbclient takes whole seconds
            "notice": seconds(STALL_NOTICE_ENV, STALL_NOTICE_SECONDS)}


def _execute(path: Path, out: Path, parameters: dict, progress_dir: Path, limits: dict):
    """Execute one notebook into ``out`` (written whole or not at all) and return it. A notebook that
    stops - a failing cell, a dead kernel, a cell past the time-out - is kept as
    ``<name>.partial.ipynb`` beside ``out`` (the last good ``out`` stays) and raises one line: which
    cell, why, and how to resume."""
    import nbformat
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    kept = out.with_name(f"{path.stem}.partial.ipynb")
    log = progress_dir / f"{path.stem}.log"
    watch = _Watch(path.name)
    with written_whole(out) as partial:
        try:
            # The kernel's training bars append status lines to `log`; follow() prints them here.
            with _kernel_environment(log), follow(log, prefix=f"   [{path.stem}] "), _stall_notices(watch, limits):
                papermill.execute_notebook(str(path), str(partial), parameters=parameters, kernel_name=KERNEL,
                                           engine_name=_watched_engine(), watch=watch,
                                           execution_timeout=limits["timeout"], cwd=str(NOTEBOOKS),
                                           progress_bar=True, log_output=False, **_kernel_options())
        except papermill.PapermillExecutionError as err:
            if err.ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel too
                raise KeyboardInterrupt from None
            stopped, resume = f"{path.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}", RESUME
        except DeadKernelError:
            stopped, resume = f"{path.name}: the kernel died in {watch.where()}: {watch.death()}", RESUME
        except CellTimeoutError as err:
            stopped = (f"{path.name}: {watch.where()} ran longer than {CELL_TIMEOUT_ENV}={limits['timeout']} s and "
                       f"was stopped" if limits["timeout"] else f"{path.name}: {watch.where()}: {err}".splitlines()[0])
            resume = f"raise or unset {CELL_TIMEOUT_ENV}, then {RESUME}"
        else:
            kept.unlink(missing_ok=True)  # a partial notebook of an earlier build
            stopped = None
        if stopped:
            os.replace(partial, kept)
            raise ReportError(f"{stopped} (the partially executed notebook is {kept}); {resume}")
    return nbformat.read(out, as_version=4)


class _Watch:
    """What one notebook's kernel is doing: the cell it runs, since when it has printed nothing, and
    how it ended when it died (told by the engine of :func:`_watched_engine`)."""

    def __init__(self, name: str):
        self.name, self.cell, self.first_line, self.exit_code = name, None, "", None
        self.running, self.quiet_since, self.notices = False, time.monotonic(), 0

    def started(self, number: int, source: str) -> None:
        self.cell, self.first_line = number, next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
        self.running = True
        self.heard()

    def heard(self) -> None:
        self.quiet_since, self.notices = time.monotonic(), 0

    def where(self) -> str:
        """The cell as its execution count ([N] in Jupyter) and its first line."""
        if self.cell is None:
            return "no cell (while the kernel started)"
        line = self.first_line if len(self.first_line) <= 60 else self.first_line[:57] + "..."
        return f"cell {self.cell} (`{line}`)"

    def stall_notice(self, every: float) -> str | None:
        """One line when the running cell has printed nothing for another ``every`` seconds, else None."""
        quiet = time.monotonic() - self.quiet_since
        if not self.running or quiet < every * (self.notices + 1):
            return None
        self.notices += 1
        return (f"{self.name}, {self.where()} has printed nothing for {_duration(quiet)}; still running "
                f"({CELL_TIMEOUT_ENV}=SECONDS stops such a cell)")

    def death(self) -> str:
        """The likely cause of the kernel's death, from its exit status."""
        code = self.exit_code
        if code is not None and code < 0:
            if -code == signal.SIGKILL:
                return "killed by SIGKILL, most likely out of memory (the system's OOM killer)"
            return f"killed by {_signal_name(-code)} (a crash)"
        if code is not None:
            return f"exited with code {code} (a crash)"
        return "it stopped answering (out of memory or a crash)"


def _duration(seconds: float) -> str:
    return f"{int(seconds)} s" if seconds < 120 else f"{int(seconds // 60)} min"  # at least that long


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextlib.contextmanager
def _stall_notices(watch: _Watch, limits: dict):
    """While the block runs, print a notice each time the running cell has been quiet for another
    ``limits["notice"]`` seconds."""
    from tqdm import tqdm

    every, stop = limits["notice"], threading.Event()

    def run() -> None:
        while not stop.wait(min(1.0, every / 4)):
            notice = watch.stall_notice(every)
            if notice:
                tqdm.write(f"   notice: {notice}", file=sys.stdout)  # around papermill's bar, as follow() does
                sys.stdout.flush()

    thread = threading.Thread(target=run, name="hwutils-stall", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@functools.cache
def _watched_engine() -> str:
    """Register (once) papermill's nbclient engine with a client that tells a :class:`_Watch` which
    cell runs, when it prints, and the kernel's exit status when it dies; return the engine's name."""
    from jupyter_core.utils import ensure_event_loop
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import run_sync
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    # The client's own error lines ("Kernel died while waiting...") would come before ours, which say it in one line.
    quiet = logging.getLogger("hwutils.report.kernel")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False

    class WatchedClient(PapermillNotebookClient):
        def __init__(self, nb_man, watch: _Watch, **kwargs):
            super().__init__(nb_man, **kwargs)
            self.watch = watch

        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            if cell.cell_type == "code" and cell.source.strip():
                self.watch.started(self.code_cells_executed + 1, cell.source)  # its execution count
            try:
                return await super().async_execute_cell(cell, cell_index, *args, **kwargs)
            except DeadKernelError:
                process = getattr(getattr(self.km, "provisioner", None), "process", None)
                self.watch.exit_code = process.poll() if process is not None else None
                raise
            finally:
                self.watch.running = False

        _execute_cell = run_sync(async_execute_cell)

        def execute_cell(self, *args, **kwargs):
            try:
                return self._execute_cell(*args, **kwargs)
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: end the cell's waits, then kill the kernel
                loop = ensure_event_loop()
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.shutdown_kernel = "immediate"  # not a polite request the running cell never reads
                raise

        def process_message(self, *args, **kwargs):
            output = super().process_message(*args, **kwargs)
            if output is not None:
                self.watch.heard()
            return output

    class WatchedEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, watch=None, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs):
            kwargs.pop("input_path", None)
            return WatchedClient(nb_man, watch or _Watch("notebook"), timeout=execution_timeout,
                                 startup_timeout=start_timeout, kernel_name=kernel_name, log=quiet,
                                 log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file,
                                 **kwargs).execute()

    papermill_engines.register("hw3-watched", WatchedEngine)
    return "hw3-watched"


@contextlib.contextmanager
def _signals_stop_the_build():
    """SIGTERM and SIGHUP (a scheduler's time limit, a closed terminal) stop the build as Ctrl-C does:
    :class:`Stopped` unwinds it, so the kernel is shut down and the temporary files removed. Once the
    build is stopping, further signals are ignored, so they cannot break the clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def stop(signum, frame):
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(signum) if signum != signal.SIGINT else KeyboardInterrupt

    saved = {sig: signal.signal(sig, stop) for sig in signals if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _kernel_environment(progress_log: Path):
    """The environment the kernels inherit while they run: the inline matplotlib backend (an
    exported MPLBACKEND=Agg would otherwise leave the report without figures) and the progress log."""
    saved = {k: os.environ.get(k) for k in ("MPLBACKEND", LOG_ENV)}
    os.environ.update({"MPLBACKEND": INLINE_BACKEND, LOG_ENV: str(progress_log)})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _kernel_options() -> dict:
    """papermill options for the kernel: CurveZMQ transport encryption where pyzmq has it, which
    also keeps ipykernel's "running over TCP without encryption" warning off the terminal."""
    try:
        import zmq
        from jupyter_client.manager import KernelManager
        from traitlets.config import Config
    except ImportError:
        return {}
    if "transport_encryption" not in KernelManager.class_trait_names() or not zmq.has("curve"):
        return {}
    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})}


def check_outputs() -> list[str]:
    """Problems with the rendered report (empty list: all there, non-trivial, and from the last build,
    which succeeded)."""
    problems = []
    started = None
    try:
        started = float(json.loads(BUILD_STAMP.read_text())["started"])
    except FileNotFoundError:
        problems.append(f"no successful build is recorded ({BUILD_STAMP} is missing): the last build failed or "
                        f"did not finish, so the outputs may be stale; run make report")
    except (OSError, ValueError, KeyError, TypeError) as err:
        problems.append(f"{BUILD_STAMP} is unreadable ({type(err).__name__}); run make report")
    stems = [p.stem for p in notebook_paths()]
    expected = [REPORT / "html" / f"{s}.html" for s in stems] + [REPORT / "pdf" / f"{s}.pdf" for s in stems]
    expected += [REPORT / "hw3_report.html", REPORT / "hw3_report.pdf"]
    for path in expected:
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        if started is not None and path.stat().st_mtime < started - 2:
            problems.append(f"{path} is older than the last successful build (stale); run make report")
        if path.suffix == ".pdf":
            from pypdf import PdfReader

            try:
                pages = PdfReader(path).pages
                chars = sum(len("".join(page.extract_text().split())) for page in pages)
            except Exception as err:  # pypdf's errors for a truncated or non-PDF file
                problems.append(f"{path}: not a readable PDF ({type(err).__name__})")
                continue
            if len(pages) < 2 or chars < 2000:
                problems.append(f"{path}: {len(pages)} pages, {chars} characters of text - not a real report")
        else:
            text = path.read_text(encoding="utf-8")
            figures = len(re.findall(r"data:image/(?:png|svg\+xml);base64", text))
            if figures < 2 or "Traceback" in text:
                problems.append(f"{path}: {figures} embedded figures" + (", holds a traceback" if "Traceback" in text else ""))
    return problems


def _write_problem(err: OSError) -> str:
    """One line for a failed write of the build (its folder; how much was free when the disk is full)."""
    path = Path(err.filename) if err.filename else None
    if not (full_disk(err) or isinstance(err, PermissionError) or err.errno == errno.EROFS):
        return f"{type(err).__name__}: {err}"
    fix = "free some space there" if full_disk(err) else "make it writable"
    named = f"{path.name}: " if path else ""
    return (f"{named}{write_failure(path.parent if path else REPORT, err)}; {fix} and run the same command again "
            f"(the cached runs are kept)")


def cached_runs(folders=None) -> int:
    """How many trained runs the results folders hold (default: those of the notebooks as declared
    and as overridden in the last build)."""
    folders = _RESULTS_FOLDERS if folders is None else folders
    return sum(1 for folder in set(folders) for _ in Path(folder).glob("*-" + "[0-9a-f]" * 16 + ".json"))


def _yaml_error(err, source: str) -> ReportError:
    """One line for a YAML syntax error: the problem and where it is."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return ReportError(f"{source} is not valid YAML: {problem}{where}; write one `name: value` per line "
                       f"(e.g. `downsample: 7`, `seeds: [0, 1, 2]`)")


def read_overrides(params_file: str | None = None, pairs=()) -> dict:
    """The parameter overrides of a YAML ``params_file`` and of ``-p NAME VALUE`` pairs (values as YAML)."""
    import yaml

    overrides = {}
    if params_file:
        try:
            text = Path(params_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ReportError(f"params file {params_file} not found (PARAMS_FILE / --params-file)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ReportError(f"params file {params_file} cannot be read: {getattr(err, 'strerror', None) or err}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise _yaml_error(err, f"params file {params_file}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ReportError(f"params file {params_file} must be a mapping of parameter: value (one `name: value` "
                              f"per line, e.g. `downsample: 7`), not a {type(loaded).__name__}")
        overrides.update({str(k): v for k, v in (loaded or {}).items()})
    for name, value in pairs:
        try:
            overrides[name] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise _yaml_error(err, f"-p {name} {value!r}") from None
    return overrides


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hwutils.report", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", help="smoke | quick | full | paper (default quick)")
    parser.add_argument("--params-file", help="YAML file of parameter overrides for the notebooks")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="one parameter override (value parsed as YAML)")
    parser.add_argument("--show-code", action="store_true", help="keep code cells in the rendered report")
    parser.add_argument("--check", action="store_true", help="only check that the rendered report is complete")
    parser.add_argument("--confirm", action="store_true",
                        help="go ahead with a plan far beyond its profile's (make report CONFIRM=1)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_outputs()
        for problem in problems:
            print(f"report check: {problem}", file=sys.stderr)
        print("report check: OK" if not problems else f"report check: {len(problems)} problem(s)")
        return 1 if problems else 0
    with _signals_stop_the_build():
        try:
            overrides = read_overrides(args.params_file, args.param)
            if "profile" in overrides:
                args.profile = overrides.pop("profile")
            started = time.time()
            written = build(args.profile, overrides, args.show_code, confirm=args.confirm)
            stamp = json.dumps({"started": started, "finished": time.time(), "profile": args.profile,
                                "overrides": overrides}, default=str)
            with written_whole(BUILD_STAMP) as partial:
                partial.write_text(stamp)
        except (ReportError, DataError, CacheError, ValueError, FileNotFoundError) as err:
            print(f"make report: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # a write that failed: disk full, a read-only folder
            print(f"make report: {_write_problem(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM / SIGHUP (Stopped)
            return _interrupted(getattr(err, "signum", signal.SIGINT))
    print(f">> report written: {REPORT / 'hw3_report.html'} and {REPORT / 'hw3_report.pdf'} ({len(written)} files)")
    return 0


def _interrupted(signum: int) -> int:
    """The one line of an interrupted build; its exit status, 128 + the signal's number."""
    cached = f"{cached_runs()} runs are cached" if _RESULTS_FOLDERS else "before any training"
    by = "" if signum == signal.SIGINT else f" by {_signal_name(signum)}"
    try:
        print(f"make report: interrupted{by}: {cached}, run the same command again to resume", file=sys.stderr,
              flush=True)
    except OSError:  # SIGHUP: the terminal may be gone
        pass
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
