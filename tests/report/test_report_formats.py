"""CSV, LaTeX and HTML outputs parse, and bad options fail with errors that name the allowed values."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from mezo_ray.report import from_experiment_dirs, render


@pytest.fixture(scope="module")
def report(experiments):
    return from_experiment_dirs(list(experiments.values()))


def test_csv_parses_into_one_numeric_row_per_cell(report):
    frame = pd.read_csv(io.StringIO(render(report, fmt="csv")))
    assert list(frame.columns[:6]) == ["table", "title", "kind", "model", "k", "selection"]
    assert set(frame["selection"]) == {"dev_acc"}
    scores = frame[frame["kind"] == "score"].set_index(["table", "model", "k", "row", "column"])
    cell = scores.loc[("Table 18", "roberta-large", 16, "MeZO", "SST-2")]
    assert cell[["value", "std", "n", "paper", "paper_std", "diff"]].tolist() == pytest.approx(
        [86.0, 2.0, 2, 90.5, 1.2, -4.5]
    )
    assert pd.isna(scores.loc[("Table 18", "roberta-large", 16, "LP", "SST-2"), "value"])
    assert len(frame[frame["kind"] == "memory"]) > 0
    # 12 rows x 6 columns for Table 18 k=16, 7 x 11 for Tables 1 and 20, 2 x 1 generic
    assert frame[frame["kind"] == "score"].groupby("title").size().sort_values().tolist() == [2, 72, 77, 77]


def test_latex_parses(report):
    text = render(report, fmt="latex")
    assert text.count(r"\begin{table}") == text.count(r"\end{table}") > 0
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == text.count(r"\begin{table}")
    unescaped = re.compile(r"(?<!\\)[&%#_]")
    for block in re.findall(r"\\begin\{tabular\}\{(l+)\}\n(.*?)\\end\{tabular\}", text, flags=re.S):
        spec, body = block
        rows = [
            line
            for line in body.splitlines()
            if not line.startswith(("\\toprule", "\\midrule", "\\bottomrule"))
        ]
        assert len(rows) >= 2
        for line in rows:
            assert line.endswith(r" \\")
            cells = line[: -len(r" \\")].split(" & ")
            assert len(cells) == len(spec), line
            assert not any(unescaped.search(cell) for cell in cells), line
    for caption in re.findall(r"\\caption\{(.*)\}\n", text):
        assert caption.count("{") == caption.count("}") and not unescaped.search(caption)
    assert "—" not in text and "†" not in text and r"$^\dagger$" in text


def test_markdown_is_the_default_and_every_table_is_well_formed(report):
    text = render(report)
    assert text.startswith("### Table 18") and text == render(report, fmt="markdown")
    assert text.rstrip().splitlines()[-1].startswith("| a")  # the last footer row: a trial id
    for block in re.findall(r"((?:^\|.*\n)+)", text, flags=re.M):
        lines = block.splitlines()
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
        assert len(widths) == 1, block  # header, separator and rows have the same number of cells
        assert re.fullmatch(r"(\|---)+\|", lines[1])


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"fmt": "pdf"}, "fmt='pdf'"), ({"select": "test_acc"}, "test_acc")]
)
def test_unknown_format_or_selection_is_rejected_by_name(report, kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(report, **kwargs)


def test_render_accepts_folders_as_well_as_a_report(experiments):
    folders = [experiments["tiny"], str(experiments["opt"])]
    assert render(folders) == render(from_experiment_dirs(folders))
    assert render(experiments["tiny"]) == render(from_experiment_dirs(experiments["tiny"]))


class _Page(HTMLParser):
    """What an HTML page holds: its tables' cell texts, image sources, and any other reference out."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])
        self.links += [v for k, v in attrs.items() if k in ("href", "src") and tag != "img"]

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_is_one_offline_page_with_the_markdown_tables_and_every_plot_embedded(report, tmp_path):
    from mezo_ray.report import write_report

    page = _Page()
    page.feed(render(report, fmt="html"))
    markdown_tables = [
        [
            [cell.strip().replace("\\|", "|").replace("`", "") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in block
        ]
        for block in (b.splitlines() for b in re.findall(r"((?:^\|.*\n)+)", render(report), flags=re.M))
    ]
    assert page.tables == [[t[0], *t[2:]] for t in markdown_tables]  # every table, cell for cell
    written = write_report(report, tmp_path)
    pngs = sorted(p.read_bytes() for p in written if p.suffix == ".png")
    assert len(pngs) >= 5
    embedded = sorted(base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in page.images)
    assert embedded == pngs and not page.links  # the plots themselves; nothing fetched from elsewhere
    assert (tmp_path / "report.html").read_text() == render(report, fmt="html")


def test_html_escapes_what_the_runs_are_named(tmp_path, writer):
    config = writer.cfg("<script>alert(1)</script>", "SST-2", "mezo", 16, 13, 1e-6)
    writer.write_trial(tmp_path, config, writer.curve(0.8, 0.3, 0.7))
    text = render(from_experiment_dirs(tmp_path), fmt="html")
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
