"""Layouts: aggregated cells -> the paper's tables (18, 1, 20, 22) or a generic one, with published numbers.

A ``Table`` holds tidy numeric cells (one row per table cell, ours and the paper's side by side); how a cell
is written (markdown, LaTeX, CSV) is ``formats``' business. Which layout a section gets depends on the model
and k: RoBERTa-large at k=16/512 -> Table 18, OPT-13B -> Table 1, OPT-30B/66B -> Table 20 (in Table 1's
columns); anything else (a tiny local model, the offline ``synthetic-sst2`` task) -> a generic layout whose
rows and columns are just what is present, so demo and smoke searches still give a readable table. A paper
layout always shows all its rows and columns, so missing results stay visible as missing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mezo_ray.report import paper_numbers as paper
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
    "FZOO",
    "HiZOO",
    "LOZO",
    "LOZO-M",
    "FT",
    "FT (LoRA)",
    "FT (LoRA, as published)",
    "FT (prefix)",
)
#: Marks a Table 18 cell computed from hub data sets instead of LM-BFF's pack.
HUB_DATA_MARK = "§"
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


def row_sort_key(label: str) -> tuple[int, str, str]:
    """Sort key putting paper rows in the paper's order, a bracketed ablation ("MeZO [n=4]") after its
    row, and unknown rows after them."""
    base = label.split(" [", 1)[0]
    return (ROW_ORDER.index(base), "", label) if base in ROW_ORDER else (len(ROW_ORDER), base, label)


def natural_key(text: str) -> list:
    """Sort key ordering model names by size (opt-1.3b < opt-13b < opt-66b) rather than by character."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)  # text, number, text, ...: same type at each position
    return [float(part) if i % 2 else part.lower() for i, part in enumerate(parts)]


def _layout(model: str, k: int | None) -> tuple[str, tuple[str, ...], dict[str, str], dict | None]:
    """Return (table name, paper rows, {task: header}, published cells) for a (model, k) section."""
    key = model_key(model)
    if key == "roberta-large" and k in (16, 512):
        tasks = {task: header for header, task in paper.TABLE18_TASKS.items()}
        return "Table 18", paper.TABLE18_ROWS, tasks, paper.PAPER_SCORES[(key, k)]
    if key in ("opt-13b", "opt-30b", "opt-66b") and k is None:
        tasks = {task: header for header, task in paper.TABLE1_TASKS.items()}
        return (
            ("Table 1" if key == "opt-13b" else "Table 20"),
            paper.TABLE1_ROWS,
            tasks,
            paper.PAPER_SCORES[(key, k)],
        )
    return "", (), {}, None


def _section_cells(scores: pd.DataFrame, model: str, k: int | None) -> pd.DataFrame:
    in_model = scores["model"] == model
    if k is None:
        return scores[in_model & scores["k"].isna()]
    same_k = scores["k"].eq(k).fillna(False)
    k_free = scores["k"].isna() & scores["row"].isin(K_FREE_ROWS)
    return scores[in_model & (same_k | k_free)]


def score_tables(scores: pd.DataFrame) -> list[Table]:
    """Return one Table per (model, k) section of aggregated cells (output of ``select.aggregate``)."""
    tables = []
    for model in sorted(scores["model"].unique(), key=lambda m: natural_key(model_key(m))):
        ks = scores.loc[scores["model"] == model, "k"]
        sections = sorted({int(k) for k in ks.dropna()})
        only_k_free = scores[(scores["model"] == model) & ks.isna()]["row"].isin(K_FREE_ROWS).all()
        if ks.isna().any() and not (sections and only_k_free):
            sections.append(None)
        for k in sections:
            tables.append(_score_table(_section_cells(scores, model, k), model, k))
    order = {"Table 18": 0, "Table 1": 1, "Table 20": 2, "": 3}
    return sorted(tables, key=lambda t: order[t.name])  # stable: models stay in natural order


def _score_table(cells: pd.DataFrame, model: str, k: int | None, paper_layout: bool = True) -> Table:
    name, paper_rows, paper_tasks, published = _layout(model, k) if paper_layout else ("", (), {}, None)
    present_tasks = set(cells["task"])
    if published is not None and not present_tasks & set(paper_tasks):
        name, paper_rows, paper_tasks, published = "", (), {}, None  # e.g. roberta-large on synthetic-sst2
    rows = list(paper_rows) + sorted(set(cells["row"]) - set(paper_rows), key=row_sort_key)
    extra_tasks = sorted(present_tasks - set(paper_tasks), key=str.lower)
    columns = list(paper_tasks.items()) + [(t, t) for t in extra_tasks]
    grid = pd.MultiIndex.from_product([rows, [c for c, _ in columns]], names=["row", "column"])
    ours = cells.rename(columns={"task": "column", "mean": "value"}).set_index(["row", "column"])
    table = ours[["value", "std", "n", "includes_unfinished", "hub_data"]].reindex(grid)
    published_cells = [
        (row, task, cell.mean, cell.std, cell.mark)
        for row, by_task in (published or {}).items()
        for task, cell in by_task.items()
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
    table["mark"] = [HUB_DATA_MARK if name == "Table 18" and flag else "" for flag in hub]
    if name == "Table 18":
        title = f"{name} (RoBERTa-large, k={k}): {model}"
    elif name:
        title = f"{name} ({model_key(model).upper()}): {model}"
    else:
        title = model if k is None else f"{model}, k={k}"
    notes = ["† marked in the paper", "* no number in the paper (needs more tuning)"] if name else []
    notes = [n for n in notes if any(n[0] == m for m in table["paper_note"])]
    if any(table["mark"] == HUB_DATA_MARK):
        notes.append(
            f"{HUB_DATA_MARK} hub data (data_source=hub), not LM-BFF's pack: k-shot draws differ from the "
            "paper's (README: Paper data)"
        )
    if name:
        notes.append(
            f"Where mezo_ray differs from the paper's code, and the switches that restore it: {FIDELITY}"
        )
    return Table(
        name=name,
        title=title,
        kind="score",
        row_header="method",
        rows=rows,
        columns=columns,
        cells=table[[*CELL_COLUMNS, "diff"]],
        model=model,
        k=k,
        has_paper=published is not None,
        notes=notes,
    )


def memory_tables(memory: pd.DataFrame) -> list[Table]:
    """Return one peak-memory Table per task (Table 22's layout: model × method); only MultiRC, the task the
    paper measured, gets the published numbers."""
    tables = []
    for task in sorted(memory["task"].unique(), key=str.lower):
        cells = memory[memory["task"] == task]
        models = sorted(cells["model"].unique(), key=lambda m: natural_key(model_key(m)))
        rows_present = sorted(cells["row"].unique(), key=row_sort_key)
        grid = pd.MultiIndex.from_product([models, rows_present], names=["row", "column"])
        ours = cells.rename(columns={"model": "row", "row": "column", "peak_gib": "value"})
        table = (
            ours.set_index(["row", "column"])[["value", "n", "includes_unfinished"]]
            .reindex(grid)
            .reset_index()
        )
        published = [
            paper.PAPER_MEMORY.get(model_key(m), {}).get(paper.MEMORY_COLUMN_OF_ROW.get(r, ""))
            if task == paper.MEMORY_TASK
            else None
            for m, r in zip(table["row"], table["column"], strict=True)
        ]
        table["std"] = float("nan")
        table["mark"] = ""
        table["paper"] = [p.gb if p and p.gb is not None else float("nan") for p in published]
        table["paper_std"] = float("nan")
        table["paper_note"] = [f"{p.gpus}×" if p else "" for p in published]
        table["diff"] = table["value"] - table["paper"]
        table["n"] = table["n"].fillna(0).astype(int)
        table["includes_unfinished"] = (
            table["includes_unfinished"].astype("boolean").fillna(False).astype(bool)
        )
        has_paper = any(p is not None for p in published)
        tables.append(
            Table(
                name="Table 22" if has_paper else "",
                title=f"Table 22 (peak memory, {task})" if has_paper else f"Peak memory: {task}",
                kind="memory",
                row_header="model",
                rows=models,
                columns=[(r, r) for r in rows_present],
                cells=table[[*CELL_COLUMNS, "diff"]],
                has_paper=has_paper,
            )
        )
    return tables


def method_tables(selected: pd.DataFrame) -> list[Table]:
    """Return one "methods at an equal budget" Table per (model, k, max_forward_passes) of the selected
    trials that ran under a forward-pass budget: the test score of the configuration selected on dev per
    seed (mean, std over seeds), and per method its optimizer state (× the trainable parameters) and
    forward passes per step, both read from its trials' reports."""
    tables = []
    keys = ["model", "k", "max_forward_passes"]
    for (model, k, budget), group in selected.groupby(keys, dropna=False, sort=True):
        k = None if pd.isna(k) else int(k)
        table = _score_table(aggregate(group), model, k, paper_layout=False)
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
    """Return every table of a report: score sections (paper layouts first), the methods compared at a
    forward-pass budget, then peak-memory sections."""
    selected = select_best(report.trials, select, include_unfinished)
    budgeted = selected["max_forward_passes"].notna()
    tables = score_tables(aggregate(selected[~budgeted])) if (~budgeted).any() else []
    tables += method_tables(selected[budgeted])
    memory = aggregate_memory(report.trials, include_unfinished)
    return tables + (memory_tables(memory) if len(memory) else [])


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
