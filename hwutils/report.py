"""The report: execute the notebooks with papermill, render HTML + PDF per notebook and combined.

``python -m hwutils.report --profile quick`` (what ``make report`` runs):

1. checks the profile, the parameter overrides, the tools (xelatex, pandoc) and the MNIST files -
   before any work;
2. executes ``notebooks/*.ipynb`` into ``report/executed/`` (papermill, kernel ``hw3``); a failing
   cell stops the build with papermill's error and leaves the partial notebook there;
3. renders ``report/html/<name>.html`` and ``report/pdf/<name>.pdf`` per notebook and the combined
   ``report/hw3_report.html`` / ``.pdf`` (title page, contents, the three parts in order).

Code cells are hidden unless ``--show-code``; progress bars (stderr) are left out of the
rendered pages but kept in the executed notebooks. ``--check`` verifies the outputs exist.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import shutil
import sys
from pathlib import Path

from .data import DataError, find_mnist_dir
from .profiles import check_profile

__all__ = ["build", "check_outputs", "check_tools", "resolve_parameters", "combine", "main"]

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "templates"  # hw3_latex: fonts with Greek and math glyphs
NOTEBOOKS = ROOT / "notebooks"
REPORT = ROOT / "report"
KERNEL = "hw3"
HTML_ONLY = "html-only"  # cell tag: shown in the HTML report, left out of the PDF
TITLE = "HW3: Regularization and optimization in deep networks"
LATEX_PACKAGES = ("Debian/Ubuntu: apt-get install texlive-xetex texlive-fonts-recommended "
                  "texlive-plain-generic pandoc; conda: conda install -c conda-forge texlive-core pandoc")


class ReportError(RuntimeError):
    """Something the user must fix before the report can be built; the message says what."""


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def check_tools() -> None:
    """Fail with the packages to install when xelatex or pandoc is missing (PDF needs both)."""
    missing = [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]
    if missing:
        raise ReportError(f"{' and '.join(missing)} not found, needed for the PDF report; install "
                          f"them ({LATEX_PACKAGES})")


def resolve_parameters(profile: str, overrides: dict, paths: list[Path]) -> dict[Path, dict]:
    """Per-notebook papermill parameters: the profile plus each override the notebook declares.

    An override that no notebook declares is an error (a typo would otherwise be ignored).
    """
    import papermill

    check_profile(profile)
    declared = {p: set(papermill.inspect_notebook(str(p))) for p in paths}
    for path, names in declared.items():
        if "profile" not in names:
            raise ReportError(f"{path.name} has no 'profile' in its parameters cell")
    unknown = set(overrides) - set().union(*declared.values())
    if unknown:
        raise ReportError(f"unknown parameter(s) {', '.join(sorted(unknown))}; the notebooks declare: "
                          f"{', '.join(sorted(set().union(*declared.values())))}")
    return {p: {"profile": profile, **{k: v for k, v in overrides.items() if k in names}}
            for p, names in declared.items()}


def _exporter_kwargs(show_code: bool) -> dict:
    from nbconvert.preprocessors import Preprocessor

    class DropStderr(Preprocessor):
        """Progress bars and warnings go to stderr; the rendered report leaves them out."""

        def preprocess_cell(self, cell, resources, index):
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
            return cell, resources

    return {"exclude_input": not show_code, "exclude_input_prompt": True, "exclude_output_prompt": True,
            "preprocessors": [DropStderr]}


def render(nb, html_path: Path, pdf_path: Path, show_code: bool) -> None:
    """Write one notebook as HTML (MathJax, embedded figures) and as PDF (xelatex)."""
    from nbconvert import HTMLExporter, PDFExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    kwargs = _exporter_kwargs(show_code)
    html, _ = HTMLExporter(embed_images=True, **kwargs).from_notebook_node(nb)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(html, encoding="utf-8")
    pdf_only = TagRemovePreprocessor(remove_cell_tags={HTML_ONLY}, enabled=True)
    kwargs["preprocessors"] = [pdf_only, *kwargs["preprocessors"]]
    pdf, _ = PDFExporter(extra_template_basedirs=[str(TEMPLATES)], template_name="hw3_latex",
                         **kwargs).from_notebook_node(nb)
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    pdf_path.write_bytes(pdf)


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
    """One notebook: title, contents, then the executed parts in order (headings kept)."""
    import nbformat

    parts = [part_title(nb) for nb in executed]
    today = dt.date.today().isoformat()
    # The HTML gets the title and contents as Markdown; the PDF has its own (maketitle, a LaTeX
    # table of contents) and drops the Markdown cell by its tag.
    title = nbformat.v4.new_markdown_cell(f"# {TITLE}\n\nExecuted {today}, profile `{profile}`.\n\n**Contents**\n\n"
                                          + "\n".join(f"{i}. {p}" for i, p in enumerate(parts, 1)) + "\n\n---")
    title.metadata["tags"] = [HTML_ONLY]
    cells = [title, _raw("\\clearpage\\tableofcontents\\clearpage", "application/pdf")]
    for nb in executed:
        cells += copy.deepcopy(nb.cells)
    combined = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(executed[0].metadata))
    combined.metadata["title"] = TITLE
    combined.metadata["authors"] = [{"name": f"profile {profile}, executed {today}"}]
    return combined


def build(profile: str = "quick", overrides: dict | None = None, show_code: bool = False) -> list[Path]:
    """Execute and render everything; return the paths written."""
    import nbformat
    import papermill

    paths = notebook_paths()
    if not paths:
        raise ReportError(f"no notebooks found in {NOTEBOOKS}")
    parameters = resolve_parameters(profile, overrides or {}, paths)
    check_tools()
    find_mnist_dir()  # MNIST present and intact (or downloadable) before hours of work, not after
    executed_dir = REPORT / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    written, executed = [], []
    for path in paths:
        out = executed_dir / path.name
        print(f">> executing {path.name} with {parameters[path]}", flush=True)
        try:
            papermill.execute_notebook(str(path), str(out), parameters=parameters[path], kernel_name=KERNEL,
                                       cwd=str(NOTEBOOKS), progress_bar=True, log_output=False)
        except papermill.PapermillExecutionError as err:
            raise ReportError(f"{path.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                              f"(the partially executed notebook is {out})") from None
        executed.append(nbformat.read(out, as_version=4))
        written.append(out)
    for path, nb in zip(paths, executed):
        print(f">> rendering {path.stem}", flush=True)
        html, pdf = REPORT / "html" / f"{path.stem}.html", REPORT / "pdf" / f"{path.stem}.pdf"
        titled = copy.deepcopy(nb)
        titled.metadata["title"] = f"{TITLE} — {part_title(nb)}"
        render(titled, html, pdf, show_code)
        written += [html, pdf]
    print(">> rendering the combined report", flush=True)
    html, pdf = REPORT / "hw3_report.html", REPORT / "hw3_report.pdf"
    render(combine(executed, profile), html, pdf, show_code)
    return written + [html, pdf]


def check_outputs() -> list[str]:
    """Problems with the rendered report (empty list: all there and non-trivial)."""
    problems = []
    stems = [p.stem for p in notebook_paths()]
    expected = [REPORT / "html" / f"{s}.html" for s in stems] + [REPORT / "pdf" / f"{s}.pdf" for s in stems]
    expected += [REPORT / "hw3_report.html", REPORT / "hw3_report.pdf"]
    for path in expected:
        if not path.exists():
            problems.append(f"{path} is missing")
        elif path.suffix == ".pdf":
            from pypdf import PdfReader

            pages = PdfReader(path).pages
            chars = sum(len("".join(page.extract_text().split())) for page in pages)
            if len(pages) < 2 or chars < 2000:
                problems.append(f"{path}: {len(pages)} pages, {chars} characters of text - not a real report")
        else:
            text = path.read_text(encoding="utf-8")
            figures = text.count("data:image/png;base64")
            if figures < 2 or "Traceback" in text:
                problems.append(f"{path}: {figures} embedded figures" + (", holds a traceback" if "Traceback" in text else ""))
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hwutils.report", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", help="smoke | quick | full | paper (default quick)")
    parser.add_argument("--params-file", help="YAML file of parameter overrides for the notebooks")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="one parameter override (value parsed as YAML)")
    parser.add_argument("--show-code", action="store_true", help="keep code cells in the rendered report")
    parser.add_argument("--check", action="store_true", help="only check that the rendered report is complete")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check_outputs()
            for problem in problems:
                print(f"report check: {problem}", file=sys.stderr)
            print("report check: OK" if not problems else f"report check: {len(problems)} problem(s)")
            return 1 if problems else 0
        overrides = {}
        import yaml

        if args.params_file:
            overrides.update(yaml.safe_load(Path(args.params_file).read_text()) or {})
        overrides.update({name: yaml.safe_load(value) for name, value in args.param})
        if "profile" in overrides:
            args.profile = overrides.pop("profile")
        written = build(args.profile, overrides, args.show_code)
    except (ReportError, DataError, ValueError, FileNotFoundError) as err:
        print(f"make report: {err}", file=sys.stderr)
        return 2
    print(f">> report written: {REPORT / 'hw3_report.html'} and {REPORT / 'hw3_report.pdf'} ({len(written)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
