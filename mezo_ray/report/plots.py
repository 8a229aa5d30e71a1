"""PNG plots of a report: learning curves, the per-seed test scores behind each table cell, peak memory.

Figures are built on matplotlib's object API with an explicit Agg canvas, never pyplot, so writing plots
neither needs a display nor changes the backend of a notebook or script that imported us.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from mezo_ray.report.load import Report, model_key
from mezo_ray.report.tables import natural_key, row_sort_key

_LINESTYLE = {"done": "-", "unfinished": "--", "errored": ":"}
_X_AXES = (("step", "step"), ("forward_passes", "forward passes"))


def _slug(*parts: object) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(p)).strip("-") for p in parts if p != "")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _k_text(k) -> str:
    return "" if pd.isna(k) else f"k{int(k)}"


def plot_curves(report: Report, out_dir: Path) -> list[Path]:
    """Write one figure per (model, task, k): dev score ×100 against step (left) and forward passes (right),
    one line per trial coloured by learning rate (log scale), one panel row per method; dashed = unfinished,
    dotted = errored. Return the paths written."""
    keys = ["trial_id", "model", "task", "k", "row", "lr", "status"]
    history = report.history.merge(report.trials[keys], on="trial_id").dropna(subset=["dev_acc"])
    written = []
    for (model, task, k), group in history.groupby(["model", "task", "k"], dropna=False, sort=True):
        rows = sorted(group["row"].unique(), key=row_sort_key)
        fig = Figure(figsize=(11, 0.6 + 2.6 * len(rows)), layout="constrained")
        axes = fig.subplots(len(rows), 2, squeeze=False)
        lrs = group["lr"][group["lr"] > 0]
        norm = (
            LogNorm(lrs.min(), lrs.max() if lrs.max() > lrs.min() else lrs.min() * 10) if len(lrs) else None
        )
        cmap = colormaps["viridis"]
        for (x_key, x_label), column in zip(_X_AXES, axes.T, strict=True):
            for ax, row in zip(column, rows, strict=True):
                for _, trial in group[group["row"] == row].groupby("trial_id", sort=True):
                    lr = trial["lr"].iloc[0]
                    colour = cmap(norm(lr)) if norm is not None and lr > 0 else "grey"
                    points = trial.dropna(subset=[x_key]).sort_values("report")
                    ax.plot(
                        points[x_key],
                        points["dev_acc"] * 100,
                        color=colour,
                        linestyle=_LINESTYLE.get(trial["status"].iloc[0], "-"),
                        marker=".",
                    )
                ax.set_title(row, fontsize=9)
                ax.set_xlabel(x_label)
                ax.set_ylabel("dev ×100")
        if norm is not None:
            fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="learning rate")
        k_title = "" if pd.isna(k) else f", k={int(k)}"
        fig.suptitle(f"{model}, {task}{k_title}: dev score per trial (dashed: unfinished, dotted: errored)")
        written.append(_save(fig, out_dir / f"curves_{_slug(model_key(model), task, _k_text(k))}.png"))
    return written


def plot_selected(selected: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write one figure per (model, k): a panel per task with each selected configuration's test score ×100
    per data seed (dots) and their mean (bar), by method. Return the paths written."""
    written = []
    scored = selected.dropna(subset=["test_acc"]).assign(score=lambda f: f["test_acc"] * 100)
    for (model, k), group in scored.groupby(["model", "k"], dropna=False, sort=True):
        tasks = sorted(group["task"].unique(), key=str.lower)
        ncols = min(len(tasks), 3)
        nrows = -(-len(tasks) // ncols)
        fig = Figure(figsize=(4.2 * ncols, 0.6 + 3.4 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, task in zip(axes, tasks, strict=False):
            by_task = group[group["task"] == task]
            rows = sorted(by_task["row"].unique(), key=row_sort_key)
            for x, row in enumerate(rows):
                scores = by_task.loc[by_task["row"] == row, "score"].to_numpy()
                ax.scatter(np.full(len(scores), x), scores, s=18, alpha=0.7)
                ax.scatter([x], [scores.mean()], marker="_", s=400, color="black")
            ax.set_xticks(range(len(rows)), rows, rotation=45, ha="right", fontsize=8)
            ax.set_title(task)
            ax.set_ylabel("test ×100 (selected per seed)")
        for ax in axes[len(tasks) :]:
            ax.set_visible(False)
        k_title = "" if pd.isna(k) else f", k={int(k)}"
        fig.suptitle(f"{model}{k_title}: test score of the configuration selected per data seed")
        written.append(_save(fig, out_dir / f"selected_{_slug(model_key(model), _k_text(k))}.png"))
    return written


def plot_memory(memory: pd.DataFrame, out_dir: Path) -> Path | None:
    """Write memory.png: peak GiB per model (bars grouped by method), one panel per task; None when no
    trial reported peak_mem_bytes."""
    if memory.empty:
        return None
    tasks = sorted(memory["task"].unique(), key=str.lower)
    fig = Figure(figsize=(7, 0.6 + 3.4 * len(tasks)), layout="constrained")
    for ax, task in zip(fig.subplots(len(tasks), 1, squeeze=False).ravel(), tasks, strict=True):
        table = memory[memory["task"] == task].pivot(index="model", columns="row", values="peak_gib")
        table = table.loc[sorted(table.index, key=lambda m: natural_key(model_key(m)))]
        table = table[sorted(table.columns, key=row_sort_key)]
        width = 0.8 / len(table.columns)
        for i, row in enumerate(table.columns):
            ax.bar(np.arange(len(table)) + i * width, table[row].to_numpy(), width=width, label=row)
        ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, [model_key(m) for m in table.index])
        ax.set_ylabel("peak GiB")
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.suptitle("Peak memory (max over a method's trials)")
    return _save(fig, out_dir / "memory.png")


def plot_methods(report: Report, selected: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write one figure per (model, k, forward-pass budget) of the methods compared at a budget
    (``methods_figure``). Return the paths written."""
    budgeted = selected[selected["max_forward_passes"].notna()]
    written = []
    for (model, k, budget), group in budgeted.groupby(["model", "k", "max_forward_passes"], dropna=False):
        name = f"methods_{_slug(model_key(model), _k_text(k), f'{int(budget)}fwd')}.png"
        written.append(_save(methods_figure(report.history, group), out_dir / name))
    return written


def methods_figure(history: pd.DataFrame, selected: pd.DataFrame) -> Figure:
    """A panel per task with, per method, the dev score of the configuration selected per seed against
    forward passes: thin lines each seed, a thick line their mean per evaluation. ``selected``: the
    selected trials of one (model, k, budget)."""
    # evaluations only: the final report repeats the last step with the selected checkpoint's dev score
    history = history.dropna(subset=["dev_acc", "forward_passes"]).drop_duplicates(["trial_id", "step"])
    tasks = sorted(selected["task"].unique(), key=str.lower)
    rows = sorted(selected["row"].unique(), key=row_sort_key)
    colours = dict(zip(rows, colormaps["tab10"].colors, strict=False))
    fig = Figure(figsize=(1 + 4.6 * len(tasks), 4.6), layout="constrained")
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False).ravel(), tasks, strict=True):
        for row in rows:
            chosen = selected[(selected["task"] == task) & (selected["row"] == row)]["trial_id"]
            curves = history[history["trial_id"].isin(chosen)].sort_values(["trial_id", "report"])
            if curves.empty:
                continue
            for _, seed in curves.groupby("trial_id"):
                ax.plot(seed["forward_passes"], seed["dev_acc"] * 100, color=colours[row], lw=0.6, alpha=0.35)
            mean = curves.groupby(curves.groupby("trial_id").cumcount())[["forward_passes", "dev_acc"]].mean()
            label = row.split(" [", 1)[0]  # the budget is in the title
            ax.plot(mean["forward_passes"], mean["dev_acc"] * 100, color=colours[row], lw=2, label=label)
        ax.set_title(task)
        ax.set_xlabel("forward passes")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 50k, 1M: long counts do not collide
        ax.set_ylabel("dev ×100")
        ax.legend(fontsize=8)
    first = selected.iloc[0]
    k_title = "" if pd.isna(first["k"]) else f", k={int(first['k'])}"
    fig.suptitle(
        f"{model_key(first['model'])}{k_title}: dev score against forward passes, "
        f"{int(first['max_forward_passes']):,} each\n(configuration selected on dev per seed; thin: seeds, "
        "thick: mean)",
        fontsize=10,
    )
    return fig


def write_plots(report: Report, selected: pd.DataFrame, memory: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write every plot of a report under ``out_dir`` and return the paths."""
    written = (
        plot_curves(report, out_dir)
        + plot_selected(selected, out_dir)
        + plot_methods(report, selected, out_dir)
    )
    memory_png = plot_memory(memory, out_dir)
    return written + ([memory_png] if memory_png else [])
