"""Aggregated cells -> tables: the paper's layouts (``layouts.LAYOUTS``) with its numbers, or generic ones.

A ``Table`` holds tidy numeric cells (one row per table cell, ours and the paper's side by side); how a cell
is written (markdown, LaTeX, CSV) is ``formats``' business. A (model, k) section whose model and k are one
of the paper's tables gets that layout (RoBERTa-large k=16/512: Table 18; OPT-13B: Table 1; OPT-30B/66B:
Table 20), its ablation rows their own tables (Tables 4, 5, 6); anything else (a tiny local model, the
offline ``synthetic-sst2`` task) gets a generic layout whose rows and columns are just what is present, so
demo and smoke searches still give a readable table. A paper layout always shows all its rows and columns,
so missing results stay visible as missing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mezo_ray.estimators import ROWS as ESTIMATOR_ROWS
from mezo_ray.report import paper_numbers as paper
from mezo_ray.report.layouts import LAYOUTS, Layout
from mezo_ray.report.load import K_FREE_ROWS, Report, model_key
from mezo_ray.report.select import aggregate, aggregate_memory, select_best

#: Canonical row order; labels not listed (new variants) follow, alphabetically.
ROW_ORDER = (
    "Zero-shot",
    "ICL",
    "LP",
    "MeZO",
    "MeZO (LoRA)",
    "MeZO (LoRA, as published)",
    "MeZO (prefix)",
    "MeZO-Adam",
    "MeZO-Adam (LoRA)",
    "MeZO-Adam (prefix)",
    "MeZO-momentum",
    "MeZO-sign",
    "LP-MeZO",
    *ESTIMATOR_ROWS,  # mezo_ray/estimators.py
    "FT",
    "FT (LoRA)",
    "FT (LoRA, as published)",
    "FT (prefix)",
)
#: Marks a Table 18 cell computed from hub data sets instead of LM-BFF's pack.
HUB_DATA_MARK = "§"
#: Marks a memory cell a benchmark extrapolated instead of measuring.
EXTRAPOLATED = "~"
FIDELITY = "docs/FIDELITY.md"
CELL_COLUMNS = [
    "row",
    "column",
    "value",
    "std",
    "n",
    "includes_unfinished",
    "mark",
    "paper",
    "paper_std",
    "paper_note",
]


@dataclass(frozen=True)
class Table:
    """One rendered section: ``cells`` has one row per (row, column) of the layout (CELL_COLUMNS + ``diff``).

    ``kind`` is "score" (test metric ×100, mean/std over seeds) or "memory" (peak GiB, max over trials).
    """

    name: str
    title: str
    kind: str
    row_header: str
    rows: list[str]
    columns: list[tuple[str, str]]  # (key in cells["column"], header shown)
    cells: pd.DataFrame
    model: str = ""
    k: int | None = None
    has_paper: bool = False
    notes: list[str] = field(default_factory=list)
    # Columns about a row rather than a task, shown after its label: (header, {row: text}).
    row_info: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    caption: str = ""  # what a number is, where the default for its kind does not say it


def row_sort_key(label: str) -> tuple[int, str, str]:
    """Sort key putting paper rows in the paper's order, a bracketed ablation ("MeZO [n=4]") after its
    row, and unknown rows after them."""
    base = label.split(" [", 1)[0]
    return (ROW_ORDER.index(base), "", label) if base in ROW_ORDER else (len(ROW_ORDER), base, label)


def natural_key(text: str) -> list:
    """Sort key ordering model names by size (opt-125m < opt-1.3b < opt-13b < opt-66b) rather than by
    character: a number followed by m or b counts in millions or billions."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)  # text, number, text, ...: same type at each position
    key: list = []
    for i, part in enumerate(parts):
        if i % 2:
            unit = parts[i + 1][:1].lower()
            key.append(float(part) * {"m": 1e6, "b": 1e9}.get(unit, 1.0))
        else:
            key.append(part.lower())
    return key


def section_cells(scores: pd.DataFrame, model: str, k: int | None) -> pd.DataFrame:
    """The rows of ``scores`` (aggregated cells or trials) in the (model, k) section: its k, and the
    k-free rows (zero-shot) of its model."""
    in_model = scores["model"] == model
    if k is None:
        return scores[in_model & scores["k"].isna()]
    same_k = scores["k"].eq(k).fillna(False)
    k_free = scores["k"].isna() & scores["row"].isin(K_FREE_ROWS)
    return scores[in_model & (same_k | k_free)]


def sections(scores: pd.DataFrame) -> list[tuple[str, int | None]]:
    """The (model, k) sections of aggregated cells or trials, models by size; a k-free row (zero-shot)
    joins every k of its model, with a section of its own only when its model has no k."""
    sections = []
    for model in sorted(scores["model"].unique(), key=lambda m: natural_key(model_key(m))):
        ks = scores.loc[scores["model"] == model, "k"]
        model_ks: list[int | None] = sorted({int(k) for k in ks.dropna()})
        only_k_free = scores[(scores["model"] == model) & ks.isna()]["row"].isin(K_FREE_ROWS).all()
        if ks.isna().any() and not (model_ks and only_k_free):
            model_ks.append(None)
        sections += [(model, k) for k in model_ks]
    return sections


def ablation_sections(scores: pd.DataFrame) -> list[tuple[Layout, str, int | None]]:
    """The ablation layouts to draw, with their (model, k) section: those with a result in one of their
    ``requires`` rows (any row by default), less any whose rows with results a larger one drawn shows."""
    drawn = []
    for model, k in sections(scores):
        present = set(section_cells(scores, model, k)["row"])
        candidates = [
            layout
            for layout in LAYOUTS
            if layout.ablation and layout.covers(model, k) and present & set(layout.requires or layout.rows)
        ]
        for layout in candidates:
            mine = present & set(layout.rows)
            if not any(
                other is not layout and mine <= set(other.rows) and len(other.rows) > len(layout.rows)
                for other in candidates
            ):
                drawn.append((layout, model, k))
    return drawn


def score_tables(scores: pd.DataFrame) -> list[Table]:
    """Return one Table per (model, k) section of aggregated cells (output of ``select.aggregate``), in the
    paper's main layout where the section is one of its tables, else a generic one."""
    tables = []
    for model, k in sections(scores):
        layout = next((lay for lay in LAYOUTS if not lay.ablation and lay.covers(model, k)), None)
        tables.append(_score_table(section_cells(scores, model, k), model, k, layout))
    return tables


def _score_table(cells: pd.DataFrame, model: str, k: int | None, layout: Layout | None) -> Table:
    if layout is not None and layout.ablation:
        cells = cells[cells["row"].isin(layout.rows)]
    present_tasks = set(cells["task"])
    if layout is not None and not present_tasks & set(layout.columns.values()):
        layout = None  # e.g. roberta-large on synthetic-sst2
    paper_rows = layout.rows if layout else ()
    paper_tasks = {task: header for header, task in layout.columns.items()} if layout else {}
    rows = list(paper_rows) + sorted(set(cells["row"]) - set(paper_rows), key=row_sort_key)
    extra_tasks = sorted(present_tasks - set(paper_tasks), key=str.lower)
    columns = list(paper_tasks.items()) + [(t, t) for t in extra_tasks]
    grid = pd.MultiIndex.from_product([rows, [c for c, _ in columns]], names=["row", "column"])
    ours = cells.rename(columns={"task": "column", "mean": "value"}).set_index(["row", "column"])
    table = ours[["value", "std", "n", "includes_unfinished", "hub_data"]].reindex(grid)
    published_cells = [
        (row, task, cell.mean, cell.std, cell.mark)
        for row in (rows if layout else ())
        for task, cell in layout.published_cells(model, k, row).items()
    ]
    theirs = pd.DataFrame(published_cells, columns=["row", "column", "paper", "paper_std", "paper_note"])
    table = table.join(theirs.set_index(["row", "column"]), how="left").reset_index()
    table[["paper", "paper_std"]] = table[["paper", "paper_std"]].astype(float)  # None ("*") -> NaN
    table["diff"] = table["value"] - table["paper"]
    table["n"] = table["n"].fillna(0).astype(int)
    table["includes_unfinished"] = table["includes_unfinished"].astype("boolean").fillna(False).astype(bool)
    table["paper_note"] = table["paper_note"].fillna("")
    # LM-BFF's pack is the paper's RoBERTa data; a cell from the hub data sets is not comparable as is
    hub = table["hub_data"].astype("boolean").fillna(False).astype(bool) & table["column"].isin(paper_tasks)
    marked = layout is not None and layout.lmbff_data
    table["mark"] = [HUB_DATA_MARK if marked and flag else "" for flag in hub]
    generic_title = model if k is None else f"{model}, k={k}"
    title = layout.format_title(model, k) if layout is not None else generic_title
    notes = ["† marked in the paper", "* no number in the paper (needs more tuning)"] if layout else []
    notes = [n for n in notes if any(n[0] == m for m in table["paper_note"])]
    notes += list(layout.notes) if layout else []
    if any(table["mark"] == HUB_DATA_MARK):
        notes.append(
            f"{HUB_DATA_MARK} hub data (data_source=hub), not LM-BFF's pack: k-shot draws differ from the "
            "paper's (README: Paper data)"
        )
    if layout is not None:
        notes.append(
            f"Where mezo_ray differs from the paper's code, and the switches that restore it: {FIDELITY}"
        )
    return Table(
        name=layout.name if layout else "",
        title=title,
        kind="score",
        row_header="method",
        rows=rows,
        columns=columns,
        cells=table[[*CELL_COLUMNS, "diff"]],
        model=model,
        k=k,
        has_paper=layout is not None and bool(published_cells),
        notes=notes,
    )


def memory_tables(memory: pd.DataFrame) -> list[Table]:
    """Return one peak-memory Table per task (Table 22's layout: model × method); only MultiRC, the task the
    paper measured, gets the published numbers."""
    tables = []
    for task in sorted(memory["task"].unique(), key=str.lower):
        table = _memory_cells(memory[memory["task"] == task], published=task == paper.MEMORY_TASK)
        has_paper = bool(table.cells["paper"].notna().any() or table.cells["paper_note"].ne("").any())
        tables.append(
            dataclasses.replace(
                table,
                name="Table 22" if has_paper else "",
                title=f"Table 22 (peak memory, {task})" if has_paper else f"Peak memory: {task}",
                has_paper=has_paper,
            )
        )
    return tables


def benchmark_memory_tables(benchmark: pd.DataFrame) -> list[Table]:
    """Return Table 22 from ``benchmarks/memory.py`` results (``load.read_memory_benchmark``), one per
    (dtype, device, tokens): the paper's shape (MultiRC, batch 1), its numbers beside ours, extrapolated
    cells marked ~."""
    tables = []
    for (dtype, device, seq), cells in benchmark.groupby(["dtype", "device", "seq"], sort=True):
        measure = "peak RSS of the process" if device == "cpu" else "torch.cuda.max_memory_allocated"
        table = _memory_cells(cells.assign(n=1, includes_unfinished=False), published=True)
        tables.append(
            dataclasses.replace(
                table,
                name="Table 22",
                title=f"Table 22 (peak memory, benchmarks/memory.py: {dtype} on {device}, {seq} tokens)",
                has_paper=True,
                caption=(
                    f"Peak memory in GiB, one child process per (size, method) ({measure}): OPT with random "
                    f"weights, {dtype}, batch 1 × {seq} tokens (ICL: its 2048-token context). Cell: ours "
                    "[paper's A100s × GB (nvidia-smi, MultiRC, fp16, batch 1); ours − paper]."
                ),
                notes=[
                    f"{EXTRAPOLATED} extrapolated by the benchmark (a least-squares line in the parameter "
                    "count through the sizes it measured), not measured"
                ]
                if cells["extrapolated"].any()
                else [],
            )
        )
    return tables


def _memory_cells(cells: pd.DataFrame, published: bool) -> Table:
    """A model × method memory Table of ``cells`` (model, row, peak_gib, n, includes_unfinished and maybe
    extrapolated), with Table 22's numbers where ``published``."""
    models = sorted(cells["model"].unique(), key=lambda m: natural_key(model_key(m)))
    rows_present = sorted(cells["row"].unique(), key=row_sort_key)
    grid = pd.MultiIndex.from_product([models, rows_present], names=["row", "column"])
    ours = cells.rename(columns={"model": "row", "row": "column", "peak_gib": "value"})
    ours = ours.assign(extrapolated=ours.get("extrapolated", False))
    keep = ["value", "n", "includes_unfinished", "extrapolated"]
    table = ours.set_index(["row", "column"])[keep].reindex(grid).reset_index()
    papers = [
        paper.PAPER_MEMORY.get(model_key(m), {}).get(paper.MEMORY_COLUMN_OF_ROW.get(r, ""))
        if published
        else None
        for m, r in zip(table["row"], table["column"], strict=True)
    ]
    table["std"] = float("nan")
    extrapolated = table["extrapolated"].astype("boolean").fillna(False).astype(bool)
    table["mark"] = [EXTRAPOLATED if flag else "" for flag in extrapolated]
    table["paper"] = [p.gb if p and p.gb is not None else float("nan") for p in papers]
    table["paper_std"] = float("nan")
    table["paper_note"] = [f"{p.gpus}×" if p else "" for p in papers]
    table["diff"] = table["value"] - table["paper"]
    table["n"] = table["n"].fillna(0).astype(int)
    table["includes_unfinished"] = table["includes_unfinished"].astype("boolean").fillna(False).astype(bool)
    return Table(
        name="",
        title="",
        kind="memory",
        row_header="model",
        rows=models,
        columns=[(r, r) for r in rows_present],
        cells=table[[*CELL_COLUMNS, "diff"]],
    )


def method_tables(selected: pd.DataFrame) -> list[Table]:
    """Return one "methods at an equal budget" Table per (model, k, max_forward_passes) of the selected
    trials that ran under a forward-pass budget: the test score of the configuration selected on dev per
    seed (mean, std over seeds), and per method its optimizer state (× the trainable parameters) and
    forward passes per step, both read from its trials' reports."""
    tables = []
    keys = ["model", "k", "max_forward_passes"]
    for (model, k, budget), group in selected.groupby(keys, dropna=False, sort=True):
        k = None if pd.isna(k) else int(k)
        table = _score_table(aggregate(group), model, k, None)
        state, per_step = {}, {}
        for row, trials in group.groupby("row"):
            multiple = trials["optimizer_state_multiple"].median()
            state[row] = "—" if pd.isna(multiple) else f"{multiple:.3g}×"
            passes = (trials["forward_passes"] / trials["step"]).median()
            per_step[row] = "—" if pd.isna(passes) else f"{passes:.3g}"
        where = model if k is None else f"{model}, k={k}"
        tables.append(
            dataclasses.replace(
                table,
                name="Methods",
                title=f"Methods at {int(budget):,} forward passes: {where}",
                row_info=[("state (× params)", state), ("forward passes / step", per_step)],
                notes=[
                    "Every trial stopped at the same forward-pass budget; state: the optimizer's buffers in "
                    "multiples of the trainable parameters"
                ],
            )
        )
    return tables


def build_tables(report: Report, select: str = "dev_acc", include_unfinished: bool = False) -> list[Table]:
    """Return every table of a report: score sections (the paper's layouts in its order, then generic
    ones), the methods compared at a forward-pass budget, then peak-memory sections."""
    selected = select_best(report.trials, select, include_unfinished)
    cells = aggregate(selected)
    ablations = ablation_sections(cells)
    claimed = {(model, k, row) for layout, model, k in ablations for row in layout.rows}
    section_k = [None if pd.isna(k) else int(k) for k in selected["k"]]
    in_ablation = pd.Series(
        [(m, k, r) in claimed for m, k, r in zip(selected["model"], section_k, selected["row"], strict=True)],
        index=selected.index,
        dtype=bool,
    )
    rest = selected[~in_ablation]
    budgeted = rest["max_forward_passes"].notna()
    tables = [_score_table(section_cells(cells, m, k), m, k, layout) for layout, m, k in ablations]
    tables += score_tables(aggregate(rest[~budgeted])) if (~budgeted).any() else []
    rank = {layout.name: i for i, layout in enumerate(LAYOUTS)}
    tables = sorted(tables, key=lambda t: rank.get(t.name, len(rank)))  # stable: models in natural order
    tables += method_tables(rest[budgeted])
    memory = aggregate_memory(report.trials, include_unfinished)
    tables += memory_tables(memory) if len(memory) else []
    benchmark = report.memory_benchmark
    return tables + (benchmark_memory_tables(benchmark) if benchmark is not None and len(benchmark) else [])


def footer(trials: pd.DataFrame) -> pd.DataFrame:
    """Return the trials a reader must hear about: unfinished and errored ones (with the reason) and finished
    ones that carry a note (e.g. completed after an error); columns trial_id, experiment, status, config,
    reason."""
    listed = trials[(trials["status"] != "done") | (trials["reason"] != "")]
    return pd.DataFrame(
        {
            "trial_id": listed["trial_id"],
            "experiment": listed["experiment"],
            "status": listed["status"],
            "config": [_config_summary(row) for row in listed.itertuples()],
            "reason": listed["reason"],
        }
    ).reset_index(drop=True)


def _config_summary(trial: Any) -> str:
    """Return a one-line summary of a trial's configuration, e.g. "roberta-large SST-2 k=16 seed=13 MeZO
    lr=1e-06 eps=0.001 bs=64" (missing keys left out)."""
    parts = [model_key(trial.model), str(trial.task)]
    for label, value, fmt in (
        ("k", trial.k, "{}"),
        ("seed", trial.data_seed, "{}"),
        ("", trial.row, "{}"),
        ("lr", trial.lr, "{:g}"),
        ("eps", trial.eps, "{:g}"),
        ("wd", trial.weight_decay, "{:g}"),
        ("bs", trial.batch_size, "{}"),
    ):
        if not pd.isna(value):
            parts.append(f"{label}={fmt.format(value)}" if label else str(value))
    return " ".join(parts)
