"""The report's rendering without TeX (pandoc and typst wheels), its figure check, and progress lines."""
import io
import os
import time

import nbformat
import pytest

from hwutils import progress, report, typeset

MATH_AND_TABLE = r"""# Part 1 — Adam's bias correction

Greek and subscripts in text: λ₁ = 3e-05, β₂ = 0.999, and math $\mathbb{E}[v_t] = (1-\beta_2^t)V$,
$\hat v_t = v_t / (1-\beta_2^t)$, $g_t \odot g_t$.

$$\mathbb{E}[v_t] = (1-\beta_2)\sum_{i=1}^{t} \beta_2^{\,t-i}\, \mathbb{E}[g_i^2].$$

| method | λ | test error (%) |
|---|---|---|
| L2 | λ₂ = 1e-4 | 16.03 ± 0.49 |
"""


@pytest.fixture
def figure_notebook(tmp_path):
    """An executed-looking notebook: Markdown with math and a table, one PNG figure, stderr noise."""
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
