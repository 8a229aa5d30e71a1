"""The report's front door: what Tune gives us -> text (``render``) or a folder of files (``write_report``).

``render`` is what the Tune CLI calls at the end of a search, so it accepts the ResultGrid itself as well as
experiment folders or an already loaded Report, and returns a string instead of printing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from mezo_ray.report.formats import FORMATS, to_csv, to_html, to_latex, to_markdown
from mezo_ray.report.load import Report, from_experiment_dirs, from_result_grid
from mezo_ray.report.select import (
    aggregate_memory,
    best_configurations,
    check_selection,
    search_cost,
    select_best,
)
from mezo_ray.report.tables import build_tables, footer


def as_report(source: Report | str | os.PathLike | Iterable[Any]) -> Report:
    """Return a Report from a Report, one or more experiment folders, or a ResultGrid (any iterable of
    Tune Result-like objects)."""
    if isinstance(source, Report):
        return source
    if isinstance(source, str | os.PathLike):
        return from_experiment_dirs([source])
    items = list(source)
    if items and all(isinstance(item, str | os.PathLike) for item in items):
        return from_experiment_dirs(items)
    return from_result_grid(items)


def render(
    source: Report | str | os.PathLike | Iterable[Any],
    fmt: str = "markdown",
    select: str = "dev_acc",
    include_unfinished: bool = False,
) -> str:
    """Return the report tables as ``fmt`` ("markdown", "latex", "csv" or "html") text.

    Markdown and LaTeX end with the footer of unfinished/errored trials; CSV holds only the tidy cells;
    HTML is one self-contained page, the Markdown report with the plots embedded.
    Raises ValueError for an unknown ``fmt`` or ``select``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not a report format; use one of {list(FORMATS)}")
    check_selection(select)
    report = as_report(source)
    tables = build_tables(report, select, include_unfinished)
    if fmt == "html":
        selected = select_best(report.trials, select, include_unfinished)
        with tempfile.TemporaryDirectory() as plots_dir:
            paths = _write_plots(report, selected, include_unfinished, Path(plots_dir))
            return _html(report, _markdown(report, tables, select, include_unfinished), paths)
    if fmt == "csv":
        return to_csv(tables, select)
    if fmt == "latex":
        return to_latex(tables, footer(report.trials), select, include_unfinished)
    return _markdown(report, tables, select, include_unfinished)


def _markdown(report: Report, tables: list, select: str, include_unfinished: bool) -> str:
    best = best_configurations(report.trials, select, include_unfinished)
    cost = search_cost(report.trials) if len(report.trials) else None  # a memory benchmark alone: no search
    return to_markdown(tables, footer(report.trials), select, include_unfinished, best, cost)


def _html(report: Report, markdown: str, plots: list[Path]) -> str:
    experiments = ", ".join(sorted({str(e) for e in report.trials["experiment"] if e}))
    title = f"mezo_ray report: {experiments}" if experiments else "mezo_ray report"
    return to_html(markdown, [(path.name, path.read_bytes()) for path in plots], title)


def _write_plots(
    report: Report, selected: pd.DataFrame, include_unfinished: bool, out_dir: Path
) -> list[Path]:
    from mezo_ray.report import plots as plotting  # matplotlib only when plots are asked for

    memory = aggregate_memory(report.trials, include_unfinished)
    return plotting.write_plots(report, selected, memory, out_dir)


def write_report(
    source: Report | str | os.PathLike | Iterable[Any],
    out_dir: str | os.PathLike,
    select: str = "dev_acc",
    include_unfinished: bool = False,
    plots: bool = True,
) -> list[Path]:
    """Write report.md, report.tex, report.csv, trials.csv (every trial, tidy), selected.csv (the
    configuration chosen per seed), with ``plots`` PNGs under ``out_dir/plots``, and report.html (the
    report with those plots embedded: one file that opens offline); return the paths."""
    check_selection(select)
    report = as_report(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = build_tables(report, select, include_unfinished)
    markdown = _markdown(report, tables, select, include_unfinished)
    texts = {
        "report.md": markdown,
        "report.tex": to_latex(tables, footer(report.trials), select, include_unfinished),
        "report.csv": to_csv(tables, select),
    }
    written = []
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    report.trials.to_csv(out / "trials.csv", index=False)
    selected = select_best(report.trials, select, include_unfinished)
    selected.to_csv(out / "selected.csv", index=False)
    written += [out / "trials.csv", out / "selected.csv"]
    pngs = _write_plots(report, selected, include_unfinished, out / "plots") if plots else []
    (out / "report.html").write_text(_html(report, markdown, pngs), encoding="utf-8")
    return [*written, *pngs, out / "report.html"]
