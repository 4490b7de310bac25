"""Notebook display: figures and tables numbered per part, captions required, cells as written."""
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from hwutils import display

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture
def shown(monkeypatch):
    """What the display functions show: Markdown text, or "<image>" for a figure."""
    out = []
    monkeypatch.setattr("IPython.display.display",
                        lambda obj: out.append("<image>" if hasattr(obj, "_repr_mimebundle_") else obj.data))
    yield out
    display.start_part(1)
    plt.close("all")


def frame():
    return pd.DataFrame({"beta": ["0.9", "0.99"], "error": [1.23456, float("nan")]}).set_index("beta")


def test_figures_and_tables_are_numbered_per_part_and_restart_with_each_part(shown):
    display.start_part(2)
    for text in ("first", "second"):
        plt.figure()
        display.caption(text)
    display.show_table(frame(), "a table")
    display.start_part(3)
    plt.figure()
    display.caption("third")
    captions = [s for s in shown if s != "<image>"]
    assert captions[:2] == ["**Figure 2.1.** first", "**Figure 2.2.** second"]
    assert captions[2].startswith("**Table 2.1.** a table\n\n|")
    assert captions[3] == "**Figure 3.1.** third"
    assert shown.count("<image>") == 3 and plt.get_fignums() == [], "each figure shown once, closed"


def test_a_figure_is_shown_as_svg_with_a_png_beside_it_and_as_a_sharp_png_when_its_svg_is_too_large(
        monkeypatch, tmp_path):
    import base64

    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1], [0, 1])
    bundle = display._Figure(fig)._repr_mimebundle_()
    assert bundle["image/svg+xml"].lstrip().startswith("<?xml") and "<svg" in bundle["image/svg+xml"]
    assert "<dc:date>" not in bundle["image/svg+xml"], "no date: the same figure gives the same file"
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    monkeypatch.setattr(display, "MAX_SVG_BYTES", 100)
    bundle = display._Figure(fig)._repr_mimebundle_()
    plt.close(fig)
    assert "image/svg+xml" not in bundle
    (tmp_path / "f.png").write_bytes(base64.b64decode(bundle["image/png"]))
    from hwutils.typeset import png_geometry

    assert png_geometry(tmp_path / "f.png")[2] >= 200, "a raster figure has print resolution"


def test_a_large_field_is_rasterized_in_the_svg_while_its_points_and_text_stay_vectors(monkeypatch):
    import numpy as np

    grid = np.linspace(0, 1, 120)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.contourf(*np.meshgrid(grid, grid), np.sin(9 * np.add.outer(grid, grid ** 2)), levels=20)
    ax.scatter([0.2, 0.8], [0.3, 0.6])
    ax.set_xlabel("x (units)")
    monkeypatch.setattr(display, "SVG_FIELD_BYTES", 10_000)
    svg = display._Figure(fig).svg
    plt.close(fig)
    assert svg.count("<image") == 1 and "data:image/png;base64" in svg, "the field is one raster image"
    assert svg.count("<path") > 5, "axes, ticks, points and text are still paths"


def test_a_label_becomes_an_anchor_that_citations_name(shown):
    display.start_part(1)
    plt.figure()
    display.caption("with a label", label="lr-study")
    display.show_table(frame(), "labelled table", label="set-up")
    assert shown[1] == '<a id="fig-lr-study"></a>**Figure 1.1.** with a label'
    assert shown[2].startswith('<a id="tbl-set-up"></a>**Table 1.1.** labelled table')
    assert display.CITATION.findall("see @fig-lr-study and @tbl-set-up.") == ["fig-lr-study", "tbl-set-up"]
    with pytest.raises(ValueError, match="label"):
        display.show_table(frame(), "bad label", label="two words")


def test_a_table_cannot_be_shown_without_a_caption(shown):
    with pytest.raises(TypeError):
        display.show_table(frame())
    with pytest.raises(ValueError, match="caption"):
        display.show_table(frame(), "  ")
    with pytest.raises(TypeError):
        display.show_settings({"a": 1})
    assert shown == []


def test_a_caption_without_an_open_figure_is_refused(shown):
    plt.close("all")
    with pytest.raises(ValueError, match="no open figure"):
        display.caption("nothing drawn")


def test_table_cells_floats_formatted_truth_values_as_words_text_as_written(shown):
    table = pd.DataFrame({"beta": ["0.9", "0.99"], "error": [1.23456, float("nan")],
                          "active": [True, False], "network": ["784-800-10", "|w| < 1e-3"]})
    display.show_table(table.set_index("beta"), "cells", floatfmt=".2f")
    text = shown[0]
    assert "0.99" in text and "1.23" in text and "nan" not in text
    assert "yes" in text and "no" in text and "True" not in text and "False" not in text
    assert "784\u2011800\u201110" in text, "a network's hyphens do not break in a narrow column"
    assert "\\|w\\| < 1e-3" in text, "a | inside a cell is escaped, not a column border"


@pytest.mark.parametrize("n, word, text", [(1, "seed", "1 seed"), (3, "seed", "3 seeds"),
                                           (1000, "run", "1,000 runs")])
def test_plural_says_one_seed_and_three_seeds(n, word, text):
    assert display.plural(n, word) == text


@pytest.mark.parametrize("value, text", [(99.95, "99.95"), (99.999, "99.999"), (100.0, "100.0"),
                                         (0.0, "0.0"), (0.04, "0.04"), (12.34, "12.3")])
def test_a_percentage_never_rounds_to_0_or_100_unless_it_is(value, text):
    assert display.format_percent(value) == text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_numbers_its_figures_with_its_own_part(path):
    # The combined report's numbers are unique because each part's are "N.k" (typeset checks it).
    cells = json.loads(path.read_text())["cells"]
    heading = next(re.match(r"# Part (\d+)", "".join(c["source"])) for c in cells
                   if c["cell_type"] == "markdown")
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert f"start_part({heading.group(1)})" in code
