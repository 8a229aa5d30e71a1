"""Forward passes to MeZO's accuracy: each estimator and variant against plain MeZO, in the same run.

    make bench-data && python benchmarks/time_to_accuracy.py    # the real pair (bench_data.py), CPU
    python benchmarks/time_to_accuracy.py --model PATH --task FILE.yaml   # your model and task
    python benchmarks/time_to_accuracy.py --tasks tiny-mlm tiny-causal     # the tiny offline models
    python benchmarks/time_to_accuracy.py --quick                          # the smoke version
    python -m mezo_ray.report --benchmark benchmarks/results/time_to_accuracy-....json   # table, plots

Every run evaluates dev every ``--eval-passes`` forward passes (eval_steps = that / the method's
forward passes per step), so methods with cheap and expensive steps are seen at the same cost. A run's
curve is smoothed by the mean of ``--smooth`` consecutive evaluations (one lucky evaluation of a small
dev set is not a level reached). Seed i is the paper's data seed i (13, 21, 42, 87, 100) with training
seed i. For each task and seed, the target is plain MeZO's final smoothed dev score at its best lr; a
method's cost on that seed is the fewest forward passes after which one of its lrs' smoothed curves
first reached the target (inf: never within the budget). Per method: the median cost over seeds with
a 95% bootstrap interval, its ratio to MeZO's with a paired interval, every pair of methods separated
or not (``mezo_ray.report.intervals``), and the wall time per training forward pass as a ratio to
MeZO's. (Memory: ``zo_step.py`` measures a step's peak.) Every run writes its JSON, curves and each
run's trial settings included, to ``--results`` (``benchmarks/results/``) with the date, commit, machine
and command. ``--reuse FILE.json`` takes from an earlier result every run whose trial settings are a
job's here, to the key (MeZO's baseline runs, say, when another method is added to a ranking): it is
not rerun, and the JSON marks it ``reused_from``; its seconds per pass count where timed on this CPU.

The trials are the recipe's (``mezo_ray.train.recipe.run_trial``), in this process or ``--jobs``
worker processes, no Ray: the numbers are what a search would see. The lr grids (``METHODS``) are
calibrated on dev, never on test: each is a decade around the lr its method trains at (the JSON's
``best_lr`` says which point each seed selected; one at a grid's edge says the grid is not centred).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_data import lr_scale, pair_settings, regime
from machine import describe, header, save_result

from mezo_ray.report import intervals
from mezo_ray.train.config import parse_trial_config
from mezo_ray.train.recipe import run_trial
from mezo_ray.train.session import LocalSession
from mezo_ray.zo import NonFiniteLossError

DEV = 256
TASKS = {
    "tiny-mlm": {"model": "tiny-mlm", "task": "synthetic-sst2", "k": DEV // 2},  # k per class: dev 256
    "tiny-causal": {
        "model": "tiny-causal",
        "task": "synthetic-sst2-causal",
        "num_train": 256,
        "num_dev": DEV,
    },
}
PAPER_DATA_SEEDS = (13, 21, 42, 87, 100)
#: MeZO's grid on the tiny models (tiny-v2) and MiniLM, 1/3 of it on a causal LM's prompt (the default
#: pair, SmolLM2-135M: ``bench_data.lr_scale``): on the tiny MLM (dev, seeds 13 and 21) lr 1e-4 climbs
#: from 0.61 to 0.86 in 260 forward passes, 3e-4 in 40, 1e-3 is there at once and then falls to 0.75;
#: on all-MiniLM-L6-v2 (every weight trained, ``prompt: false``) MeZO diverges at once at 1e-2 and by
#: step 700 at 1e-3. The other grids are this one moved by each method's step size (below).
MEZO_LRS = (1e-4, 3e-4, 1e-3)
RESULTS = Path(__file__).resolve().parent / "results"
#: ``--quick``: the smoke version, minutes on the pair with 2 cores (options given after it win).
QUICK = (
    "--budget 40 --eval-passes 20 --smooth 1 --seeds 2 --lr-points 1 --dev 64 --methods MeZO FZOO --jobs 2"
)
#: method -> (trial settings, lr grid).
METHODS: dict[str, tuple[dict[str, Any], tuple[float, ...]]] = {
    "MeZO": ({}, MEZO_LRS),
    # its step is normalised; moved up a decade (2026-12-07) where the tiny MLM selected its top edge on 4
    # of 5 seeds and, on the pair, dev (seed 13, batch 4, 270 passes) climbed fastest at 3.3e-3: 0.69 at
    # 180 passes, against 0.51 at 1e-3, 0.50 at 3.3e-4, and 0.60 with loss 0.66 (not 0.60) at 1e-2
    "FZOO": ({"estimator": "fzoo", "n_probes": 8}, (3e-3, 1e-2, 3e-2)),
    "HiZOO": ({"estimator": "hizoo", "hessian_smooth": 1e-8}, MEZO_LRS),
    "LOZO": ({"estimator": "lozo", "lozo_rank": 4, "lozo_interval": 100}, (3e-5, 1e-4, 3e-4)),
    "LOZO-M": (
        {"estimator": "lozo", "lozo_rank": 4, "lozo_interval": 100, "lozo_momentum": 0.9},
        (3e-5, 1e-4, 3e-4),
    ),
    # 2026's estimators: first MeZO's grid moved by the ratio of each paper's lr to MeZO's
    # (search_spaces/zo_methods.yaml cites them); then, where dev selected a grid's top edge on the tiny
    # MLM (2026-12-07: BSZO flat at 1e-5..1e-4, Sparse MeZO, Population, layer-wise and FZOO still
    # rising at their top), moved up
    "AdaMeZO": ({"estimator": "adamezo", "adamezo_window": 10}, (1e-5, 3e-5, 1e-4)),
    "BSZO": ({"estimator": "bszo", "bszo_one_sided": True, "eps": 1e-4}, (1e-4, 1e-3, 1e-2)),
    # moved down a decade (2026-12-07): on the pair (seed 13, batch 16, 256 dev, 100 passes) dev reached
    # 0.62 / 0.66 at 50 / 100 passes with lr 3.3e-4, 0.49 / 0.59 with 1e-3 (the old grid's bottom)
    "Sparse MeZO": ({"estimator": "sparse_mezo"}, (3e-4, 1e-3, 3e-3)),
    "MeZO-GV": ({"estimator": "mezo_gv"}, MEZO_LRS),
    "Population": ({"estimator": "population", "population_members": 8}, (1e-3, 3e-3, 1e-2)),
    "LP-MeZO": ({"lp_init": True}, MEZO_LRS),
    "MeZO param-norm": ({"perturbation_scale": "param_norm", "recompute_norms": True}, MEZO_LRS),
    "MeZO grad-norm": ({"perturbation_scale": "grad_norm", "recompute_norms": True}, MEZO_LRS),
    "MeZO layer-wise": ({"layer_wise": True}, (1e-3, 3e-3, 1e-2)),
}


def curve(settings: dict[str, Any]) -> tuple[list[tuple[int, float]], float]:
    """(forward passes, dev score) at every evaluation, and seconds per training forward pass."""
    import torch

    torch.set_num_threads(1)  # one core per run: --jobs runs side by side without contention
    cfg = parse_trial_config(settings)
    with tempfile.TemporaryDirectory() as directory:
        session = LocalSession(directory)
        start = time.perf_counter()
        with contextlib.suppress(NonFiniteLossError):  # diverged (lr too large): its evaluations count
            run_trial(cfg, session)
        elapsed = time.perf_counter() - start
    evals = [r for r in session.reports if not r.get("done") and "dev_acc" in r and "failure" not in r]
    if not evals:
        return [], math.nan
    passes = max(r["forward_passes"] for r in evals)
    rates = [r["steps_per_s"] for r in evals if r.get("steps_per_s")]
    per_step = passes / max(r["step"] for r in evals)
    seconds = 1 / (statistics.median(rates) * per_step) if rates else elapsed / passes
    return [(r["forward_passes"], r["dev_acc"]) for r in evals], seconds


def smoothed(points: list[tuple[int, float]], width: int) -> list[tuple[int, float]]:
    """The mean of each ``width`` consecutive evaluations, at the forward passes of the last."""
    return [
        (points[i][0], statistics.fmean(score for _, score in points[i - width + 1 : i + 1]))
        for i in range(width - 1, len(points))
    ]


def first_reach(points: list[tuple[int, float]], target: float) -> float:
    return next((float(passes) for passes, score in points if score >= target - 1e-12), math.inf)


def settings_of(args: argparse.Namespace, task: dict, extra: dict, lr: float, seed: int) -> dict[str, Any]:
    settings = {
        "max_eval_examples": DEV,
        "eps": 1e-3,
        **task,
        **extra,
        "method": "mezo",
        "lr": lr,
        "data_seed": data_seed(seed),
        "seed": seed,
        "batch_size": args.batch_size,
        "max_steps": args.budget,
        "num_workers": 0,
        "selection": "final",
        "snapshot_every": None,
    }
    per_step = parse_trial_config({**settings, "eval_steps": 1}).forward_passes() / args.budget
    return {
        **settings,
        "max_forward_passes": args.budget,
        "eval_steps": max(1, round(args.eval_passes / per_step)),
    }


def data_seed(seed: int) -> int:
    """The paper's data seeds (13, 21, 42, 87, 100) first; the training seed is the run's index."""
    return PAPER_DATA_SEEDS[seed] if seed < len(PAPER_DATA_SEEDS) else 13 + seed


def lr_grid(args: argparse.Namespace, lrs: tuple[float, ...], task: dict[str, Any]) -> tuple[float, ...]:
    """The method's grid scaled by ``--lr-scale``, by default the task's regime's (``bench_data.lr_scale``:
    1/3 for a causal LM's prompt); ``--lr-points 1``: its middle point only."""
    scale = args.lr_scale if args.lr_scale is not None else lr_scale(task)
    scaled = tuple(lr * scale for lr in lrs)
    return scaled[len(scaled) // 2 : len(scaled) // 2 + 1] if args.lr_points == 1 else scaled


def run_key(settings: dict[str, Any]) -> str:
    """A trial's settings as one string: equal strings, the same run (JSON turns tuples into lists)."""
    return json.dumps(settings, sort_keys=True)


def reusable_runs(path: Path) -> dict[str, dict[str, Any]]:
    """An earlier result's runs by their trial settings. A run written before runs kept their settings
    has them rebuilt from the result's options, task and the method's ``METHODS`` entry of today. Its
    seconds per pass count only where that result was measured on this machine's CPU model and kernels
    (else they are kept as ``s_per_forward_elsewhere``: another CPU's seconds are not a ratio's)."""
    old = json.loads(path.read_text())
    if old.get("benchmark") != "time_to_accuracy":
        raise SystemExit(f"--reuse {path}: not a result of benchmarks/time_to_accuracy.py")
    options = argparse.Namespace(**old["settings"])
    here = {key: describe()[key] for key in ("cpu", "cpu_cores", "cpu_capability", "torch")}
    timed_here = all(old["machine"].get(key) == value for key, value in here.items())
    found = {}
    for rows in old["tasks"].values():
        for method, row in rows["methods"].items():
            for run in row["runs"]:
                settings = run.get("settings") or settings_of(
                    options, rows["settings"], METHODS[method][0], run["lr"], run["seed"]
                )
                origin = run.get("reused_from", f"{path.name} (commit {old['commit'][:12]})")
                found[run_key(settings)] = {**run, "settings": settings, "reused_from": origin}
                if not timed_here and run["s_per_forward"] == run["s_per_forward"]:
                    found[run_key(settings)] |= {
                        "s_per_forward": math.nan,
                        "s_per_forward_elsewhere": run["s_per_forward"],
                    }
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    jobs = []  # (task, method, seed, settings)
    for task_name in args.tasks:
        for method in ("MeZO", *[m for m in args.methods if m != "MeZO"]):
            extra, lrs = METHODS[method]
            task = TASKS[task_name]
            if "lp_init" in extra and not (task.get("prompt", True) and "k" in task):
                continue  # LP-MeZO writes a probe into masked-LM label words
            for seed in range(args.seeds):
                for lr in lr_grid(args, lrs, task):
                    jobs.append((task_name, method, seed, settings_of(args, task, extra, lr, seed)))
    reused = reusable_runs(args.reuse) if args.reuse else {}
    todo = [settings for *_, settings in jobs if run_key(settings) not in reused]
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        measured = dict(zip(map(run_key, todo), pool.map(curve, todo), strict=True))
    runs: dict[str, dict[str, dict[int, list]]] = {}
    for task_name, method, seed, settings in jobs:
        key = run_key(settings)
        if key in reused:
            run = reused[key]
        else:
            points, seconds = measured[key]
            run = {"seed": seed, "lr": settings["lr"], "curve": points, "s_per_forward": seconds}
        run |= {"settings": settings}
        runs.setdefault(task_name, {}).setdefault(method, {}).setdefault(seed, []).append(run)
    return {
        task_name: rank(by_method, args.smooth) | describe_task(TASKS[task_name])
        for task_name, by_method in runs.items()
    }


def final_score(run: dict[str, Any], width: int) -> float:
    points = smoothed(run["curve"], width)
    return points[-1][1] if points else -math.inf


def rank(by_method: dict[str, dict[int, list]], width: int) -> dict[str, Any]:
    """Per seed, the target is plain MeZO's final dev score (smoothed) at its best lr; a method's cost
    on that seed is the fewest forward passes after which one of its lrs' smoothed curves reached it.
    Medians over seeds with 95% bootstrap intervals, ratios to MeZO paired by seed, and every pair of
    methods with the interval of its ratio."""
    seeds = sorted(by_method["MeZO"])
    targets = [max(final_score(run, width) for run in by_method["MeZO"][seed]) for seed in seeds]
    methods: dict[str, Any] = {}
    costs: dict[str, list[float]] = {}
    for method, by_seed in by_method.items():
        costs[method], best_lrs = [], []
        for seed, target in zip(seeds, targets, strict=True):
            reach = []
            for run in by_seed[seed]:
                points = smoothed(run["curve"], width)
                final = points[-1][1] if points else -math.inf
                reach.append((first_reach(points, target), -final, run["lr"]))
            cost, _, lr = min(reach)  # the cheapest lr; on a tie, the higher final score
            costs[method].append(cost)
            best_lrs.append(lr)
        timed = [
            r["s_per_forward"]
            for rs in by_seed.values()
            for r in rs
            if r["s_per_forward"] == r["s_per_forward"]
        ]
        seconds = statistics.median(timed) if timed else math.nan
        methods[method] = {
            "costs": costs[method],
            "best_lr": best_lrs,
            "forward_passes": intervals.median_interval(costs[method]),
            "passes_ratio": intervals.ratio_interval(costs[method], costs["MeZO"]),
            "s_per_forward": seconds,
            "runs": [r for rs in by_seed.values() for r in rs],
        }
    base = methods["MeZO"]["s_per_forward"]
    for row in methods.values():
        row["time_ratio"] = row["s_per_forward"] / base
    pairs = [
        [a, b, ratio, low, high, intervals.is_separated(low, high)]
        for a, b, ratio, low, high in intervals.separated(costs)
    ]
    return {"seeds": seeds, "targets": targets, "methods": methods, "pairs": pairs}


def describe_task(task: dict[str, Any]) -> dict[str, Any]:
    return {"model": task["model"], "task": task["task"], "regime": regime(task), "settings": task}


def print_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    print(header())
    for rows in results.values():
        targets = ", ".join(f"{t:.3f}" for t in rows["targets"])
        print(f"\n{rows['model']} on {rows['task']}: {rows['regime']}")
        print(f"budget {args.budget} forward passes; {len(rows['seeds'])} seeds; median [95% bootstrap]")
        print(f"MeZO's final dev score (last {args.smooth} evaluations, best lr), per seed: {targets}")
        reused = [
            f"{method} {sum('reused_from' in run for run in row['runs'])} of {len(row['runs'])}"
            for method, row in rows["methods"].items()
            if any("reused_from" in run for run in row["runs"])
        ]
        if reused:
            print(f"runs from {args.reuse} (s/fwd counted if timed on this CPU): {', '.join(reused)}")
        print(f"{'method':<18}{'fwd to MeZO final':>26}{'ratio to MeZO':>24}{'s/fwd ratio':>13}")
        for method, row in rows["methods"].items():
            print(
                f"{method:<18}{intervals.interval_text(*row['forward_passes']):>26}"
                f"{intervals.interval_text(*row['passes_ratio'], digits=2):>24}{row['time_ratio']:>13.2f}"
            )
        split = [
            f"{a} / {b} {intervals.interval_text(r, lo, hi, 2)}"
            for a, b, r, lo, hi, sep in rows["pairs"]
            if sep
        ]
        print("separated (interval of the ratio excludes 1): " + ("; ".join(split) or "none"))
        print(f"not separated: {sum(not p[-1] for p in rows['pairs'])} of {len(rows['pairs'])} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=int, default=4000, help="forward passes per run")
    parser.add_argument("--eval-passes", type=int, default=200, help="forward passes between dev evaluations")
    parser.add_argument("--smooth", type=int, default=3, help="evaluations averaged into one curve point")
    parser.add_argument(
        "--seeds", type=int, default=5, help="runs per method and lr (data and training seed)"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--tasks", nargs="+", default=["pair"], choices=["pair", *TASKS], help="pair: --model with --task"
    )
    parser.add_argument("--dev", type=int, default=512, help="dev examples of the pair (tiny: 256)")
    parser.add_argument("--model", help="a local checkpoint (default: make bench-data's model)")
    parser.add_argument("--task", help="a task YAML (default: make bench-data's vader-snippets)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, one core each")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="examples per forward pass (16: the paper's)"
    )
    parser.add_argument(
        "--lr-scale",
        type=float,
        help="multiplies every method's lr grid (METHODS); default: 1/3 on a causal LM's prompt, else 1",
    )
    parser.add_argument("--lr-points", type=int, choices=(1, 3), default=3, help="1: each grid's middle lr")
    parser.add_argument(
        "--reuse", type=Path, help="an earlier result JSON: its runs with a job's settings are not rerun"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON folder (default {RESULTS})")
    parser.add_argument("--json", action="store_true", help="print the JSON it writes")
    parser.add_argument("--quick", action="store_true", help=f"the smoke version: {QUICK}")
    argv = sys.argv[1:]
    args = parser.parse_args([*QUICK.split(), *argv] if "--quick" in argv else argv)
    if args.budget // args.eval_passes < args.smooth:
        parser.error(
            f"--budget {args.budget} / --eval-passes {args.eval_passes} gives fewer evaluations than "
            f"--smooth {args.smooth} averages: raise the budget or lower --eval-passes / --smooth"
        )
    if "pair" in args.tasks:
        TASKS["pair"] = pair_settings(args.model, args.task, args.dev)
    results = {"tasks": run(args), "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    path = save_result("time_to_accuracy", results, args.results)
    if args.json:
        print(path.read_text())
    else:
        print_results(args, results["tasks"])
    print(f"\nwrote {path}; plots: python -m mezo_ray.report --benchmark {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
