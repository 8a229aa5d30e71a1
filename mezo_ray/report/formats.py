"""Tables -> text: Markdown (the default, for terminals and PRs), LaTeX (for the paper), CSV (tidy, one
line per cell, for further analysis) and HTML (one self-contained file: the Markdown report with its plots
embedded, to open offline or mail).

Markdown and LaTeX write each cell as ``ours [paper; ours − paper]``, so the comparison is read in one place;
the CSV keeps those as separate numeric columns instead. Missing results are written as "—" (LaTeX "--", CSV
empty), never as 0, and every caption states the selection rule the numbers depend on.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from mezo_ray.report.load import model_key
from mezo_ray.report.select import SELECTIONS
from mezo_ray.report.tables import CELL_COLUMNS, EXTRAPOLATED, Table, row_sort_key

FORMATS = ("markdown", "csv", "latex", "html")
MISSING = "—"
UNFINISHED_MARK = "‡"
_TEX = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "—": "--",
        "−": "$-$",
        "†": r"$^\dagger$",
        "‡": r"$^\ddagger$",
        "§": r"\S{}",
        "×": r"$\times$",
        "`": "",
    }
)


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _format_cell(cell: Any, table: Table, max_n: int) -> str:
    """Return one cell as text: ``mean (std)`` (std left out for a single seed, ``, n=2`` when fewer seeds
    than the table's most, ‡ when an unfinished trial was selected), then ``[paper; ours − paper]``."""
    if _isnan(cell.value):
        ours = MISSING
    else:
        ours = f"{cell.value:.1f}"
        if cell.mark == EXTRAPOLATED:  # before the number: it is not one that was measured
            ours, cell = EXTRAPOLATED + ours, cell._replace(mark="")
        if table.kind == "score" and cell.n > 1:
            ours += f" ({cell.std:.1f})"
        if table.kind == "score" and cell.n < max_n:
            ours += f", n={cell.n}"
    ours += cell.mark
    if cell.includes_unfinished:
        ours += UNFINISHED_MARK
    if _isnan(cell.paper) and not cell.paper_note:
        return ours
    if table.kind == "memory":
        theirs = cell.paper_note + ("" if _isnan(cell.paper) else f" {cell.paper:.1f}")
    elif _isnan(cell.paper):
        theirs = cell.paper_note
    else:
        std = "" if _isnan(cell.paper_std) else f" ({cell.paper_std:.1f})"
        theirs = f"{cell.paper:.1f}{std}{cell.paper_note}"
    if _isnan(cell.value) or _isnan(cell.paper):
        return f"{ours} [{theirs}]"
    diff = round(round(cell.value, 1) - cell.paper, 1) + 0.0  # the difference of the numbers as printed
    return f"{ours} [{theirs}; {diff:+.1f}]"


def caption(table: Table, select: str, include_unfinished: bool) -> str:
    """Return the caption: what a number is, the selection rule, and what each mark means."""
    if table.caption:
        text = table.caption
    elif table.kind == "memory":
        text = "Peak memory in GiB (peak_mem_bytes / 2^30), the largest over a method's trials."
        if table.has_paper:
            text += (
                " Cell: ours [paper's A100s × GB (nvidia-smi, MultiRC, batch 1 per device); ours − paper]."
                " Ours is torch's max_memory_allocated: nvidia-smi also counts the CUDA context and the"
                " allocator's cache, so expect ours to read lower."
            )
    else:
        best = "highest" if SELECTIONS[select] == "max" else "lowest"
        text = (
            f"Test score ×100 (accuracy; F1 for SQuAD/DROP) of the configuration with the {best} final "
            f"`{select}` per data seed (selection rule: {select}); mean (population std, ddof=0) over data "
            "seeds, std left out for one seed; n=2 after a value: fewer seeds than the table's most."
        )
        if table.has_paper:
            text += " Cell: ours [paper mean (std); ours − paper]."
    text += f" {MISSING} = no result."
    if include_unfinished:
        text += f" {UNFINISHED_MARK} = includes unfinished or errored trials (--include-unfinished)"
        text += (
            "."
            if table.kind == "memory"
            else ", taken at their last values; one without test_acc is missing."
        )
    return f"{text} {'; '.join(table.notes)}." if table.notes else text


def _grid(table: Table) -> list[list[str]]:
    """Return the table as rows of strings, header first."""
    max_n = int(table.cells["n"].max()) if len(table.cells) else 0
    by_cell = {(cell.row, cell.column): cell for cell in table.cells.itertuples(index=False)}
    info_headers = [header for header, _ in table.row_info]
    lines = [[table.row_header, *info_headers, *(header for _, header in table.columns)]]
    for row in table.rows:
        info = [by_row.get(row, MISSING) for _, by_row in table.row_info]
        cells = [_format_cell(by_cell[(row, column)], table, max_n) for column, _ in table.columns]
        lines.append([row, *info, *cells])
    return lines


def _footer_grid(footer: pd.DataFrame) -> list[list[str]]:
    return [list(footer.columns), *footer.astype(str).to_numpy().tolist()]


def _markdown_table(lines: list[list[str]]) -> str:
    escaped = [[cell.replace("|", r"\|") for cell in line] for line in lines]
    out = ["| " + " | ".join(escaped[0]) + " |", "|" + "---|" * len(escaped[0])]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in escaped[1:]])


def _footer_heading(footer: pd.DataFrame, include_unfinished: bool) -> str:
    if include_unfinished:
        return f"Unfinished and errored trials ({len(footer)}): selectable on their last values, marked ‡"
    return f"Trials not used for selection ({len(footer)}): unfinished, errored or with a note"


def footer_markdown(footer: pd.DataFrame, include_unfinished: bool) -> str:
    """Return the footer (trials not finished, errored or with a note) as Markdown; "" when there is none."""
    if not len(footer):
        return ""
    return f"### {_footer_heading(footer, include_unfinished)}\n\n{_markdown_table(_footer_grid(footer))}\n"


def to_markdown(
    tables: list[Table],
    footer: pd.DataFrame,
    select: str,
    include_unfinished: bool,
    best: pd.DataFrame | None = None,
    cost: dict[str, float] | None = None,
) -> str:
    """Return the report as Markdown: a heading, caption and pipe table per section, the best
    configuration per method with the arguments that re-run it, what the search cost, then the footer."""
    parts = (
        []
        if tables
        else ["_No finished trial to tabulate (--include-unfinished selects unfinished ones)._", ""]
    )
    for table in tables:
        parts += [f"### {table.title}", "", f"_{caption(table, select, include_unfinished)}_", ""]
        parts += [_markdown_table(_grid(table)), ""]
    if best is not None and len(best):
        parts += ["### Best configurations", ""]
        parts += [
            f"_Per method and task, the tuned settings with the best mean final `{select}` over data seeds; "
            "re-run one with `python -m mezo_ray.tune --space <its space>` and these arguments._",
            "",
        ]
        lines = [["model", "task", "method", f"{select} (seeds)", "re-run with"]]
        order = sorted(
            best.itertuples(index=False), key=lambda b: (b.model, b.task, str(b.k), row_sort_key(b.row))
        )
        for b in order:
            where = b.task if pd.isna(b.k) else f"{b.task}, k={int(b.k)}"
            score = getattr(b, select)
            rerun = f"`{b.rerun or '(as is)'}`" + (" (PBT: the settings it ended with)" if b.pbt else "")
            lines.append([model_key(b.model), where, b.row, f"{score:.4g} ({b.seeds})", rerun])
        parts += [_markdown_table(lines), ""]
    if cost is not None:
        parts += [search_cost_line(cost), ""]
    notes = footer_markdown(footer, include_unfinished)
    return "\n".join(parts) + ("\n" + notes if notes else "")


def search_cost_line(cost: dict[str, float]) -> str:
    """ "Search cost: 12 trials (12 finished), 48,000 forward passes, 3m 10s of trial time"."""
    seconds = round(cost["trial_seconds"])
    time_text = f", {seconds // 60}m {seconds % 60:02d}s of trial time" if seconds else ""
    return (
        f"Search cost: {cost['trials']} trials ({cost['finished']} finished), "
        f"{cost['forward_passes']:,.0f} forward passes{time_text}"
    )


def _latex_tabular(lines: list[list[str]]) -> list[str]:
    out = [r"\begin{tabular}{l" + "l" * (len(lines[0]) - 1) + "}", r"\toprule"]
    out.append(" & ".join(cell.translate(_TEX) for cell in lines[0]) + r" \\")
    out.append(r"\midrule")
    out += [" & ".join(cell.translate(_TEX) for cell in line) + r" \\" for line in lines[1:]]
    return [*out, r"\bottomrule", r"\end{tabular}"]


def to_latex(tables: list[Table], footer: pd.DataFrame, select: str, include_unfinished: bool) -> str:
    """Return the report as LaTeX ``table`` environments (booktabs rules), footer last."""
    parts = [r"% mezo_ray report; needs \usepackage{booktabs}"]
    for table in tables:
        title = f"{table.title}. {caption(table, select, include_unfinished)}"
        parts += [r"\begin{table}[ht]", r"\centering", r"\small", r"\caption{" + title.translate(_TEX) + "}"]
        parts += [*_latex_tabular(_grid(table)), r"\end{table}", ""]
    if len(footer):
        heading = _footer_heading(footer, include_unfinished)
        parts += [
            r"\begin{table}[ht]",
            r"\centering",
            r"\small",
            r"\caption{" + heading.translate(_TEX) + "}",
        ]
        parts += [*_latex_tabular(_footer_grid(footer)), r"\end{table}", ""]
    return "\n".join(parts)


def to_frame(tables: list[Table], select: str) -> pd.DataFrame:
    """Return every cell of every table as one tidy frame (table, title, kind, model, k, selection, cells)."""
    frames = [
        t.cells.assign(table=t.name, title=t.title, kind=t.kind, model=t.model, k=t.k, selection=select)
        for t in tables
    ]
    columns = ["table", "title", "kind", "model", "k", "selection", *CELL_COLUMNS, "diff"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def to_csv(tables: list[Table], select: str) -> str:
    """Return the tidy cells as CSV (missing values empty); the footer is not part of it."""
    frame = to_frame(tables, select)
    frame["k"] = frame["k"].astype("Int64")
    return frame.to_csv(index=False)


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
p em { color: #555; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
"""


def to_html(markdown: str, images: Sequence[tuple[str, bytes]] = (), title: str = "mezo_ray report") -> str:
    """Return one self-contained HTML page: the Markdown report as HTML (markdown-it, raw HTML in it
    escaped) and each (name, PNG bytes) of ``images`` embedded as a data URI, so it opens offline."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    figures = [
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, png in images
    ]
    plots = ["<h2>Plots</h2>", *figures] if figures else []
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_HTML_STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            body,
            *plots,
            "</body></html>",
            "",
        ]
    )
