"""Typesetting without TeX: an executed notebook -> Markdown -> HTML (pandoc) and PDF (pandoc -> Typst).

Everything comes from the virtual environment: pandoc from the ``pypandoc-binary`` wheel, the Typst
compiler and its fonts from the ``typst`` wheel. The two are pinned to a pair that works together
(pyproject.toml): pandoc's Typst writer and the Typst compiler change symbol names between releases.

* :func:`notebook_markdown` - nbconvert's Markdown of a notebook, figures extracted beside it;
* :func:`markdown_to_html` - one self-contained HTML file (figures as data URIs, math as MathML:
  no CDN, reads offline);
* :func:`markdown_to_pdf` - A4 PDF through the ``hw3_typst`` template (title page and contents
  when ``titlepage``).
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

__all__ = ["pandoc", "notebook_markdown", "markdown_to_html", "markdown_to_pdf", "TypesetError"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
TYPST_TEMPLATE = TEMPLATES / "hw3_typst" / "template.typ"
HTML_CSS = TEMPLATES / "hw3_html" / "style.css"
FIGURES = "figures"
# The page's text block (A4 less the template's margins) and the tallest a figure may be on it.
TEXT_WIDTH_CM, MAX_FIGURE_HEIGHT_CM = 16.6, 20.0
# Pandoc's Markdown, with images never turned into captioned figures (nbconvert's alt text is "png").
READER = "markdown-implicit_figures"
_IMAGE = re.compile(r"^!\[[^\]]*\]\(([^)\s]+\.png)\)\s*$", re.MULTILINE)


class TypesetError(RuntimeError):
    """pandoc or typst failed; the message holds their error."""


def pandoc() -> str:
    """The pandoc executable: the one inside the pypandoc-binary wheel, else pandoc on PATH."""
    try:
        import pypandoc

        path = pypandoc.get_pandoc_path()
        if path and Path(path).exists():
            return str(path)
    except (ImportError, OSError):
        pass
    path = shutil.which("pandoc")
    if path is None:
        raise TypesetError("pandoc not found: install the report extra (pip install -e '.[report]', "
                           "it brings pypandoc-binary)")
    return path


def _run_pandoc(args: list[str], markdown: str, cwd: Path) -> str:
    proc = subprocess.run([pandoc(), *args], input=markdown, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise TypesetError(f"pandoc failed: {proc.stderr.strip()}")
    return proc.stderr.strip()


def notebook_markdown(nb, workdir: Path, **exporter_kwargs) -> str:
    """nbconvert's Markdown of ``nb``; its figures are written to ``workdir/figures/`` (PNG files)."""
    from nbconvert import MarkdownExporter

    exporter = MarkdownExporter(**exporter_kwargs)
    body, resources = exporter.from_notebook_node(nb, resources={"output_files_dir": FIGURES, "unique_key": "nb"})
    for name, data in resources.get("outputs", {}).items():
        path = Path(workdir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return glue_numbers(body)


CODE_WIDTH = 92  # characters of the PDF's 8 pt monospace in the text width


def wrap_code(text: str, width: int = CODE_WIDTH) -> str:
    """Break lines longer than ``width`` (printed output, code) so that they stay on the page;
    continuation lines are indented by four spaces under their line."""
    lines = []
    for line in text.split("\n"):
        indent = " " * (min(len(line) - len(line.lstrip(" ")), width // 2) + 4)
        while len(line) > width:
            cut = line.rfind(" ", width // 2, width)
            cut = width if cut == -1 else cut + 1
            lines.append(line[:cut].rstrip())
            line = indent + line[cut:].lstrip(" ")
        lines.append(line)
    return "\n".join(lines)


_PLUS_MINUS = re.compile(r"(?<=\d) ± (?=\d)")
_PERCENT = re.compile(r"(?<=\d) %")


def glue_numbers(markdown: str) -> str:
    """Keep "16.03 ± 0.49" and "12 %" on one line (non-breaking spaces)."""
    return _PERCENT.sub("\u00a0%", _PLUS_MINUS.sub("\u00a0±\u00a0", markdown))


def count_figures(markdown: str) -> int:
    return len(_IMAGE.findall(markdown))


def png_geometry(path: Path) -> tuple[int, int, float]:
    """(width, height, dots per inch) of a PNG file, from its header; 100 dpi when it records none."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise TypesetError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    dpi, pos = 100.0, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs":
            x_per_unit, _, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            if unit == 1 and x_per_unit:  # pixels per metre
                dpi = x_per_unit * 0.0254
            break
        if kind == b"IDAT":
            break
        pos += 12 + length
    return width, height, dpi


def figure_width_percent(path: Path) -> float:
    """The figure at its own size (matplotlib's figsize, so its fonts keep their point size), shrunk
    to the text width when wider and to MAX_FIGURE_HEIGHT_CM when taller; as a percentage of the text width."""
    width, height, dpi = png_geometry(path)
    natural = 100.0 * width / dpi * 2.54 / TEXT_WIDTH_CM
    tallest = 100.0 * MAX_FIGURE_HEIGHT_CM / TEXT_WIDTH_CM * width / height
    return round(min(100.0, natural, tallest), 1)


_FIGURE_BLOCK = '```{=typst}\n#align(center, block(breakable: false, image("PATH", width: WIDTH%)))\n```'
_STICKY_OPEN, _STICKY_CLOSE = "```{=typst}\n#block(sticky: true)[\n```", "```{=typst}\n]\n```"
KEEP_WITH_FIGURE = 2, 1200  # at most this many paragraphs, of at most this many characters in all


def _blocks(markdown: str) -> list[str]:
    """The Markdown's blocks (separated by blank lines); fenced and indented code kept whole."""
    blocks, current, fence = [], [], None
    for line in markdown.split("\n"):
        stripped = line.lstrip()
        if fence:
            current.append(line)
            if stripped.startswith(fence):
                fence = None
            continue
        if stripped.startswith(("```", "~~~")) and not current:
            fence = stripped[:3]
            current.append(line)
            continue
        if not line.strip():
            if current and all(not c.strip() or c.startswith("    ") for c in current):
                current.append(line)  # a blank line inside indented code, or after it
            elif current:
                blocks.append("\n".join(current))
                current = []
            continue
        if current and not line.startswith("    ") and not current[-1].strip():
            blocks.append("\n".join(current).rstrip("\n "))  # indented code ended at a blank line
            current = []
        current.append(line)
    if current:
        blocks.append("\n".join(current).rstrip("\n "))
    return [b for b in blocks if b.strip()]


def _is_paragraph(block: str) -> bool:
    return not re.match(r"(#|\||```|~~~| {4}|\$\$|<|!\[|[-*+] |\d+[.)] |:::)", block)


def _typst_figures(markdown: str, workdir: Path) -> str:
    """Each figure (an image alone in its block) as a centred Typst block at its size
    (:func:`figure_width_percent`). A figure that opens a section after at most two short paragraphs
    keeps them and the heading with it: the paragraphs become sticky blocks, like Typst's headings."""
    blocks = _blocks(markdown)
    out = list(blocks)
    for i, block in enumerate(blocks):
        match = _IMAGE.fullmatch(block.strip())
        if not match:
            continue
        path = match.group(1)
        out[i] = _FIGURE_BLOCK.replace("PATH", path).replace("WIDTH", str(figure_width_percent(Path(workdir) / path)))
        if i + 1 < len(blocks) and re.match(r"\*{1,2}(Figure|Fig\.)", blocks[i + 1]):
            out[i] = out[i].replace("block(breakable: false,", "block(breakable: false, sticky: true,")  # + caption
        j = i - 1
        while j >= 0 and i - j <= KEEP_WITH_FIGURE[0] and _is_paragraph(blocks[j]):
            j -= 1
        intro = range(j + 1, i)
        if j >= 0 and blocks[j].startswith("#") and sum(len(blocks[k]) for k in intro) <= KEEP_WITH_FIGURE[1]:
            for k in intro:
                out[k] = f"{_STICKY_OPEN}\n\n{blocks[k]}\n\n{_STICKY_CLOSE}"
    return "\n\n".join(out) + "\n"


def _metadata_args(title: str, subtitle: str | None, byline: list[str], date: str | None) -> list[str]:
    args = ["-M", f"title={title}"]
    if subtitle:
        args += ["-M", f"subtitle={subtitle}"]
    for line in byline:
        args += ["-M", f"author={line}"]
    if date:
        args += ["-M", f"date={date}"]
    return args


def markdown_to_html(markdown: str, html_path: Path, workdir: Path, *, title: str, subtitle: str | None = None,
                     byline: tuple[str, ...] = (), date: str | None = None, toc: bool = False) -> str:
    """Write one self-contained HTML file; return pandoc's warnings (empty string: none)."""
    html_path = Path(html_path).resolve()
    html_path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-f", READER, "-t", "html5", "--standalone", "--embed-resources", "--mathml",
            "--css", str(HTML_CSS), "-o", str(html_path), *_metadata_args(title, subtitle, list(byline), date),
            "-M", f"pagetitle={title}"]
    if toc:
        args += ["--toc", "--toc-depth=2", "-M", "toc-title=Contents"]
    return _run_pandoc(args, markdown, Path(workdir))


def markdown_to_pdf(markdown: str, pdf_path: Path, workdir: Path, *, title: str, subtitle: str | None = None,
                    byline: tuple[str, ...] = (), date: str | None = None, titlepage: bool = False,
                    doc_title: str | None = None, description: str | None = None) -> list[str]:
    """Write the PDF (pandoc -> Typst -> typst compile); return the warnings of both, one per line.

    ``title``, ``subtitle``, ``byline`` and ``date`` make the title page (``titlepage``: then also
    the contents) or a one-line header; ``doc_title`` (default ``title``) and ``description`` go to
    the PDF's metadata.
    """
    import typst

    workdir = Path(workdir)
    typ = workdir / "report.typ"
    args = ["-f", READER, "-t", "typst", "--standalone", "--template", str(TYPST_TEMPLATE), "-o", str(typ),
            *_metadata_args(title, subtitle, list(byline), date)]
    if titlepage:
        args += ["-V", "titlepage=true"]
    args += ["-M", f"doctitle={doc_title or title}"]
    if description:
        args += ["-M", f"description={description}"]
    warnings = [line for line in _run_pandoc(args, _typst_figures(markdown, workdir), workdir).splitlines() if line]
    # pandoc 3.9 writes \odot as dot.circle, which Typst 0.14 deprecates (and 0.15 removes): use dot.o.
    typ.write_text(re.sub(r"\bdot\.circle\b", "dot.o", typ.read_text(encoding="utf-8")), encoding="utf-8")
    try:
        pdf, typst_warnings = typst.compile_with_warnings(str(typ), root=str(workdir), ignore_system_fonts=True)
    except typst.TypstError as err:
        raise TypesetError(f"typst failed on {typ}: {err}") from None
    pdf_path = Path(pdf_path)
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    pdf_path.write_bytes(pdf)
    return warnings + [str(getattr(w, "message", w)) for w in typst_warnings]
