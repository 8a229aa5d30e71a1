"""Reports: Tune experiment folders or a ResultGrid -> the paper's tables (18, 1, 20, 4, 5, 6, 22) and plots.

A paper table is one entry of ``layouts.LAYOUTS`` (rows, columns and the paper's cells); Markdown, LaTeX,
CSV and a self-contained HTML page (plots embedded) are ``formats``.

Selection follows the paper (per data seed, the configuration with the best dev value; its test score;
mean and population std over seeds, ×100). Importing this package needs pandas only: no torch, no ray;
matplotlib (and markdown-it) only when plots (or HTML) are written, so a laptop holding a copied
experiment folder can report on it.

    from mezo_ray.report import render
    print(render(result_grid, fmt="markdown", select="dev_acc"))   # end of a Tune search
    python -m mezo_ray.report ~/ray_results/exp1 ~/ray_results/exp2 --out report/   # CLI
    python -m mezo_ray.report --benchmark benchmarks/results/FILE.json   # a benchmark's result

``benchmark`` reads the results ``benchmarks/`` writes (intervals from ``intervals``: scipy's bootstrap).
"""

from mezo_ray.report.formats import FORMATS
from mezo_ray.report.load import Report, from_experiment_dirs, from_result_grid, row_label
from mezo_ray.report.output import as_report, render, write_report
from mezo_ray.report.select import SELECTIONS, aggregate, aggregate_memory, select_best
from mezo_ray.report.tables import Table, build_tables

__all__ = [
    "FORMATS",
    "SELECTIONS",
    "Report",
    "Table",
    "aggregate",
    "aggregate_memory",
    "as_report",
    "build_tables",
    "from_experiment_dirs",
    "from_result_grid",
    "render",
    "row_label",
    "select_best",
    "write_report",
]
