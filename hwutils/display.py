"""Notebook display: numbered figures and tables, and how numbers and labels are written in the text.

Figures and tables are numbered per part, "Figure 2.3" and "Table 3.1": :func:`start_part` at the
top of a notebook sets its part and restarts both counts. :func:`caption` shows the open figures
with "**Figure 2.3.** text" under them; :func:`show_table` shows a table with "**Table 2.1.**
caption" above it (a table cannot be shown without a caption). A ``label`` names the figure or
table, and any Markdown of the report - a Markdown cell or generated text - cites it as
``@fig-<label>`` or ``@tbl-<label>``: :mod:`hwutils.typeset` writes "Figure 2.3" (a link) in its
place when it renders the report, so a citation may come before or after what it cites.
"""
from __future__ import annotations

import base64
import io
import re

import numpy as np

__all__ = ["start_part", "caption", "show_table", "show_settings", "format_percent", "listed", "plural",
           "CAPTION", "CITATION"]


#: A caption as :func:`caption` and :func:`show_table` write it, at the start of a Markdown block:
#: an optional anchor (the label), then "**Figure 2.3.**" or "**Table 2.1.**" and the text.
CAPTION = re.compile(r'(?:<a id="(?P<label>(?:fig|tbl)-[\w-]+)"></a>)?'
                     r"\*\*(?P<kind>Figure|Table) (?P<number>\d+(?:\.\d+)?)\.\*\* ?(?P<text>.*)", re.S)
#: A citation of a labelled figure or table in Markdown: ``@fig-lr-study``, ``@tbl-set-up``.
CITATION = re.compile(r"(?<![\w@.])@(?P<label>(?:fig|tbl)-[A-Za-z0-9_-]*[A-Za-z0-9])")
_LABEL = re.compile(r"[A-Za-z0-9][\w-]*")

_PREFIX = {"Figure": "fig", "Table": "tbl"}
_numbering = {"part": None, "Figure": 0, "Table": 0}  # this kernel's (one notebook's) counts


def start_part(part: int) -> None:
    """Number this notebook's figures and tables "Figure ``part``.1", "Table ``part``.1", …
    (call once at the top of each notebook; the report's part numbers then never collide)."""
    if not isinstance(part, int) or isinstance(part, bool) or part < 1:
        raise ValueError(f"start_part takes the part's number, a positive int (got {part!r})")
    _numbering.update({"part": part, "Figure": 0, "Table": 0})


def _next(kind: str, label: str | None) -> str:
    """The Markdown that opens the next caption of ``kind``: anchor, bold number."""
    _numbering[kind] += 1
    part = _numbering["part"]
    number = f"{part}.{_numbering[kind]}" if part else str(_numbering[kind])
    anchor = ""
    if label is not None:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"label {label!r}: use letters, digits, '-' and '_' (e.g. 'lr-study')")
        anchor = f'<a id="{_PREFIX[kind]}-{label}"></a>'
    return f"{anchor}**{kind} {number}.**"


#: A figure's SVG larger than SVG_FIELD_BYTES is drawn again with its fields (filled contours,
#: meshes: a decision boundary's background) rasterized at RASTER_DPI, its lines, points and text
#: still vectors; one still larger than MAX_SVG_BYTES is shown as a PNG at RASTER_DPI. The HTML
#: report embeds every figure.
SVG_FIELD_BYTES = 400_000
MAX_SVG_BYTES = 1_500_000
RASTER_DPI = 300


def _svg(figure) -> bytes:
    """The figure as SVG, without its metadata, comments and indentation (the HTML embeds it)."""
    svg = io.BytesIO()
    figure.savefig(svg, format="svg", bbox_inches="tight", dpi=RASTER_DPI, metadata={"Date": None})
    text = re.sub(r"<metadata>.*?</metadata>|<!--.*?-->", "", svg.getvalue().decode("utf-8"), flags=re.S)
    return re.sub(r"\s*\n\s*", " ", re.sub(r">\s+<", "><", text)).encode("utf-8")


def _rasterize_fields(figure) -> bool:
    """Mark the figure's filled contours and meshes rasterized; whether it has any."""
    from matplotlib.collections import QuadMesh
    from matplotlib.contour import ContourSet

    fields = [c for ax in figure.axes for c in ax.collections if isinstance(c, (ContourSet, QuadMesh))]
    for field in fields:
        field.set_rasterized(True)
    return bool(fields)


class _Figure:
    """One figure as the notebook shows it: SVG (vector: the report's HTML and PDF take it), else a
    PNG at RASTER_DPI; and a small PNG beside an SVG, for viewers that show no SVG."""

    def __init__(self, figure):
        svg = _svg(figure)
        if len(svg) > SVG_FIELD_BYTES and _rasterize_fields(figure):
            svg = _svg(figure)
        self.svg = svg.decode("utf-8") if len(svg) <= MAX_SVG_BYTES else None
        png = io.BytesIO()
        figure.savefig(png, format="png", bbox_inches="tight", dpi="figure" if self.svg else RASTER_DPI)
        self.png = png.getvalue()

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"image/png": base64.b64encode(self.png).decode("ascii"), "text/plain": "<Figure>"}
        return {"image/svg+xml": self.svg, **bundle} if self.svg else bundle


def caption(text: str, label: str | None = None, fig=None) -> None:
    """Show ``fig`` (default: every open figure) and under it "**Figure N.** text"; ``label``
    makes it citable as ``@fig-<label>``. The figures are closed, so the notebook shows them only
    here, as SVG (whatever the matplotlib backend, e.g. Agg; see SVG_FIELD_BYTES for the fields
    rasterized in it, and MAX_SVG_BYTES for a figure shown as PNG). The report takes each image's alt text from its caption."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    figures = [fig] if fig is not None else [plt.figure(n) for n in plt.get_fignums()]
    if not figures:
        raise ValueError("caption() found no open figure: draw it first (e.g. plot_training_curves())")
    for figure in figures:
        display(_Figure(figure))
        plt.close(figure)
    display(Markdown(f"{_next('Figure', label)} {text}"))


def format_percent(value: float, digits: int = 1) -> str:
    """A percentage with ``digits`` decimals, or more where rounding would turn a value strictly
    between 0 and 100 into 0 or 100: 99.95 stays "99.95", never "100.0"."""
    text = f"{value:.{digits}f}"
    while 0 < value < 100 and float(text) in (0.0, 100.0) and digits < 8:
        digits += 1
        text = f"{value:.{digits}f}"
    return text


def listed(values) -> str:
    """Every value of a grid, in order: "1e-05, 0.0001" (a range would hide how many there are)."""
    return ", ".join(f"{v:g}" for v in sorted(values))


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 seed", "3 seeds", "1,000 runs" (``many``: an irregular plural)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def _cell(value, floatfmt: str) -> str:
    """A table cell as text: floats formatted, yes/no for truth values, text as written."""
    import pandas as pd

    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else format(value, floatfmt)
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    # "784-800-800-10" must not break at a hyphen inside a narrow column: non-breaking hyphens;
    # a "|" (as in |w|) would end the Markdown table's cell.
    return re.sub(r"(?<=\d)-(?=\d)", "\u2011", str(value)).replace("|", "\\|")


def show_table(frame, caption: str, label: str | None = None, floatfmt: str = ".3g",
               index: bool = True) -> None:
    """Display a table as Markdown under "**Table N.** ``caption``": a real table in the notebook,
    the HTML and the PDF alike; ``label`` makes it citable as ``@tbl-<label>``.

    Float columns are formatted with ``floatfmt``, truth values as yes/no; every other cell is shown
    as it is (tabulate would otherwise turn the text "0.99" into the number 1.0 under a one-digit
    format)."""
    from IPython.display import Markdown, display

    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("show_table needs a caption: one sentence saying what the table shows")
    shown = frame.copy()
    for column in shown.columns:
        shown[column] = [_cell(v, floatfmt) for v in shown[column]]
    shown.index = [_cell(v, floatfmt) for v in shown.index]
    shown.index.name = frame.index.name
    table = shown.to_markdown(index=index, disable_numparse=True)
    display(Markdown(f"{_next('Table', label)} {caption}\n\n{table}"))


def show_settings(settings: dict, caption: str, label: str | None = None,
                  header: str = "setting") -> None:
    """Display ``{name: value}`` as a two-column table (e.g. an experiment's set-up)."""
    import pandas as pd

    frame = pd.DataFrame({"value": [str(v) for v in settings.values()]},
                         index=pd.Index(list(settings), name=header))
    show_table(frame, caption, label=label)
