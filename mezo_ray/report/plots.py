"""PNG plots of a report: learning curves, the per-seed test scores behind each table cell, peak memory, and
the methods compared at a forward-pass budget.

Each plot type has a function that builds matplotlib ``Figure``s (keyed by file name) and ``write_plots`` only
saves them, so tests can inspect what is drawn without reading pixels. Figures are built on matplotlib's
object API with an explicit Agg canvas, never pyplot, so writing plots neither needs a display nor changes
the backend of a notebook or script that imported us. Every figure uses constrained layout with its legend
outside the axes, at 100 dpi, sized so its text is readable at 100% zoom.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter, NullLocator

from mezo_ray.report import paper_numbers as paper
from mezo_ray.report.layouts import published_score
from mezo_ray.report.load import UNTRAINED_ROWS, Report, model_key
from mezo_ray.report.tables import natural_key, row_sort_key, section_cells, sections

DPI = 100
#: Rows of methods that do not train: drawn as horizontal reference lines on the learning curves.
BASELINE_ROWS = tuple(UNTRAINED_ROWS.values())
#: One line style per learning rate of a method (smallest lr first); cycled when a method has more.
LR_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)))
BASELINE_STYLE = (0, (6, 2, 1, 2))
_PAPER_MARKER = {"marker": "D", "markersize": 7, "markerfacecolor": "white", "markeredgecolor": "crimson"}


def _figure(width: float, height: float) -> Figure:
    """A constrained-layout figure with its own Agg canvas (so ``fig.canvas.get_renderer()`` works)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(fig: Figure, text: str, fontsize: float = 11, beside: Legend | None = None) -> None:
    """A suptitle wrapped to the width it has: centred on the figure, it must clear the legend ``beside``
    it on the right, so a long model path neither runs off the sides nor over the legend."""
    right = beside.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi if beside else 0.0
    chars = int((fig.get_figwidth() - 2 * right - 0.3) * 72 / (0.6 * fontsize))  # ~0.6 em per character
    fig.suptitle(textwrap.fill(text, width=max(chars, 20)), fontsize=fontsize)


def _slug(*parts: object) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(p)).strip("-") for p in parts if p != "")


def _k_text(k: int | None) -> str:
    return "" if k is None else f"k{k}"


def _where(model: str, k: int | None) -> str:
    return model_key(model) + ("" if k is None else f", k={k}")


def _lr_text(lr: float) -> str:
    """A learning rate as a search space writes it: 1e-06 -> "1e-6", 0.0005 -> "5e-4", nan -> "?"."""
    if pd.isna(lr):
        return "?"
    mantissa, exponent = f"{lr:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _lr_order(lr: float) -> tuple[bool, float]:
    return (bool(pd.isna(lr)), 0.0 if pd.isna(lr) else float(lr))


def _colours(rows: list[str]) -> dict[str, tuple]:
    palette = colormaps["tab10"].colors
    return {row: palette[i % len(palette)] for i, row in enumerate(sorted(rows, key=row_sort_key))}


# --- learning curves ------------------------------------------------------------------------------------


def curve_figures(report: Report, selected: pd.DataFrame) -> dict[str, Figure]:
    """One learning-curve figure per (model, k) section, keyed ``curves_<model>[_k<k>].png``.

    A row of panels per task, dev score ×100 against forward passes (left) and steps (right): a thin line
    per trial at its evaluations only (a trial's ``final`` report repeats its selected checkpoint's dev
    score, so drawing it would add a jump no evaluation produced), one colour per method and a line style
    per lr. Methods that do not train (zero-shot, ICL, LP) are horizontal lines at the mean dev score of
    their configuration selected per seed, so they neither get a panel nor stretch the lr styles. The
    last report of an unfinished trial is an open circle, of an errored one an x.
    """
    history = report.history[~report.history["final"].eq(True)].dropna(subset=["dev_acc"])
    figures = {}
    for model, k in sections(report.trials):
        trials = section_cells(report.trials, model, k)
        baselines = selected[
            selected["trial_id"].isin(trials["trial_id"]) & selected["row"].isin(BASELINE_ROWS)
        ]
        name = f"curves_{_slug(model_key(model), _k_text(k))}.png"
        figures[name] = _curve_figure(model, k, trials, history, baselines)
    return figures


def _curve_figure(
    model: str, k: int | None, trials: pd.DataFrame, history: pd.DataFrame, baselines: pd.DataFrame
) -> Figure:
    tasks = sorted(trials["task"].unique(), key=str.lower)
    trained = trials[~trials["row"].isin(BASELINE_ROWS)]
    colours = _colours(list(trials["row"].unique()))
    styles = {  # (row, lr as text: NaN-safe) -> line style, in legend order
        (row, _lr_text(lr)): LR_STYLES[i % len(LR_STYLES)]
        for row in sorted(trained["row"].unique(), key=row_sort_key)
        for i, lr in enumerate(sorted(trained.loc[trained["row"] == row, "lr"].unique(), key=_lr_order))
    }
    handles = [
        Line2D([], [], color=colours[row], linestyle=style, marker=".", label=f"{row}, lr {lr}")
        for (row, lr), style in styles.items()
    ]
    baseline_rows = sorted(baselines.dropna(subset=["dev_acc"])["row"].unique(), key=row_sort_key)
    handles += [
        Line2D([], [], color=colours[row], linestyle=BASELINE_STYLE, label=f"{row} (no training): mean dev")
        for row in baseline_rows
    ]
    status_marks = {
        "unfinished": ({"marker": "o", "markerfacecolor": "white"}, "last report of an unfinished trial"),
        "errored": ({"marker": "x"}, "last report of an errored trial"),
    }
    handles += [
        Line2D([], [], color="black", linestyle="none", markersize=8, markeredgewidth=1.5, label=text, **mark)
        for status, (mark, text) in status_marks.items()
        if (trained["status"] == status).any()
    ]
    fig = _figure(12.5, max(0.9 + 3.0 * len(tasks), 1.4 + 0.2 * len(handles)))
    axes = fig.subplots(len(tasks), 2, squeeze=False, sharey="row")
    for (ax_passes, ax_steps), task in zip(axes, tasks, strict=True):
        panels = ((ax_passes, "forward_passes", "forward passes"), (ax_steps, "step", "step"))
        of_task = trained[trained["task"] == task]
        order = sorted(of_task.itertuples(), key=lambda t: (row_sort_key(t.row), _lr_order(t.lr), t.trial_id))
        for trial in order:
            points = history[history["trial_id"] == trial.trial_id].sort_values("report")
            style = {"color": colours[trial.row], "linestyle": styles[(trial.row, _lr_text(trial.lr))]}
            for ax, x_key, _ in panels:
                at = points.dropna(subset=[x_key])
                if at.empty:
                    continue
                ax.plot(
                    at[x_key],
                    at["dev_acc"] * 100,
                    lw=1,
                    marker=".",
                    ms=5,
                    gid=f"trial:{trial.trial_id}",
                    **style,
                )
                if trial.status in status_marks:
                    ax.plot(
                        at[x_key].iloc[-1:],
                        at["dev_acc"].iloc[-1:] * 100,
                        color=style["color"],
                        linestyle="none",
                        markersize=8,
                        markeredgewidth=1.5,
                        gid=f"{trial.status}:{trial.trial_id}",
                        **status_marks[trial.status][0],
                    )
        of_task_baselines = baselines[baselines["task"] == task].dropna(subset=["dev_acc"])
        levels = of_task_baselines.groupby("row")["dev_acc"].mean().mul(100).sort_values()
        for i, (row, level) in enumerate(levels.items()):
            right = i % 2 == 0  # neighbours alternate sides, so close levels do not print over each other
            for ax, _, _ in panels:
                ax.axhline(level, color=colours[row], linestyle=BASELINE_STYLE, lw=1.3, gid=f"baseline:{row}")
                ax.annotate(
                    f"{row} {level:.1f}",
                    xy=(1 if right else 0, level),
                    xycoords=ax.get_yaxis_transform(),
                    xytext=(-3 if right else 3, 2),
                    textcoords="offset points",
                    ha="right" if right else "left",
                    va="bottom",
                    fontsize=8,
                    color=colours[row],
                )
        for ax, _, x_label in panels:
            ax.set_title(f"{task}: by {x_label}", fontsize=10)
            ax.set_xlabel(x_label)
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 50k, 1M: long counts do not collide
            if of_task.empty:  # only baselines: an x axis would only show matplotlib's default 0..1
                ax.set_xticks([])
                ax.text(0.5, 0.2, "no training runs", transform=ax.transAxes, ha="center", color="grey")
            ax.grid(alpha=0.3)
        ax_passes.set_ylabel("dev ×100")
        if len(levels):  # room around the baselines, above the highest for its label (the axes share y)
            low, high = ax_passes.get_ylim()
            pad = 0.1 * (max(high, levels.max()) - min(low, levels.min()))
            ax_passes.set_ylim(min(low, levels.min() - pad / 2), max(high, levels.max() + pad))
    legend = fig.legend(
        handles=handles, loc="outside right upper", fontsize=8, title="method, lr", title_fontsize=8
    )
    _title(fig, f"{_where(model, k)}: dev score ×100 at each evaluation, one line per trial", beside=legend)
    return fig


# --- selected test scores -------------------------------------------------------------------------------


def selected_figures(selected: pd.DataFrame) -> dict[str, Figure]:
    """One figure per (model, k) section, keyed ``selected_<model>[_k<k>].png``: a panel per task with, per
    method, the test score ×100 of the configuration selected per data seed (dots), their mean with the
    std over seeds (ddof=0, as the table cell) as an error bar, and the paper's published mean (open
    diamond) where the table has one. The y range spans at least 20 points, so a gap of a few points does
    not fill the panel."""
    scored = selected.dropna(subset=["test_acc"])
    return {
        f"selected_{_slug(model_key(model), _k_text(k))}.png": _selected_figure(
            model, k, section_cells(scored, model, k)
        )
        for model, k in sections(scored)
    }


def _score_limits(values: list[float], span: float = 20.0) -> tuple[float, float]:
    """A y range holding ``values`` with a margin, at least ``span`` wide, inside 0..100."""
    lo, hi = min(values) - 3, max(values) + 3
    if hi - lo < span:
        middle = (lo + hi) / 2
        lo, hi = middle - span / 2, middle + span / 2
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > 100:
        lo, hi = max(lo - (hi - 100), 0.0), 100.0
    return lo, hi


def _selected_figure(model: str, k: int | None, cells: pd.DataFrame) -> Figure:
    tasks = sorted(cells["task"].unique(), key=str.lower)
    colours = _colours(list(cells["row"].unique()))
    most_rows = cells.groupby("task")["row"].nunique().max()
    ncols = min(len(tasks), 3)
    nrows = -(-len(tasks) // ncols)
    panel_width = max(2.8, 0.8 + 0.7 * most_rows)
    fig = _figure(max(6.4, 0.6 + panel_width * ncols), 1.5 + 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    any_paper = False
    for ax, task in zip(axes, tasks, strict=False):
        of_task = cells[cells["task"] == task]
        rows = sorted(of_task["row"].unique(), key=row_sort_key)
        drawn = []
        for x, row in enumerate(rows):
            scores = of_task.loc[of_task["row"] == row, "test_acc"].to_numpy() * 100
            mean, std = scores.mean(), scores.std(ddof=0)
            jitter = np.linspace(-0.06, 0.06, len(scores)) if len(scores) > 1 else np.zeros(1)
            ax.plot(x - 0.22 + jitter, scores, "o", ms=5, alpha=0.8, color=colours[row], gid=f"seeds:{row}")
            ax.errorbar([x], [mean], yerr=[std], fmt="s", ms=5, color="black", capsize=4, label=row)
            ax.annotate(
                f"{mean:.1f}",
                xy=(x, mean + std),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
            drawn += [*scores, mean - std, mean + std]
            published = published_score(model, k, row, task)
            if published is not None and published.mean is not None:
                ax.plot([x + 0.22], [published.mean], linestyle="none", gid=f"paper:{row}", **_PAPER_MARKER)
                drawn.append(published.mean)
                any_paper = True
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylim(*_score_limits(drawn))
        ax.set_xticks(range(len(rows)), rows, rotation=30, ha="right", rotation_mode="anchor", fontsize=9)
        ax.set_title(task, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for i, ax in enumerate(axes):
        if i >= len(tasks):
            ax.set_visible(False)
        elif i % ncols == 0:
            ax.set_ylabel("test ×100")
    handles = [
        Line2D([], [], color="grey", marker="o", linestyle="none", label="data seed"),
        Line2D([], [], color="black", marker="s", linestyle="-", label="mean ± std over seeds"),
    ]
    if any_paper:
        handles.append(Line2D([], [], linestyle="none", label="paper (published mean)", **_PAPER_MARKER))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    _title(fig, f"{_where(model, k)}: test score ×100 of the configuration selected on dev, per data seed")
    return fig


# --- peak memory ----------------------------------------------------------------------------------------


def memory_figure(memory: pd.DataFrame) -> Figure | None:
    """Peak memory (``aggregate_memory``'s GiB, max over a method's trials): a panel per task, bars per
    method grouped by model, on a log axis when the values drawn span more than 10×, with Table 22's
    published GB as open diamonds (MultiRC only, the task the paper measured). None without memory data."""
    if memory.empty:
        return None
    tasks = sorted(memory["task"].unique(), key=str.lower)
    all_rows = sorted(memory["row"].unique(), key=row_sort_key)
    colours = _colours(all_rows)
    most_models = memory.groupby("task")["model"].nunique().max()
    fig = _figure(max(7.5, 3.0 + most_models * (0.4 * len(all_rows) + 0.6)), 1.0 + 3.2 * len(tasks))
    any_paper = False
    for ax, task in zip(fig.subplots(len(tasks), 1, squeeze=False).ravel(), tasks, strict=True):
        table = memory[memory["task"] == task].pivot(index="model", columns="row", values="peak_gib")
        table = table.loc[sorted(table.index, key=lambda m: natural_key(model_key(m)))]
        drawn = list(table.stack().dropna())
        present = [row for row in all_rows if row in table.columns]
        width = min(0.8 / len(present), 0.25)  # a lone model's bars stay bars, not walls
        for i, row in enumerate(present):
            x = np.arange(len(table)) + (i + 0.5 - len(present) / 2) * width
            values = table[row].to_numpy()
            ax.bar(x, values, width=width, color=colours[row], gid=f"bars:{row}")
            column = paper.MEMORY_COLUMN_OF_ROW.get(row, "") if task == paper.MEMORY_TASK else None
            for xi, value, model in zip(x, values, table.index, strict=True):
                published = paper.PAPER_MEMORY.get(model_key(model), {}).get(column) if column else None
                top, pad = value, 1
                if published is not None and published.gb is not None:
                    ax.plot(
                        [xi], [published.gb], linestyle="none", gid=f"paper:{model}:{row}", **_PAPER_MARKER
                    )
                    drawn.append(published.gb)
                    any_paper = True
                    top, pad = max(value, published.gb), 6  # clear of the marker
                if not np.isnan(value):  # the value above the bar, or above the paper's marker over it
                    ax.annotate(
                        f"{value:.3g}",
                        xy=(xi, top),
                        xytext=(0, pad),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
        positive = [v for v in drawn if v > 0]
        if positive and max(positive) > 10 * min(positive):
            ax.set_yscale("log")
            ax.set_ylim(min(positive) / 2, max(positive) * 3)  # room for the value labels
            ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 20, 50, 100: no 2×10¹
            ax.yaxis.set_minor_formatter(NullFormatter())
        elif positive:
            ax.set_ylim(0, max(positive) * 1.18)
        ax.set_xticks(np.arange(len(table)), [model_key(m) for m in table.index])
        spare = (most_models - len(table)) / 2  # every panel gives a model the same width
        ax.set_xlim(-0.6 - spare, len(table) - 0.4 + spare)
        ax.set_ylabel("peak GiB")
        ax.set_title(task, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles: list = [Patch(color=colours[row], label=row) for row in all_rows]
    if any_paper:
        handles.append(
            Line2D(
                [], [], linestyle="none", label=f"paper, Table 22\n({paper.MEMORY_TASK}, GB)", **_PAPER_MARKER
            )
        )
    legend = fig.legend(
        handles=handles, loc="outside right upper", fontsize=9, title="method", title_fontsize=9
    )
    _title(fig, "Peak memory per method (max over its trials)", beside=legend)
    return fig


def _parameters(model: str) -> float:
    """An OPT size from its name: "opt-1.3b" -> 1.3e9, "opt-125m" -> 1.25e8."""
    match = re.search(r"(\d+(?:\.\d+)?)([mb])$", model_key(model))
    if match is None:
        raise ValueError(f"no size (e.g. 1.3b, 125m) at the end of the model name {model!r}")
    return float(match[1]) * (1e9 if match[2] == "b" else 1e6)


def memory_scaling_figures(benchmark: pd.DataFrame | None) -> dict[str, Figure]:
    """Table 22 at scale from ``benchmarks/memory.py`` (``load.read_memory_benchmark``): peak GiB
    against parameters, log-log, a line per method, measured sizes filled, the benchmark's
    extrapolations hollow on a dashed line (not measured), Table 22's GB as open diamonds in the
    method's colour. A line plot, not bars: 8 sizes x 7 methods of bars would not read. One figure per
    (dtype, device, tokens), keyed ``memory_benchmark[_<dtype>_<device>_<tokens>].png``."""
    if benchmark is None or benchmark.empty:
        return {}
    groups = list(benchmark.groupby(["dtype", "device", "seq"], sort=True))
    figures = {}
    for (dtype, device, seq), cells in groups:
        name = (
            "memory_benchmark.png"
            if len(groups) == 1
            else f"memory_benchmark_{_slug(dtype, device, seq)}.png"
        )
        figures[name] = _memory_scaling_figure(cells, f"{dtype} on {device}, batch 1 x {seq} tokens")
    return figures


def _memory_scaling_figure(cells: pd.DataFrame, setting: str) -> Figure:
    rows = sorted(cells["row"].unique(), key=row_sort_key)
    colours = _colours(rows)
    fig = _figure(9.0, 5.6)
    ax = fig.subplots()
    for row in rows:
        line = cells[cells["row"] == row].assign(params=lambda f: f["model"].map(_parameters))
        line = line.sort_values("params")
        measured, guessed = line[~line["extrapolated"]], line[line["extrapolated"]]
        ax.plot(measured["params"], measured["peak_gib"], "o-", color=colours[row], gid=f"measured:{row}")
        if len(guessed):  # dashed from the last measured size on: a fit, not a measurement
            tail = pd.concat([measured.tail(1), guessed])
            ax.plot(tail["params"], tail["peak_gib"], "--", color=colours[row], lw=1, gid=f"fit:{row}")
            ax.plot(
                guessed["params"],
                guessed["peak_gib"],
                "o",
                markerfacecolor="white",
                color=colours[row],
                gid=f"extrapolated:{row}",
            )
        column = paper.MEMORY_COLUMN_OF_ROW.get(row)
        published = [
            (_parameters(model), cell.gb)
            for model, by_column in paper.PAPER_MEMORY.items()
            if column and (cell := by_column.get(column)) is not None and cell.gb is not None
        ]
        if published:
            xs, ys = zip(*published, strict=True)
            marker = {**_PAPER_MARKER, "markeredgecolor": colours[row]}
            ax.plot(xs, ys, linestyle="none", gid=f"paper:{row}", **marker)
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = {
        model_key(m).removeprefix("opt-"): _parameters(m) for m in [*cells["model"], *paper.PAPER_MEMORY]
    }
    ordered = sorted(sizes.items(), key=lambda item: item[1])
    ax.set_xticks([p for _, p in ordered], [name for name, _ in ordered])  # OPT's own size names
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("OPT size (parameters, log scale)")
    ax.set_ylabel("peak GiB")
    ax.grid(alpha=0.3, which="both")
    handles: list = [Line2D([], [], color=colours[row], marker="o", label=row) for row in rows]
    handles += [
        Line2D(
            [], [], color="grey", marker="o", markerfacecolor="white", linestyle="--", label="extrapolated"
        ),
        Line2D(
            [], [], linestyle="none", label=f"paper, Table 22\n({paper.MEMORY_TASK}, GB)", **_PAPER_MARKER
        ),
    ]
    legend = fig.legend(
        handles=handles, loc="outside right upper", fontsize=9, title="method", title_fontsize=9
    )
    _title(fig, f"Table 22 at scale, peak memory by model size: {setting}", beside=legend)
    return fig


# --- methods at a forward-pass budget -------------------------------------------------------------------


def methods_figures(report: Report, selected: pd.DataFrame) -> dict[str, Figure]:
    """``methods_figure`` per (model, k, forward-pass budget) of the selected trials run under a budget,
    keyed ``methods_<model>[_k<k>]_<budget>fwd.png``."""
    budgeted = selected[selected["max_forward_passes"].notna()]
    figures = {}
    for (model, k, budget), group in budgeted.groupby(["model", "k", "max_forward_passes"], dropna=False):
        k_text = "" if pd.isna(k) else f"k{int(k)}"
        name = f"methods_{_slug(model_key(model), k_text, f'{int(budget)}fwd')}.png"
        figures[name] = methods_figure(report.history, group)
    return figures


def _without_budget(row: str) -> str:
    """ "MeZO [n=4, 10000 fwd]" -> "MeZO [n=4]": the budget is in the title."""
    base, _, rest = row.partition(" [")
    qualifiers = [q for q in rest.rstrip("]").split(", ") if q and not q.endswith(" fwd")]
    return base + (f" [{', '.join(qualifiers)}]" if qualifiers else "")


def methods_figure(history: pd.DataFrame, selected: pd.DataFrame) -> Figure:
    """A panel per task with, per method, the dev score of the configuration selected per seed against
    forward passes: thin lines each seed, a thick line their mean per evaluation (evaluations only, not
    the ``final`` report). ``selected``: the selected trials of one (model, k, budget)."""
    history = history[~history["final"].eq(True)].dropna(subset=["dev_acc", "forward_passes"])
    tasks = sorted(selected["task"].unique(), key=str.lower)
    rows = sorted(selected["row"].unique(), key=row_sort_key)
    colours = _colours(rows)
    fig = _figure(max(7.0, 2.4 + 4.6 * len(tasks)), 4.8)
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False).ravel(), tasks, strict=True):
        for row in rows:
            chosen = selected[(selected["task"] == task) & (selected["row"] == row)]["trial_id"]
            curves = history[history["trial_id"].isin(chosen)].sort_values(["trial_id", "report"])
            if curves.empty:
                continue
            for _, seed in curves.groupby("trial_id"):
                ax.plot(seed["forward_passes"], seed["dev_acc"] * 100, color=colours[row], lw=0.6, alpha=0.35)
            mean = curves.groupby(curves.groupby("trial_id").cumcount())[["forward_passes", "dev_acc"]].mean()
            label = _without_budget(row)
            ax.plot(mean["forward_passes"], mean["dev_acc"] * 100, color=colours[row], lw=2, label=label)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("forward passes")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 50k, 1M: long counts do not collide
        ax.set_ylabel("dev ×100")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[row], lw=2, label=_without_budget(row)) for row in rows]
    legend = fig.legend(
        handles=handles, loc="outside right upper", fontsize=9, title="method", title_fontsize=9
    )
    first = selected.iloc[0]
    k = None if pd.isna(first["k"]) else int(first["k"])
    _title(
        fig,
        f"{_where(first['model'], k)}: dev score ×100 against forward passes, "
        f"{int(first['max_forward_passes']):,} each (configuration selected on dev per seed; thin: seeds, "
        "thick: mean)",
        fontsize=10,
        beside=legend,
    )
    return fig


def write_plots(report: Report, selected: pd.DataFrame, memory: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Save every figure of a report as a PNG under ``out_dir`` and return the paths."""
    figures = {
        **curve_figures(report, selected),
        **selected_figures(selected),
        **methods_figures(report, selected),
    }
    memory_fig = memory_figure(memory)
    if memory_fig is not None:
        figures["memory.png"] = memory_fig
    figures.update(memory_scaling_figures(report.memory_benchmark))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=DPI)
        written.append(out_dir / name)
    return written
