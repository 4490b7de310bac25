"""The report's rendering without TeX (pandoc and typst wheels), its figure check, and progress lines."""
import html.parser
import io
import os
import re
import time

import nbformat
import pytest

from hwutils import progress, report, typeset

MATH_AND_TABLE = r"""# Part 1 — Adam's bias correction

Greek and subscripts in text: λ₁ = 3e-05, β₂ = 0.999, and math $\mathbb{E}[v_t] = (1-\beta_2^t)V$,
$\hat v_t = v_t / (1-\beta_2^t)$, $g_t \odot g_t$.

$$\mathbb{E}[v_t] = (1-\beta_2)\sum_{i=1}^{t} \beta_2^{\,t-i}\, \mathbb{E}[g_i^2].$$

**Table 1.1.** Test error of one method.

| method | λ | test error (%) |
|---|---|---|
| L2 | λ₂ = 1e-4 | 16.03 ± 0.49 |
"""


@pytest.fixture
def figure_notebook(tmp_path):
    """An executed-looking notebook: Markdown with math and a table, one PNG figure with its
    caption (as hwutils.display shows them), stderr noise."""
    import base64

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    plot = nbformat.v4.new_code_cell("plot_curves(results)", outputs=[
        nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"text/markdown": "**Figure 1.1.** A straight line."}),
        nbformat.v4.new_output("stream", name="stderr", text="100%|##########| 5/5 [00:01<00:00]\n")])
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(MATH_AND_TABLE), plot])


def test_pdf_and_html_need_no_system_tool(figure_notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no xelatex, no pandoc, no typst on PATH
    html, pdf = tmp_path / "part.html", tmp_path / "part.pdf"
    figure_notebook.metadata["hw3_report"] = report.report_meta("smoke", part="Part 1 — Adam's bias correction")
    report.render(figure_notebook, html, pdf, show_code=False, engine="typst")

    from pypdf import PdfReader

    reader = PdfReader(pdf)
    text = "".join(page.extract_text() for page in reader.pages)
    assert reader.metadata.title.startswith(report.TITLE) and reader.metadata.title.endswith("Adam's bias correction")
    assert "λ" in text and "β" in text and "16.03" in text
    assert "1 Part 1" not in text and "5/5" not in text  # no section number; stderr left out
    page = html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64") == 1 and "<math" in page
    assert 'alt="Figure 1.1: A straight line."' in page and 'alt="png"' not in page
    assert "<caption><strong>Table 1.1.</strong> Test error of one method.</caption>" in page
    assert "mathjax" not in page.lower() and "<script src" not in page and "5/5" not in page
    assert page.count(report.COURSE) == 1 and page.count('class="date"') == 1  # the date once


def test_combined_pdf_has_a_title_page_and_contents(figure_notebook, tmp_path):
    other = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Part 2 — another\n\ntext")])
    combined = report.combine([figure_notebook, other], "smoke")
    report.render(combined, tmp_path / "r.html", tmp_path / "r.pdf", show_code=False, engine="typst")
    from pypdf import PdfReader

    pages = [p.extract_text() for p in PdfReader(tmp_path / "r.pdf").pages]
    assert report.TITLE.split(":")[0] in pages[0] and "Course" in pages[0] and "hwutils" in pages[0]
    assert "Contents" in pages[1]
    assert "Contents" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_figures_are_sized_to_the_page(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = {}
    for name, figsize in {"wide": (14, 4), "small": (4, 3), "tall": (6, 12)}.items():
        fig = plt.figure(figsize=figsize, dpi=100)
        fig.savefig(tmp_path / f"{name}.png")
        plt.close(fig)
        sizes[name] = typeset.figure_width_percent(tmp_path / f"{name}.png")
    assert sizes["wide"] == 100.0                    # shrunk to the text width
    assert 55 < sizes["small"] < 65                  # its own size: 4 in of 16.6 cm
    assert sizes["tall"] < 65                        # no taller than the page allows


def test_long_lines_of_output_are_broken_to_the_page_width():
    wrapped = typeset.wrap_code("x = " + "word " * 60 + "\n" + "y" * 200)
    assert all(len(line) <= typeset.CODE_WIDTH for line in wrapped.splitlines())
    assert wrapped.replace("\n", "").replace(" ", "") == ("x=" + "word" * 60 + "y" * 200)
    assert typeset.glue_numbers("16.03 ± 0.49 and 12 %") == "16.03\u00a0±\u00a00.49 and 12\u00a0%"
    assert typeset.glue_numbers("100 / 500 / 2,000 and train / test") == "100\u00a0/\u00a0500\u00a0/\u00a02,000 and train / test"


def test_a_notebook_that_plots_but_holds_no_figure_is_named(figure_notebook):
    assert report.figure_problem(figure_notebook, "01_x.ipynb") is None
    figure_notebook.cells[1].outputs = []
    problem = report.figure_problem(figure_notebook, "01_x.ipynb")
    assert "01_x.ipynb" in problem and "plot_curves" in problem and "\n" not in problem
    no_plots = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("from hwutils.plotting import plot_x\nx = 1")])
    assert report.figure_problem(no_plots, "02_y.ipynb") is None


def test_the_kernels_get_the_inline_backend_and_the_progress_log(monkeypatch, tmp_path):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv(progress.LOG_ENV, raising=False)
    with report._kernel_environment(tmp_path / "p.log"):
        assert os.environ["MPLBACKEND"] == report.INLINE_BACKEND
        assert os.environ[progress.LOG_ENV] == str(tmp_path / "p.log")
    assert os.environ["MPLBACKEND"] == "Agg" and progress.LOG_ENV not in os.environ


def test_progress_bar_appends_throttled_status_lines(monkeypatch, tmp_path):
    log = tmp_path / "progress.log"
    monkeypatch.setenv(progress.LOG_ENV, str(log))
    monkeypatch.setenv(progress.EVERY_ENV, "3600")  # only the start and end lines
    bar = progress.progress_bar(total=4, desc="dropout + L2, seed 1", unit="epoch", file=io.StringIO())
    for _ in range(4):
        bar.set_postfix_str("val error 1.92%")
        bar.update()
    bar.close()
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("dropout + L2, seed 1: 0/4 epoch")
    assert lines[1].startswith("dropout + L2, seed 1: 4/4 epoch") and "val error 1.92%" in lines[1]

    monkeypatch.setenv(progress.EVERY_ENV, "0")
    for _ in progress.progress_bar(range(3), desc="sweep", file=io.StringIO()):
        time.sleep(0.12)  # tqdm records the count at most every 0.1 s
    assert log.read_text().splitlines()[-1].startswith("sweep: 3/3 it")
    assert len(log.read_text().splitlines()) >= 5


def test_progress_bar_without_the_variable_writes_no_file(monkeypatch, tmp_path):
    monkeypatch.delenv(progress.LOG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    for _ in progress.progress_bar(range(3), file=io.StringIO()):
        pass
    assert list(tmp_path.iterdir()) == []


def test_follow_prints_each_new_line_with_the_notebook_prefix(tmp_path):
    log, out = tmp_path / "p.log", io.StringIO()
    with progress.follow(log, prefix="[03_mnist] ", stream=out, poll=0.05):
        log.write_text("L2 seed 0: 1/2 epoch\n")
        time.sleep(0.2)
        with open(log, "a") as f:
            f.write("L2 seed 0: 2/2 epoch\nhalf a li")
    assert out.getvalue().splitlines() == ["[03_mnist] L2 seed 0: 1/2 epoch", "[03_mnist] L2 seed 0: 2/2 epoch"]


def _markdown_notebook(*cells):
    """A notebook of Markdown cells and of code cells whose outputs are the given Markdown (a str)
    or a figure (the bytes of a PNG)."""
    import base64

    nb_cells = []
    for cell in cells:
        if isinstance(cell, str) and not cell.startswith("output:"):
            nb_cells.append(nbformat.v4.new_markdown_cell(cell))
            continue
        data = ({"text/markdown": cell[len("output:"):]} if isinstance(cell, str)
                else {"image/png": base64.b64encode(cell).decode(), "text/plain": "<Figure>"})
        nb_cells.append(nbformat.v4.new_code_cell("show()", outputs=[nbformat.v4.new_output("display_data",
                                                                                           data=data)]))
    return nbformat.v4.new_notebook(cells=nb_cells)


@pytest.fixture
def png():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 3), dpi=100)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def test_citations_link_to_their_figure_and_table_in_both_outputs(png, tmp_path):
    nb = _markdown_notebook(
        "# Part 2 — cited\n\nAs @fig-line shows, and @tbl-numbers lists:",
        png, 'output:<a id="fig-line"></a>**Figure 2.1.** A line.',
        'output:<a id="tbl-numbers"></a>**Table 2.1.** Numbers.\n\n| a | b |\n|---|---|\n| -0.24 | L2\'s |',
        "Back to @fig-line.")
    html, pdf = tmp_path / "p.html", tmp_path / "p.pdf"
    report.render(nb, html, pdf, show_code=False, engine="typst")
    page = html.read_text(encoding="utf-8")
    assert page.count('<a href="#fig-2-line">Figure\u00a02.1</a>') == 2 and 'id="fig-2-line"' in page
    assert '<a href="#tbl-2-numbers">Table\u00a02.1</a>' in page and 'id="tbl-2-numbers"' in page
    assert "\u22120.24" in page and "L2\u2019s" in page, "a minus sign and an apostrophe"

    from pypdf import PdfReader

    text = "".join(p.extract_text() for p in PdfReader(pdf).pages)
    assert "As Figure\u00a02.1 shows, and Table\u00a02.1 lists" in text
    assert "Back to Figure\u00a02.1" in text
    assert "\u22120.24" in text and "L2\u2019s" in text and "L2\u2032s" not in text  # no prime


@pytest.mark.parametrize("markdown, problem", [
    ("# Part 1 — a\n\n![png](a.png)\n\n**Figure 1.1.** one\n\n# Part 2 — b\n\n![png](b.png)\n\n"
     "**Figure 1.1.** two", "Figure 1.1 is numbered twice"),
    ("# Part 3 — c\n\n![png](a.png)\n\n**Figure 1.** one", "start_part(3)"),
    ("# Part 1 — a\n\n![png](a.png)\n\ntext", "figure a.png has no caption"),
    ("# Part 1 — a\n\n| a |\n|---|\n| 1 |", "a table has no caption"),
    ("# Part 1 — a\n\nSee @fig-nowhere.", "@fig-nowhere cites a caption nowhere"),
    ('# Part 1 — a\n\n![png](a.png)\n\n<a id="fig-x"></a>**Figure 1.1.** one\n\n![png](b.png)\n\n'
     '<a id="fig-x"></a>**Figure 1.2.** two', "label fig-x names both"),
])
def test_numbers_are_unique_across_the_report_and_every_figure_table_and_citation_is_captioned(
        markdown, problem):
    with pytest.raises(typeset.TypesetError, match=re.escape(problem)) as err:
        typeset.cross_reference(markdown)
    assert "\n" not in str(err.value)


def test_a_label_means_its_own_parts_caption_and_another_parts_when_only_that_one_has_it():
    markdown = typeset.cross_reference(
        '# Part 1 — a\n\n![png](a.png)\n\n<a id="fig-curves"></a>**Figure 1.1.** one\n\nSee @fig-curves, '
        '@fig-only-2.\n\n# Part 2 — b\n\n![png](b.png)\n\n<a id="fig-curves"></a>**Figure 2.1.** two\n\n'
        '![png](c.png)\n\n<a id="fig-only-2"></a>**Figure 2.2.** three\n\nSee @fig-curves.')
    assert "See [Figure\u00a01.1](#fig-1-curves), [Figure\u00a02.2](#fig-2-only-2)." in markdown
    assert "See [Figure\u00a02.1](#fig-2-curves)." in markdown
    assert "![Figure 2.2: three](c.png)" in markdown, "the caption is the image's alt text"


def test_negative_numbers_get_a_minus_sign_but_code_math_exponents_and_ranges_do_not():
    text = typeset.typography("a -0.24 (-3) | -1 | 1e-3 0-3 `x = -1` $-1$ --2\n\n    code -1\n")
    assert text.startswith("a \u22120.24 (\u22123) | \u22121 | 1e-3 0-3 `x = -1` $-1$ --2")
    assert "    code -1" in text


def test_figures_float_where_text_can_fill_the_page_and_keep_their_order(png, tmp_path):
    for name in "abcd":
        (tmp_path / f"{name}.png").write_bytes(png)
    typst = typeset._typst_figures(
        "# Part 1 — a\n\nintro\n\n![Figure 1.1: one](a.png)\n\n**Figure 1.1.** one\n\ntext after it\n\n"
        "## Under a heading\n\n![Figure 1.2: two](b.png)\n\n**Figure 1.2.** two\n\n"
        "![Figure 1.3: three](c.png)\n\n**Figure 1.3.** three\n\nmore text\n\n"
        "![Figure 1.4: four](d.png)\n\n**Figure 1.4.** four\n\nthe end\n\n# Part 2 — b\n", tmp_path)
    assert typst.count("#place(") == 2, "1.1 and 1.3 float: text and a figure follow them"
    assert typst.index("#place(bottom") < typst.index('"Figure 1.1: one"'), "a part's first: at the bottom"
    assert typst.index("#place(auto") < typst.index('"Figure 1.3: three"')
    flushes = [m.start() for m in re.finditer(r"#place\.flush\(\)", typst)]
    # 1.2 stays in the flow under its heading, 1.4 as the part's last figure (not alone on the
    # part's last page); the figures floating before each are placed first, so the order holds
    assert len(flushes) == 2
    assert flushes[0] < typst.index("## Under a heading") < typst.index('"Figure 1.2: two"')
    assert typst.index("more text") < flushes[1] < typst.index('"Figure 1.4: four"')
    assert 'sticky: true, image("b.png"' in typst and 'sticky: true, image("d.png"' in typst


class _Structure(html.parser.HTMLParser):
    """What the Nu HTML checker and axe-core look at in a page: the html element's lang, landmarks,
    images' alt text and role, each header cell's text outside its math."""

    def __init__(self):
        super().__init__()
        self.lang, self.mains, self.images, self.headers, self.stack = None, 0, [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.lang = attrs.get("lang") if tag == "html" else self.lang
        self.mains += tag == "main"
        if tag == "img":
            self.images.append({**attrs, "in_link": "a" in self.stack})
        if tag == "th":
            self.headers.append("")
        if tag not in ("img", "meta", "col", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(tag):]

    def handle_data(self, data):
        if "th" in self.stack and "math" not in self.stack:
            self.headers[-1] += data.strip()


MATH_HEADERS = "**Table 1.1.** Math in a header.\n\n|  | $\\beta_2$ | test error (%) |\n|---|---|---|\n| L2 | 0.999 | 16.03 ± 0.49 |\n"


def test_the_html_has_a_language_a_main_landmark_alt_texts_and_header_text_and_svg_figures_open_full_size(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwutils import display

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([0, 1], [0, 1])
    bundle = display._Figure(fig)._repr_mimebundle_()
    plt.close(fig)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Part 1 — a\n\n$$\\sum_{i=1}^{t} \\beta_2^{t-i} g_i^2$$"),
        nbformat.v4.new_code_cell("plot()", outputs=[
            nbformat.v4.new_output("display_data", data=bundle),
            nbformat.v4.new_output("display_data", data={"text/markdown": "**Figure 1.1.** A line."})]),
        nbformat.v4.new_code_cell("table()", outputs=[
            nbformat.v4.new_output("display_data", data={"text/markdown": MATH_HEADERS})])])
    nb.metadata["hw3_report"] = report.report_meta("smoke", part="Part 1 — a")
    html_path, pdf_path = tmp_path / "p.html", tmp_path / "p.pdf"
    report.render(nb, html_path, pdf_path, show_code=False, engine="typst")
    page = html_path.read_text(encoding="utf-8")
    structure = _Structure()
    structure.feed(page)
    assert structure.lang == "en" and structure.mains == 1
    assert [(i.get("alt"), i.get("role"), i["in_link"]) for i in structure.images] == [("Figure 1.1: A line.", None, True)]
    # the empty corner is a data cell; the math-only header has its TeX as (visually hidden) text
    assert structure.headers == ["beta_2", "test error (%)"]
    assert page.count("data:image/svg+xml;base64,") == 1 and "data:image/png" not in page, "the figure is a vector"
    assert '<a class="figure-open" href="#figure-1">' in page and 'id="figure-1"' in page
    assert '<meta name="author" content="hw3 authors" />' in page and "hwutils" not in page.split("<body>")[0]
    assert '<table tabindex="0">' in page and '<span class="display-math" tabindex="0"><math' in page
    assert re.search(r'<td class="number"[^>]*>16\.03\u00a0±\u00a00\.49</td>', page), "a number never breaks"

    from pypdf import PdfReader

    reader = PdfReader(pdf_path)
    assert reader.metadata.author == "hw3 authors"
    assert not [image for p in reader.pages for image in p.images], "the PDF's figure is a vector too"


def test_svg_figures_are_sized_to_the_page_by_their_own_size(tmp_path):
    (tmp_path / "wide.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="1008pt" height="288pt"></svg>')
    (tmp_path / "small.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="288pt" height="216pt"></svg>')
    assert typeset.figure_inches(tmp_path / "small.svg") == (4.0, 3.0)
    assert typeset.figure_width_percent(tmp_path / "wide.svg") == 100.0
    assert 55 < typeset.figure_width_percent(tmp_path / "small.svg") < 65  # 4 in of 16.6 cm, as a PNG


def test_pandocs_page_gets_alt_texts_a_data_cell_in_the_empty_corner_and_a_spacing_hat():
    page = typeset.accessible_html(
        '<style type="text/css">x</style><p><img role="img" aria-label="Figure 1.1: a" src="data:," /></p>'
        '<table><tr><th></th><th>L2</th></tr><tr><td>hidden</td><td>64-\u200b64</td></tr></table>'
        '<math><mover><mi>v</mi><mo accent="true">\u0302</mo></mover></math>')
    assert '<img alt="Figure 1.1: a" src="data:," />' in page and "role=" not in page and "aria-label" not in page
    assert "<tr><td></td><th>L2</th></tr>" in page and '<td class="number">64-\u200b64</td>' in page
    assert "\u0302" not in page and '<mo accent="true">\u02c6</mo>' in page and "<style>x</style>" in page
