"""Forward passes to MeZO's accuracy: each estimator and variant against plain MeZO, in the same run.

    make bench-data && python benchmarks/time_to_accuracy.py    # the real pair (bench_data.py), CPU
    python benchmarks/time_to_accuracy.py --model PATH --task FILE.yaml   # your model and task
    python benchmarks/time_to_accuracy.py --tasks tiny-mlm tiny-causal     # the tiny offline models
    python benchmarks/time_to_accuracy.py --budget 4000 --seeds 3 --jobs 2 --json

Every run evaluates dev every ``--eval-passes`` forward passes (eval_steps = that / the method's
forward passes per step), so methods with cheap and expensive steps are seen at the same cost. A run's
curve is smoothed by the mean of ``--smooth`` consecutive evaluations (one lucky evaluation of a small
dev set is not a level reached). For each task and data seed, the target is plain MeZO's best smoothed
score within the budget over its lr grid; a method's cost on that seed is the fewest forward passes
after which any of its lrs' smoothed curves first reaches the target; its figure is the median over
seeds (inf: never within the budget), printed with the ratio to MeZO's own. Also the wall time per
training forward pass as a ratio to MeZO's. (Memory: ``zo_step.py`` measures a step's peak; the
stateless estimators here keep no state, ``optimizer_state_multiple`` 0.)

The trials are the recipe's (``mezo_ray.train.recipe.run_trial``), in this process or ``--jobs``
worker processes, no Ray: the numbers are what a search would see. The lr grids were calibrated on
these tiny models (a decade around the lr each method trains at), not taken from the papers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import statistics
import tempfile
import time
from typing import Any

from bench_data import pair_settings, regime
from machine import describe, header

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
MEZO_LRS = (1e-3, 3e-3, 1e-2)
#: method -> (trial settings, lr grid). MeZO's grid brackets the lr the tiny models train at (1e-3..3e-3).
METHODS: dict[str, tuple[dict[str, Any], tuple[float, ...]]] = {
    "MeZO": ({}, MEZO_LRS),
    "FZOO": ({"estimator": "fzoo", "n_probes": 8}, (3e-3, 1e-2, 3e-2)),  # its step is normalised
    "HiZOO": ({"estimator": "hizoo", "hessian_smooth": 1e-8}, MEZO_LRS),
    "LOZO": ({"estimator": "lozo", "lozo_rank": 4, "lozo_interval": 100}, (3e-4, 1e-3, 3e-3)),
    "LOZO-M": (
        {"estimator": "lozo", "lozo_rank": 4, "lozo_interval": 100, "lozo_momentum": 0.9},
        (3e-4, 1e-3, 3e-3),
    ),
    # 2026's estimators: not calibrated yet; MeZO's grid moved by the ratio of each paper's lr to MeZO's
    # (search_spaces/zo_methods.yaml cites them): AdaMeZO and BSZO a tenth, Sparse MeZO larger
    "AdaMeZO": ({"estimator": "adamezo", "adamezo_window": 10}, (1e-4, 3e-4, 1e-3)),
    "BSZO": ({"estimator": "bszo", "bszo_one_sided": True, "eps": 1e-4}, (1e-4, 3e-4, 1e-3)),
    "Sparse MeZO": ({"estimator": "sparse_mezo"}, (3e-3, 1e-2, 3e-2)),
    "MeZO-GV": ({"estimator": "mezo_gv"}, MEZO_LRS),
    "Population": ({"estimator": "population", "population_members": 8}, MEZO_LRS),
    "LP-MeZO": ({"lp_init": True}, MEZO_LRS),
    "MeZO param-norm": ({"perturbation_scale": "param_norm", "recompute_norms": True}, MEZO_LRS),
    "MeZO grad-norm": ({"perturbation_scale": "grad_norm", "recompute_norms": True}, MEZO_LRS),
    "MeZO layer-wise": ({"layer_wise": True}, MEZO_LRS),
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
        "data_seed": 13 + seed,
        "batch_size": 16,
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    jobs = []  # (task, method, seed, settings)
    for task_name in args.tasks:
        for method in ("MeZO", *[m for m in args.methods if m != "MeZO"]):
            extra, lrs = METHODS[method]
            task = TASKS[task_name]
            if "lp_init" in extra and not (task.get("prompt", True) and "k" in task):
                continue  # LP-MeZO writes a probe into masked-LM label words
            for seed in range(args.seeds):
                for lr in lrs:
                    jobs.append((task_name, method, seed, settings_of(args, task, extra, lr, seed)))
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        curves = list(pool.map(curve, [settings for *_, settings in jobs]))
    runs: dict[str, dict[str, dict[int, list]]] = {}
    for (task_name, method, seed, _), result in zip(jobs, curves, strict=True):
        runs.setdefault(task_name, {}).setdefault(method, {}).setdefault(seed, []).append(result)
    out: dict[str, Any] = {}
    for task_name, by_method in runs.items():
        rows = {}
        for method, by_seed in by_method.items():
            costs, targets = [], []
            for seed, results in by_seed.items():
                target = max(
                    s for points, _ in by_method["MeZO"][seed] for _, s in smoothed(points, args.smooth)
                )
                targets.append(target)
                costs.append(min(first_reach(smoothed(points, args.smooth), target) for points, _ in results))
            seconds = statistics.median(s for results in by_seed.values() for _, s in results if s == s)
            rows[method] = {"forward_passes": statistics.median(costs), "s_per_forward": seconds}
            rows[method]["per_seed"] = costs
            if method == "MeZO":
                rows[method]["targets"] = targets
        base = rows["MeZO"]
        for row in rows.values():
            row["passes_ratio"] = row["forward_passes"] / base["forward_passes"]
            row["time_ratio"] = row["s_per_forward"] / base["s_per_forward"]
        out[task_name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=int, default=4000, help="forward passes per run")
    parser.add_argument("--eval-passes", type=int, default=200, help="forward passes between dev evaluations")
    parser.add_argument("--smooth", type=int, default=3, help="evaluations averaged into one curve point")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--tasks", nargs="+", default=["pair"], choices=["pair", *TASKS], help="pair: --model with --task"
    )
    parser.add_argument("--dev", type=int, default=512, help="dev examples of the pair (tiny: 256)")
    parser.add_argument("--model", help="a local checkpoint (default: make bench-data's model)")
    parser.add_argument("--task", help="a task YAML (default: make bench-data's vader-snippets)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, one core each")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.budget // args.eval_passes < args.smooth:
        parser.error(
            f"--budget {args.budget} / --eval-passes {args.eval_passes} gives fewer evaluations than "
            f"--smooth {args.smooth} averages: raise the budget or lower --eval-passes / --smooth"
        )
    if "pair" in args.tasks:
        TASKS["pair"] = pair_settings(args.model, args.task, args.dev)
    results = run(args)
    if args.json:
        results = {"machine": describe(), **results}
        print(json.dumps(results, default=str))
        return
    print(header())
    for task_name, rows in results.items():
        targets = ", ".join(f"{t:.3f}" for t in rows["MeZO"]["targets"])
        task = TASKS[task_name]
        print(f"\n{task['model']} on {task['task']}: {regime(task)}")
        print(f"budget {args.budget} forward passes, median over {args.seeds} seeds")
        print(f"MeZO's best dev score (mean of {args.smooth} evaluations) per seed: {targets}")
        print(f"{'method':<18}{'fwd to MeZO best':>18}{'ratio':>8}{'s/fwd ratio':>13}")
        for method, row in rows.items():
            print(
                f"{method:<18}{row['forward_passes']:>18.0f}{row['passes_ratio']:>8.2f}{row['time_ratio']:>13.2f}"
            )


if __name__ == "__main__":
    main()
