"""``python -m mezo_ray.report --benchmark FILE.json``: a benchmark's result (``benchmarks/results/``) as
a table with intervals and PNG plots.

- ``time_to_accuracy``: per task, dev accuracy against forward passes (per method, the median over
  seeds of the curve of the lr selected per seed, with the range over seeds as a band) beside the
  forward passes each method needed to reach plain MeZO's final dev score (median, 95% bootstrap
  interval; an arrow where some seeds never reached it within the budget).
- ``search_efficiency``: the forward passes each searcher spent until its best came within 1 point of
  the grid's best, as a fraction of the grid's, with intervals.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, NullFormatter

from mezo_ray.report.intervals import interval_text
from mezo_ray.report.plots import DPI, _figure, _slug, _title

KINDS = ("time_to_accuracy", "search_efficiency")


def read_benchmark(path: str | os.PathLike) -> dict[str, Any]:
    """A benchmark's JSON result; ValueError names a file that is not one."""
    try:
        result = json.loads(Path(path).read_text())
        kind = result["benchmark"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{str(path)!r} is not a result of benchmarks/ ({error!r})") from error
    if kind not in KINDS:
        raise ValueError(f"{str(path)!r}: benchmark {kind!r} has no report; known: {list(KINDS)}")
    return result


def benchmark_markdown(result: dict[str, Any]) -> str:
    """The result's figures as Markdown tables: medians with their 95% bootstrap intervals."""
    machine = result["machine"]
    lines = [
        f"# {result['benchmark']} ({result['date']}, commit {result['commit']})",
        "",
        f"{machine['cpu']}, CPU kernels {machine['cpu_capability']}, torch {machine['torch']}"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else ""),
        f"`{result['command']}`",
    ]
    if result["benchmark"] == "time_to_accuracy":
        for task in result["tasks"].values():
            lines += [
                "",
                f"## {task['model']} on {task['task']}",
                "",
                f"{task['regime']}. Target per seed (MeZO's final dev score): "
                + ", ".join(f"{t:.3f}" for t in task["targets"]),
                "",
                "| method | forward passes to MeZO's final | ratio to MeZO | s / forward (ratio) |",
                "|---|---|---|---|",
            ]
            for method, row in task["methods"].items():
                seconds = f"{row['s_per_forward']:.3g} ({row['time_ratio']:.2f})"
                if math.isnan(row["time_ratio"]):  # --reuse: its runs (or MeZO's) timed on another CPU
                    seconds = "not timed in this run"
                lines.append(
                    f"| {method} | {interval_text(*row['forward_passes'])} | "
                    f"{interval_text(*row['passes_ratio'], digits=2)} | {seconds} |"
                )
            split = [
                f"{a} / {b}: {interval_text(r, lo, hi, 2)}" for a, b, r, lo, hi, sep in task["pairs"] if sep
            ]
            lines += ["", "Separated (the interval of the ratio excludes 1): " + ("; ".join(split) or "none")]
    else:
        lines += [
            "",
            f"## {result['task']['model']} on {result['task']['task']}",
            "",
            f"{result['regime']}. Grid: {result['grid_median']['forward_passes']:,.0f} forward passes.",
            "",
            "| searcher | fraction of the grid to within 1 point | reached | test ×100 |",
            "|---|---|---|---|",
        ]
        for name, row in result["searchers"].items():
            lines.append(
                f"| {name} | {interval_text(*row['fraction_interval'], digits=2)} | {row['reached']:.0%} | "
                f"{100 * row['test']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def benchmark_figures(result: dict[str, Any]) -> dict[str, Figure]:
    """The result's figures, keyed by file name."""
    if result["benchmark"] == "time_to_accuracy":
        return {
            f"{_slug(name)}.png": _time_to_accuracy_figure(task) for name, task in result["tasks"].items()
        }
    return {"searchers.png": _search_figure(result)}


def _colours(names: list[str]) -> dict[str, tuple]:
    palette = colormaps["tab20"].colors if len(names) > 10 else colormaps["tab10"].colors
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _selected_curves(row: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """Per seed, the curve of the lr selected on that seed."""
    by_key = {(run["seed"], run["lr"]): run["curve"] for run in row["runs"]}
    seeds = sorted({run["seed"] for run in row["runs"]})
    return [by_key[(seed, lr)] for seed, lr in zip(seeds, row["best_lr"], strict=True) if by_key[(seed, lr)]]


def _time_to_accuracy_figure(task: dict[str, Any]) -> Figure:
    methods = list(task["methods"])
    colours = _colours(methods)
    fig = _figure(13.0, 6.4)
    curves_ax, cost_ax = fig.subplots(1, 2, width_ratios=(1.5, 1))
    first = min(p for row in task["methods"].values() for run in row["runs"] for p, _ in run["curve"][:1])
    for method in methods:
        curves = _selected_curves(task["methods"][method])
        if not curves:
            continue
        length = min(len(c) for c in curves)  # a diverged run stops early: the seeds' common part
        passes = np.array([p for p, _ in curves[0][:length]])
        scores = 100 * np.array([[s for _, s in c[:length]] for c in curves])
        median = np.median(scores, axis=0)
        curves_ax.plot(passes, median, "o-", color=colours[method], lw=1.8, markersize=2.5, label=method)
        curves_ax.fill_between(
            passes, scores.min(axis=0), scores.max(axis=0), color=colours[method], alpha=0.07
        )
    target = 100 * float(np.median(task["targets"]))
    curves_ax.axhline(target, color="black", lw=1, ls="--", label="MeZO's final (median)")
    budget = max(
        p for row in task["methods"].values() for run in row["runs"] for p, _ in run["curve"] or [(0, 0)]
    )
    log = budget >= 10 * first  # the first evaluations, where methods differ, would crowd a linear axis
    curves_ax.set_xlabel("forward passes" + (" (log scale)" if log else ""))
    if log:
        curves_ax.set_xscale("log")
    curves_ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    curves_ax.set_ylabel("dev accuracy ×100")
    curves_ax.set_title("median over seeds (lr selected per seed); band: range", fontsize=10)
    curves_ax.grid(alpha=0.3)
    fig.legend(*curves_ax.get_legend_handles_labels(), loc="outside lower center", ncols=6, fontsize=8)
    _cost_axes(cost_ax, task, methods, colours, first, budget)
    where = f"{_short(task['model'])} on {_short(task['task'])}"
    _title(fig, f"{where}: forward passes to plain MeZO's final dev score", 11)
    return fig


def _short(name: str) -> str:
    """A model or task as its folder's name ("all-MiniLM-L6-v2", "vader-snippets/task.yaml")."""
    if "/" not in name:
        return name
    path = Path(name)
    return f"{path.parent.name}/{path.name}" if path.suffix in (".yaml", ".yml") else path.name


def _cost_axes(
    ax: Any, task: dict[str, Any], methods: list[str], colours: dict, first: float, budget: float
) -> None:
    """Median forward passes to the target with its 95% interval on a log axis from the first
    evaluation to the budget; beyond the budget: an arrow."""
    edge = budget * 1.25
    for y, method in enumerate(reversed(methods)):
        value, low, high = task["methods"][method]["forward_passes"]
        colour = colours[method]
        shown = min(value, edge)
        ax.plot([low, min(high, edge)], [y, y], color=colour, lw=2.5)
        if math.isinf(high):
            ax.annotate(
                "",
                xy=(edge, y),
                xytext=(min(low, budget), y),
                arrowprops={"arrowstyle": "->", "color": colour},
            )
        ax.plot(
            [shown],
            [y],
            "o",
            color=colour,
            markersize=7,
            markerfacecolor="white" if math.isinf(value) else colour,
        )
        ratio, r_low, r_high = task["methods"][method]["passes_ratio"]
        text = (
            "not reached"
            if math.isinf(value)
            else f"×{ratio:.2f}" + ("" if r_low != r_low else f" [{r_low:.2f}, {r_high:.2f}]")
        )
        ax.text(edge * 1.08, y, text, va="center", fontsize=8)
    ax.axvline(budget, color="grey", lw=1, ls=":")
    ax.set_yticks(range(len(methods)), list(reversed(methods)), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlim(first / 1.3, edge * 5)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("forward passes (log scale; dotted: the budget)")
    ax.set_title("median, 95% bootstrap interval; ratio to MeZO", fontsize=10)
    ax.grid(alpha=0.3, axis="x")


def _search_figure(result: dict[str, Any]) -> Figure:
    names = list(result["searchers"])
    colours = _colours(names)
    fig = _figure(9.0, 1.6 + 0.55 * len(names))
    ax = fig.subplots()
    for y, name in enumerate(reversed(names)):
        value, low, high = result["searchers"][name]["fraction_interval"]
        edge = 1.1
        ax.plot([low, min(high, edge)], [y, y], color=colours[name], lw=2.5)
        ax.plot([min(value, edge)], [y], "o", color=colours[name], markersize=7)
        if math.isinf(high):
            ax.annotate(
                "", xy=(edge, y), xytext=(low, y), arrowprops={"arrowstyle": "->", "color": colours[name]}
            )
            ax.text(edge + 0.01, y, "not reached\nin some\nresamples", va="center", fontsize=7)
    ax.axvline(1 / 3, color="black", lw=1, ls="--", label="1/3 of the grid\n(the target)")
    ax.set_yticks(range(len(names)), list(reversed(names)), fontsize=9)
    ax.set_ylim(-0.5, len(names) - 0.5)
    ax.set_xlim(0, 1.25)
    ax.set_xlabel("forward passes until within 1 point of the grid's best, as a fraction of the grid's")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    where = f"{_short(result['task']['model'])} on {_short(result['task']['task'])}"
    _title(fig, f"{where}: median, 95% bootstrap interval", 10)
    return fig


def write_benchmark_plots(result: dict[str, Any], out_dir: str | os.PathLike, prefix: str) -> list[Path]:
    """Saves ``benchmark_figures`` under ``out_dir`` as ``PREFIX_NAME.png`` and returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in benchmark_figures(result).items():
        path = out / f"{prefix}_{name}"
        fig.savefig(path, dpi=DPI)
        written.append(path)
    return written
