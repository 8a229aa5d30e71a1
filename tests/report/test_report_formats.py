"""CSV and LaTeX outputs parse, and bad options fail with errors that name the allowed values."""

from __future__ import annotations

import io
import re

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
    # 10 rows x 6 columns for Table 18 k=16, 7 x 11 for Tables 1 and 20, 2 x 1 generic
    assert frame[frame["kind"] == "score"].groupby("title").size().sort_values().tolist() == [2, 60, 77, 77]


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
    ("kwargs", "message"), [({"fmt": "html"}, "fmt='html'"), ({"select": "test_acc"}, "test_acc")]
)
def test_unknown_format_or_selection_is_rejected_by_name(report, kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(report, **kwargs)


def test_render_accepts_folders_as_well_as_a_report(experiments):
    folders = [experiments["tiny"], str(experiments["opt"])]
    assert render(folders) == render(from_experiment_dirs(folders))
    assert render(experiments["tiny"]) == render(from_experiment_dirs(experiments["tiny"]))
