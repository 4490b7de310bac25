"""Typesetting without TeX: an executed notebook -> Markdown -> HTML (pandoc) and PDF (pandoc -> Typst).

Everything comes from the virtual environment: pandoc from the ``pypandoc-binary`` wheel, the Typst
compiler and its fonts from the ``typst`` wheel. The two are pinned to a pair that works together
(pyproject.toml): pandoc's Typst writer and the Typst compiler change symbol names between releases.

* :func:`notebook_markdown` - nbconvert's Markdown of a notebook, figures extracted beside it,
  with the report's figure and table numbers resolved (:func:`cross_reference`: captions become
  anchors, ``@fig-…``/``@tbl-…`` citations links, each image's alt text its caption) and its
  minus signs (:func:`typography`);
* :func:`markdown_to_html` - one self-contained HTML file (figures as data URIs, SVG where the
  notebook holds SVG, each opening at full size when tapped; math as MathML: no CDN, reads offline;
  a page language, one main landmark, tables and wide equations that scroll by keyboard too);
* :func:`markdown_to_pdf` - A4 PDF through the ``hw3_typst`` template (title page and contents
  when ``titlepage``).
"""
from __future__ import annotations

import itertools
import re
import shutil
import struct
import subprocess
from pathlib import Path

from .display import CAPTION, CITATION

__all__ = ["pandoc", "notebook_markdown", "cross_reference", "typography", "markdown_to_html",
           "markdown_to_pdf", "TypesetError"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
TYPST_TEMPLATE = TEMPLATES / "hw3_typst" / "template.typ"
HTML_CSS = TEMPLATES / "hw3_html" / "style.css"
HTML_TEMPLATE = TEMPLATES / "hw3_html" / "template.html"
FIGURES = "figures"
#: The document's author in the HTML's and the PDF's metadata (the title block's by-line says which
#: build made it).
AUTHOR = "hw3 authors"
#: CSS pixels per inch of a figure in the HTML: 120, the notebooks' figure.dpi, so that a figure is
#: as large on the page as the PNG figures were.
HTML_PX_PER_INCH = 120
# The page's text block (A4 less the template's margins) and the tallest a figure may be on it.
TEXT_WIDTH_CM, MAX_FIGURE_HEIGHT_CM = 16.6, 20.0
# Pandoc's Markdown, with images never turned into captioned figures: the caption under an image
# is its own paragraph (and its alt text, see cross_reference).
READER = "markdown-implicit_figures"
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+\.(?:png|svg))\)\s*$", re.MULTILINE)


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
    """nbconvert's Markdown of ``nb``; its figures are written to ``workdir/figures/`` (SVG files, or
    PNG where a figure has no SVG)."""
    from nbconvert import MarkdownExporter

    exporter = MarkdownExporter(**exporter_kwargs)
    body, resources = exporter.from_notebook_node(nb, resources={"output_files_dir": FIGURES, "unique_key": "nb"})
    for name, data in resources.get("outputs", {}).items():
        path = Path(workdir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return cross_reference(typography(glue_numbers(body)))


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
_SLASH = re.compile(r"(?<=\d) / (?=\d)")


def glue_numbers(markdown: str) -> str:
    """Keep "16.03 ± 0.49", "12 %" and "100 / 500" on one line (non-breaking spaces)."""
    glued = _PLUS_MINUS.sub("\u00a0±\u00a0", _SLASH.sub("\u00a0/\u00a0", markdown))
    return _PERCENT.sub("\u00a0%", glued)


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


# Inline code, math, link targets and HTML tags: no typography or citation inside them.
_PROTECTED = re.compile(r"(`+).*?\1|\$\$.*?\$\$|\$[^$\n]+?\$|\]\([^)\s]*\)|<[^>\n]*>", re.S)
_MINUS = re.compile(r"(?<![\w.\-\u2212])-(?=\d)")  # "-0.24", "(-3", not "1e-3", "0-3", "--2"


def _is_code(block: str) -> bool:
    return block.startswith(("```", "~~~", "    "))


def _in_prose(block: str, change) -> str:
    """``change`` applied to the text of a Markdown block outside inline code, math, link targets
    and HTML tags (code blocks are left as they are)."""
    if _is_code(block):
        return block
    out, pos = [], 0
    for match in _PROTECTED.finditer(block):
        out += [change(block[pos:match.start()]), match.group(0)]
        pos = match.end()
    return "".join(out + [change(block[pos:])])


def typography(markdown: str) -> str:
    """The same minus sign in the HTML and the PDF: U+2212 for a negative number ("-0.24" is a
    hyphen in HTML and a minus in Typst). (Apostrophes: pandoc's smart quotes in the HTML,
    :func:`_typst_apostrophes` in the PDF.)"""
    fix = lambda text: _MINUS.sub("\u2212", text)
    return "\n\n".join(_in_prose(block, fix) for block in _blocks(markdown)) + "\n"


def _alt_text(caption: str) -> str:
    """A caption as plain text for an image's alt attribute: no Markdown, no TeX commands."""
    text = re.sub(r"<[^>]*>", "", caption)
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text)  # $\beta_2$ -> beta_2
    text = re.sub(r"[\[\]$*`{}\\]", "", text)
    return " ".join(text.split())


def _part_number(block: str) -> str | None:
    match = re.match(r"# Part (\d+)\b", block)
    return match.group(1) if match else None


def cross_reference(markdown: str) -> str:
    """Number-check, anchor and cite the captions of :mod:`hwutils.display` in one document.

    * every caption's number is unique, and under a heading "# Part N" it is "N.k";
    * a labelled caption becomes an anchor (``[**Figure 2.3.**]{#fig-2-x}``), and each citation
      ``@fig-x`` / ``@tbl-x``, before or after it, a link "Figure 2.3" to it. Labels are the
      part's own: a citation means its own part's label, else the one other part's that has it;
    * each image gets its caption as alt text (the images just above a figure caption), and a
      table caption becomes the table's caption (pandoc's ``Table:``);
    * an image without a caption, a table without one, or a citation of no caption stops the
      render with one line saying which.
    """
    blocks = _blocks(markdown)
    numbers, labels, parts, part = {}, {}, [], None  # labels: (part, label) -> (name, anchor)
    for i, block in enumerate(blocks):
        part = _part_number(block) or part
        parts.append(part)
        match = None if _is_code(block) else CAPTION.match(block)
        if not match:
            continue
        name = f"{match['kind']} {match['number']}"
        if name in numbers:
            raise TypesetError(f"{name} is numbered twice (\"{numbers[name][:40]}…\"): call "
                               "hwutils.display.start_part(n) at the top of each notebook")
        if part is not None and not match["number"].startswith(f"{part}."):
            raise TypesetError(f"{name} (\"{match['text'][:40]}…\") is in Part {part}: call "
                               f"hwutils.display.start_part({part}) at the top of its notebook")
        numbers[name] = match["text"]
        head = f"**{name}.**"
        if match["label"]:
            key = (part, match["label"])
            if key in labels:
                raise TypesetError(f"label {match['label']} names both {labels[key][0]} and {name}: "
                                   "give each caption of a part its own label")
            anchor = match["label"] if part is None else match["label"].replace("-", f"-{part}-", 1)
            labels[key] = name, anchor
            head = f"[{head}]{{#{anchor}}}"
        blocks[i] = f"{head} {match['text']}"
        if match["kind"] == "Table":
            if i + 1 >= len(blocks) or not blocks[i + 1].startswith("|"):
                raise TypesetError(f"{name} is a table caption with no table under it")
            blocks[i] = "Table: " + blocks[i]
        else:
            j, alt = i - 1, _alt_text(f"{name}: {match['text']}")
            while j >= 0 and _IMAGE.fullmatch(blocks[j]):
                blocks[j] = _IMAGE.sub(lambda m: f"![{alt}]({m.group(2)})", blocks[j])
                j -= 1
            if j == i - 1:
                raise TypesetError(f"{name} is a figure caption with no figure above it")
    for i, block in enumerate(blocks):
        previous = blocks[i - 1] if i else ""
        if block.startswith("|") and not previous.startswith("Table: ") and not _is_code(block):
            raise TypesetError(f"a table has no caption ({block.splitlines()[0][:60]}…): show it "
                               "with hwutils.display.show_table(frame, caption)")
        image = _IMAGE.fullmatch(block)
        if image and not image.group(1).startswith(("Figure ", "Table ")):
            raise TypesetError(f"figure {image.group(2)} has no caption: show it with "
                               "hwutils.display.caption(text)")

    def cite(part):
        def link(match):
            label = match["label"]
            found = labels.get((part, label))
            others = [v for (p, l), v in labels.items() if l == label and p != part]
            if found is None and len(others) == 1:
                found = others[0]
            if found is None:
                where = "in more than one other part" if others else "nowhere"
                known = ", ".join(sorted({l for p, l in labels if p == part})) or "none"
                raise TypesetError(f"@{label} cites a caption {where} (labels of this part: {known})")
            return f"[{found[0].replace(' ', chr(0xA0))}](#{found[1]})"
        return lambda text: CITATION.sub(link, text)

    return "\n\n".join(_in_prose(block, cite(part)) for block, part in zip(blocks, parts)) + "\n"


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


_LENGTH_INCHES = {"pt": 1 / 72, "px": 1 / 96, "in": 1.0, "cm": 1 / 2.54, "mm": 1 / 25.4, "": 1 / 96}


def svg_inches(path: Path) -> tuple[float, float]:
    """(width, height) in inches of an SVG file, from its root's width and height (matplotlib writes pt)."""
    head = Path(path).read_text(encoding="utf-8", errors="replace")[:4000]
    root = re.search(r"<svg\b[^>]*>", head)
    sizes = [re.search(rf'\s{name}="([\d.]+)\s*(pt|px|in|cm|mm|)"', root.group(0)) if root else None
             for name in ("width", "height")]
    if not all(sizes):
        raise TypesetError(f"{path} is not an SVG file with a width and a height")
    return tuple(float(m.group(1)) * _LENGTH_INCHES[m.group(2)] for m in sizes)


def figure_inches(path: Path) -> tuple[float, float]:
    """(width, height) in inches of a figure at its own size: an SVG's, or a PNG's pixels over its dpi."""
    if Path(path).suffix == ".svg":
        return svg_inches(path)
    width, height, dpi = png_geometry(path)
    return width / dpi, height / dpi


def figure_width_percent(path: Path) -> float:
    """The figure at its own size (matplotlib's figsize, so its fonts keep their point size), shrunk
    to the text width when wider and to MAX_FIGURE_HEIGHT_CM when taller; as a percentage of the text width."""
    width, height = figure_inches(path)
    natural = 100.0 * width * 2.54 / TEXT_WIDTH_CM
    tallest = 100.0 * MAX_FIGURE_HEIGHT_CM / TEXT_WIDTH_CM * width / height
    return round(min(100.0, natural, tallest), 1)


# A figure and its caption float (Typst's place(float: true)): text fills the page around it, and
# the figures of a part are placed before the next part begins (place.flush()).
_FLOAT_OPEN = ("```{=typst}\n#place(ALIGN, float: true, clearance: 1.4em)[\n#set text(size: 9.5pt)\n"
               "IMAGES\n```")
_FLOAT_CLOSE = "```{=typst}\n]\n```"
_FLUSH = "```{=typst}\n#place.flush()\n```"
_TYPST_IMAGE = '#align(center, block(breakable: false, image("PATH", width: WIDTH%, alt: ALT)))'
_BREAKABLE_OPEN = "```{=typst}\n#[#show figure: set block(breakable: true)\n```"
_BREAKABLE_CLOSE = "```{=typst}\n]\n```"
LONG_TABLE_ROWS = 45  # rows of 9 pt text that fill a page: a longer table may break across pages
PAGE_HEIGHT_CM = 25.1  # the text block's height: A4 less the template's top and bottom margins
CAPTION_HEIGHT_CM = 2.0  # room for a caption of a few lines under a floating figure


def _typst_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _typst_image(image: re.Match, workdir: Path) -> tuple[str, float]:
    """One image as Typst at its size (:func:`figure_width_percent`), its alt text kept; and its
    height on the page (cm)."""
    path = Path(workdir) / image.group(2)
    width_pct = figure_width_percent(path)
    w, h = figure_inches(path)
    alt = _typst_string(re.sub(r"\\(.)", r"\1", image.group(1)))  # the Markdown escapes undone
    typst = _TYPST_IMAGE.replace("PATH", image.group(2)).replace("WIDTH", str(width_pct))
    return typst.replace("ALT", alt), width_pct / 100 * TEXT_WIDTH_CM * h / w


def _typst_figures(markdown: str, workdir: Path) -> str:
    """Each figure - the images above one caption, and the caption - as one Typst float, where
    text follows it in its section to fill the page around it. The first figure of a part floats
    to the bottom of its page (not above the part's title), the others to the top or the bottom,
    whichever is nearer: a float may come after the next section's heading, as in a paper. A
    figure right under a heading, one that only more figures follow in its part, a part's last
    figure, or one too tall for a page stays in the flow, its last image kept with its caption
    (and the heading with it); the figures still floating are placed before it, and before each
    part, so that the figures keep their order."""
    blocks, out, pending, opening = _blocks(markdown), [], False, False
    # Whether text follows later in the same part, and a figure too (the part's last figure stays
    # in the flow: floated, it would end the part alone on a page, its text all placed before it).
    text_follows, figure_follows = [False] * len(blocks), [False] * len(blocks)
    seen_text = seen_figure = False
    for k in range(len(blocks) - 1, -1, -1):
        text_follows[k], figure_follows[k] = seen_text, seen_figure
        if blocks[k].startswith("# "):
            seen_text = seen_figure = False
        elif _IMAGE.fullmatch(blocks[k]):
            seen_figure = True
        elif not re.match(r"\[?\*\*Figure ", blocks[k]):
            seen_text = True
    i = 0
    while i < len(blocks):
        if re.match(r"#{1,2} ", blocks[i]):
            if blocks[i].startswith("# "):
                out += [_FLUSH] if pending else []
                pending, opening = False, True
            out.append(blocks[i])
            i += 1
            continue
        under_heading = i > 0 and blocks[i - 1].startswith("#")
        images = []
        while i < len(blocks) and _IMAGE.fullmatch(blocks[i]):
            images.append(_typst_image(_IMAGE.fullmatch(blocks[i]), workdir))
            i += 1
        if not images:
            table = blocks[i + 1] if blocks[i].startswith("Table: ") and i + 1 < len(blocks) else ""
            if table.count("\n") > LONG_TABLE_ROWS:  # longer than a page: let it break
                out += [_BREAKABLE_OPEN, blocks[i], table, _BREAKABLE_CLOSE]
                i += 2
                continue
            out.append(blocks[i])
            i += 1
            continue
        typst, height = [t for t, _ in images], sum(h for _, h in images)
        captioned = i < len(blocks) and re.match(r"\[?\*\*Figure ", blocks[i])
        if (captioned and text_follows[i] and figure_follows[i] and not under_heading
                and height + CAPTION_HEIGHT_CM <= PAGE_HEIGHT_CM):
            align = "bottom" if opening else "auto"
            out += [_FLOAT_OPEN.replace("ALIGN", align).replace("IMAGES", "\n".join(typst)),
                    blocks[i], _FLOAT_CLOSE]
            pending, opening = True, False
            i += 1
            continue
        if captioned:  # the last image is kept with its caption
            typst[-1] = typst[-1].replace("breakable: false,", "breakable: false, sticky: true,")
        if pending:
            out.insert(len(out) - 1 if under_heading else len(out), _FLUSH)  # before the heading
            pending = False
        out += ["```{=typst}\n" + t + "\n```" for t in typst]
    return "\n\n".join(out) + "\n"


def _typst_apostrophes(source: str) -> str:
    """pandoc's Typst writer turns the apostrophe of "L2’s" back into ', which Typst prints as a
    prime after a digit (L2′s): write it as ’ again (outside raw text)."""
    parts = re.split(r"(```.*?```|`[^`\n]*`)", source, flags=re.S)
    return "".join(part if k % 2 else re.sub(r"(?<=\d)'(?=[^\W\d_])", "\u2019", part)
                   for k, part in enumerate(parts))


def _metadata_args(title: str, subtitle: str | None, byline: list[str], date: str | None) -> list[str]:
    args = ["-M", f"title={title}"]
    if subtitle:
        args += ["-M", f"subtitle={subtitle}"]
    for line in byline:
        args += ["-M", f"author={line}"]
    if date:
        args += ["-M", f"date={date}"]
    return args


def _html_figure_sizes(markdown: str, workdir: Path) -> str:
    """Each image with its own size in CSS pixels (width and height attributes): the page shrinks it
    to the column, and shows it at this size when it is opened (:func:`accessible_html`)."""
    def sized(image: re.Match) -> str:
        width, height = figure_inches(Path(workdir) / image.group(2))
        rest = image.group(0)[image.end(2) + 1 - image.start():]  # the line's end, kept
        return (f"![{image.group(1)}]({image.group(2)})"
                f"{{width={round(width * HTML_PX_PER_INCH)} height={round(height * HTML_PX_PER_INCH)}}}{rest}")
    return _IMAGE.sub(sized, markdown)


_HTML_IMAGE = re.compile(r"<img\b([^>]*?)\s*/?>")
_FIGURE_PARAGRAPH = re.compile(r"<p>(<img\b[^>]*>)</p>")
_HEADER_CELL = re.compile(r"(<th\b[^>]*>)(.*?)(</th>)", re.S)
_TEX = re.compile(r'<annotation encoding="application/x-tex">(.*?)</annotation>', re.S)
_DATA_CELL = re.compile(r"(<td\b)([^>]*>)([^<]*)(</td>)")
#: A table cell that is a number or numbers ("16.03 ± 0.49", "100 / 500 / 2,000", "1e-05", layer widths
#: "784-800-10" even where a zero-width space allows a break in the PDF): kept on one line.
_NUMBER_CHARS = r"[\d.,:;/()%+\-\u2212\u00b1\u00d7eE\s\u00a0\u2009\u2011\u200b]*"
_NUMERIC = re.compile(rf"{_NUMBER_CHARS}\d{_NUMBER_CHARS}")
_DISPLAY_MATH = re.compile(r'<math display="block".*?</math>', re.S)


def _html_image(match: re.Match) -> str:
    """pandoc's --embed-resources writes an image's alt text as role="img" aria-label: an alt again."""
    attrs = match.group(1)
    label = re.search(r'\saria-label="([^"]*)"', attrs)
    attrs = re.sub(r'\s(?:role="img"|aria-label="[^"]*")', "", attrs)
    if label and not re.search(r"\salt=", attrs):
        attrs = f' alt="{label.group(1)}"' + attrs
    return f"<img{attrs} />"


def accessible_html(page: str) -> str:
    """pandoc's HTML page made to pass the Nu HTML checker and axe-core, and to read on a phone:

    * each image has its alt text (no role="img"), and a figure (an image alone in its paragraph) is a
      link to itself that opens it at its own size, scrolling, over the page (CSS :target, no script);
    * a table, and a display equation, that is wider than the column scrolls; it takes the keyboard's
      focus, so that it scrolls by keyboard too;
    * a header cell that holds only math gets its TeX as (visually hidden) text; an empty one (the
      corner above the row names) is a data cell;
    * a cell that holds a number, or numbers, never breaks (class "number");
    * a combining circumflex (MathML's hat accent) is written as the spacing one; no type on <style>.
    """
    page = _HTML_IMAGE.sub(_html_image, page)
    numbers = itertools.count(1)

    def zoomable(match: re.Match) -> str:
        k = next(numbers)
        return (f'<span class="figure-back" id="figure-{k}-back"></span><div class="figure-image" id="figure-{k}">'
                f'<a class="figure-open" href="#figure-{k}">{match.group(1)}</a>'
                f'<a class="figure-close" href="#figure-{k}-back">Close the full-size figure</a></div>')

    page = _FIGURE_PARAGRAPH.sub(zoomable, page)
    page = page.replace("<table>", '<table tabindex="0">')
    page = _DISPLAY_MATH.sub(lambda m: f'<span class="display-math" tabindex="0">{m.group(0)}</span>', page)

    def header(match: re.Match) -> str:
        open_, body, close = match.groups()
        if not body.strip():  # the corner above a table's row names: a data cell, not an empty header
            return f"<td{open_[3:]}</td>"
        outside_math = re.sub(r"<math\b.*?</math>|<[^>]*>|\s", "", body, flags=re.S)
        if outside_math or "<math" not in body:
            return match.group(0)
        spoken = " ".join(_alt_text(f"${tex}$") for tex in _TEX.findall(body))
        return f'{open_}{body}<span class="visually-hidden"> {spoken}</span>{close}'

    page = _HEADER_CELL.sub(header, page)

    def cell(match: re.Match) -> str:
        start, attrs, text, end = match.groups()
        if not _NUMERIC.fullmatch(text.strip()):
            return match.group(0)
        return f'{start} class="number"{attrs}{text}{end}'

    page = _DATA_CELL.sub(cell, page).replace('<style type="text/css">', "<style>")
    return re.sub(r"(<mo\b[^>]*>)\u0302(</mo>)", "\\1\u02c6\\2", page)


def markdown_to_html(markdown: str, html_path: Path, workdir: Path, *, title: str, subtitle: str | None = None,
                     byline: tuple[str, ...] = (), date: str | None = None, toc: bool = False,
                     doc_title: str | None = None, author: str = AUTHOR) -> str:
    """Write one self-contained HTML file; return pandoc's warnings (empty string: none).

    ``title``, ``subtitle``, ``byline`` and ``date`` make the title block; ``doc_title`` (default
    ``title``) is the page's title and ``author`` its author in the metadata."""
    html_path = Path(html_path).resolve()
    html_path.parent.mkdir(parents=True, exist_ok=True)
    page = Path(workdir) / "page.html"
    args = ["-f", READER, "-t", "html5", "--standalone", "--embed-resources", "--mathml",
            "--template", str(HTML_TEMPLATE), "--css", str(HTML_CSS), "-o", str(page),
            *_metadata_args(title, subtitle, list(byline), date),
            "-M", f"pagetitle={doc_title or title}", "-M", "lang=en", "-V", f"meta-author={author}"]
    if toc:
        args += ["--toc", "--toc-depth=2", "-M", "toc-title=Contents"]
    warnings = _run_pandoc(args, _html_figure_sizes(markdown, workdir), Path(workdir))
    html_path.write_text(accessible_html(page.read_text(encoding="utf-8")), encoding="utf-8")
    return warnings


def markdown_to_pdf(markdown: str, pdf_path: Path, workdir: Path, *, title: str, subtitle: str | None = None,
                    byline: tuple[str, ...] = (), date: str | None = None, titlepage: bool = False,
                    doc_title: str | None = None, description: str | None = None, author: str = AUTHOR) -> list[str]:
    """Write the PDF (pandoc -> Typst -> typst compile); return the warnings of both, one per line.

    ``title``, ``subtitle``, ``byline`` and ``date`` make the title page (``titlepage``: then also
    the contents) or a one-line header; ``doc_title`` (default ``title``), ``author`` and
    ``description`` go to the PDF's metadata.
    """
    import typst

    workdir = Path(workdir)
    typ = workdir / "report.typ"
    args = ["-f", READER, "-t", "typst", "--standalone", "--template", str(TYPST_TEMPLATE), "-o", str(typ),
            *_metadata_args(title, subtitle, list(byline), date)]
    if titlepage:
        args += ["-V", "titlepage=true"]
    args += ["-M", f"doctitle={doc_title or title}", "-M", f"docauthor={author}"]
    if description:
        args += ["-M", f"description={description}"]
    warnings = [line for line in _run_pandoc(args, _typst_figures(markdown, workdir), workdir).splitlines() if line]
    # pandoc 3.9 writes \odot as dot.circle, which Typst 0.14 deprecates (and 0.15 removes): use dot.o.
    source = re.sub(r"\bdot\.circle\b", "dot.o", typ.read_text(encoding="utf-8"))
    typ.write_text(_typst_apostrophes(source), encoding="utf-8")
    try:
        pdf, typst_warnings = typst.compile_with_warnings(str(typ), root=str(workdir), ignore_system_fonts=True)
    except typst.TypstError as err:
        raise TypesetError(f"typst failed on {typ}: {err}") from None
    pdf_path = Path(pdf_path)
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    pdf_path.write_bytes(pdf)
    return warnings + [str(getattr(w, "message", w)) for w in typst_warnings]
