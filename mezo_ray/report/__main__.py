"""``python -m mezo_ray.report EXPERIMENT_DIR [...]``: print the paper-style tables of Tune experiments.

Examples:
    python -m mezo_ray.report ~/ray_results/roberta_mezo ~/ray_results/roberta_ft
    python -m mezo_ray.report results/exp --select dev_loss --format latex
    python -m mezo_ray.report results/exp --out report/   # also writes .md/.tex/.csv/.html, trials, plots
    python -m mezo_ray.report results/exp --format html > report.html   # one file, plots embedded
    python -m mezo_ray.report --benchmark benchmarks/results/time_to_accuracy-....json   # table + PNGs
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mezo_ray.report.formats import FORMATS, footer_markdown
from mezo_ray.report.load import Report, from_experiment_dirs, read_memory_benchmark
from mezo_ray.report.output import render, write_report
from mezo_ray.report.select import SELECTIONS
from mezo_ray.report.tables import footer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(
        prog="python -m mezo_ray.report",
        description="Paper-style tables (Tables 18, 1, 20, 4, 5, 6, 22 or a generic layout) and plots "
        "of Tune runs.",
    )
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT_DIR", help="Tune experiment folder(s)")
    parser.add_argument(
        "--memory-benchmark",
        action="append",
        default=[],
        metavar="JSON",
        help="the output of benchmarks/memory.py --json, rendered as Table 22 beside the paper's numbers "
        "(repeatable; with or without experiment folders)",
    )
    parser.add_argument(
        "--benchmark",
        action="append",
        default=[],
        metavar="JSON",
        help="a result of benchmarks/time_to_accuracy.py or search_efficiency.py (benchmarks/results/): "
        "its table with intervals, and its plots written beside it (or under --out); repeatable",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="markdown",
        help="stdout format (default markdown; html: one self-contained page, plots embedded)",
    )
    parser.add_argument(
        "--select",
        choices=sorted(SELECTIONS),
        default="dev_acc",
        help="per-seed selection rule on each trial's tested checkpoint: highest dev_acc (RoBERTa gather "
        "script, default) or lowest dev_loss (the OPT code's HF Trainer)",
    )
    parser.add_argument(
        "--include-unfinished",
        action="store_true",
        help="let unfinished and errored trials be selected on their last reported values (marked ‡)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="also write every format (report.html: plots embedded), trials.csv, selected.csv and plots",
    )
    parser.add_argument("--no-plots", action="store_true", help="with --out: skip the PNG plots")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 when no experiment folder holds a trial)."""
    args = parse_args(argv)
    if args.benchmark:
        return benchmark_report(args.benchmark, args.out, plots=not args.no_plots)
    if not args.experiments and not args.memory_benchmark:
        print("error: give an EXPERIMENT_DIR or --memory-benchmark / --benchmark JSON", file=sys.stderr)
        return 2
    try:
        report = from_experiment_dirs(args.experiments) if args.experiments else Report.empty()
        if args.memory_benchmark:
            report = dataclasses.replace(
                report, memory_benchmark=read_memory_benchmark(args.memory_benchmark)
            )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(render(report, args.format, args.select, args.include_unfinished))
    if args.format == "csv":  # the CSV holds cells only: the unfinished/errored trials go to stderr
        sys.stderr.write(footer_markdown(footer(report.trials), args.include_unfinished))
    if args.out:
        paths = write_report(report, args.out, args.select, args.include_unfinished, plots=not args.no_plots)
        print(f"wrote {len(paths)} files under {args.out}", file=sys.stderr)
    return 0


def benchmark_report(paths: list[str], out: str | None, plots: bool) -> int:
    """Print each benchmark result's table; write its plots beside it or under ``out``."""
    from mezo_ray.report.benchmark import benchmark_markdown, read_benchmark, write_benchmark_plots

    try:
        results = [(Path(path), read_benchmark(path)) for path in paths]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, result in results:
        sys.stdout.write(benchmark_markdown(result))
        sys.stdout.flush()
        if plots:
            for written in write_benchmark_plots(result, out or path.parent, prefix=path.stem):
                print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
