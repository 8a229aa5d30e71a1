"""Forward passes to MeZO's accuracy: each estimator and variant against plain MeZO, in the same run.

    python benchmarks/time_to_accuracy.py                 # tiny MLM and tiny causal, offline, CPU
    python benchmarks/time_to_accuracy.py --budget 2000 --seeds 3 --json

For each task and data seed, plain MeZO's best dev score within the forward-pass budget (over its lr
grid) is the target. A method's cost on that seed is the fewest forward passes after which any of its
lrs first reaches the target (dev is checked every ``--eval-every`` steps); its figure is the median
over seeds (inf: never reached within the budget), printed with the ratio to MeZO's own. Also the
wall time per training forward pass as a ratio to MeZO's. (Memory: ``zo_step.py`` measures a step's
peak; the stateless estimators here keep no state, ``optimizer_state_multiple`` 0.)

The trials are the recipe's (``mezo_ray.train.recipe.run_trial``) in this process, no Ray: the
numbers are what a search would see.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import time
from typing import Any

from mezo_ray.train.config import parse_trial_config
from mezo_ray.train.recipe import run_trial
from mezo_ray.train.session import LocalSession
from mezo_ray.zo import NonFiniteLossError

TASKS = {
    "tiny-mlm": {"model": "tiny-mlm", "task": "synthetic-sst2", "k": 32},
    "tiny-causal": {"model": "tiny-causal", "task": "synthetic-sst2-causal", "num_train": 256, "num_dev": 64},
}
#: method -> (trial settings, lr grid). MeZO's grid brackets the lr the tiny models train at (1e-3).
METHODS: dict[str, tuple[dict[str, Any], tuple[float, ...]]] = {
    "MeZO": ({}, (3e-4, 1e-3, 3e-3)),
    "FZOO": ({"estimator": "fzoo", "n_probes": 8}, (1e-4, 3e-4, 1e-3)),
    "HiZOO": ({"estimator": "hizoo", "hessian_smooth": 1e-8}, (3e-4, 1e-3, 3e-3)),
    "LP-MeZO": ({"lp_init": True}, (3e-4, 1e-3, 3e-3)),
    "MeZO param-norm": ({"perturbation_scale": "param_norm", "recompute_norms": True}, (3e-4, 1e-3, 3e-3)),
    "MeZO layer-wise": ({"layer_wise": True}, (3e-4, 1e-3, 3e-3)),
}


def curve(settings: dict[str, Any]) -> tuple[list[tuple[int, float]], float]:
    """(forward passes, dev score) at every evaluation, and seconds per training forward pass."""
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


def first_reach(points: list[tuple[int, float]], target: float) -> float:
    return next((float(passes) for passes, score in points if score >= target - 1e-12), math.inf)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task_name, task in TASKS.items():
        runs: dict[str, dict[int, list]] = {}
        for method, (extra, lrs) in METHODS.items():
            if "lp_init" in extra and task_name != "tiny-mlm":
                continue  # LP-MeZO writes a probe into masked-LM label words
            runs[method] = {}
            for seed in range(args.seeds):
                runs[method][seed] = []
                for lr in lrs:
                    settings = {
                        **task,
                        **extra,
                        "method": "mezo",
                        "lr": lr,
                        "eps": 1e-3,
                        "data_seed": 13 + seed,
                        "batch_size": 16,
                        "max_steps": args.budget,
                        "max_forward_passes": args.budget,
                        "eval_steps": args.eval_every,
                        "max_eval_examples": 64,
                        "num_workers": 0,
                        "selection": "final",
                    }
                    runs[method][seed].append(curve(settings))
        rows = {}
        for method, by_seed in runs.items():
            costs = []
            for seed, results in by_seed.items():
                target = max(score for points, _ in runs["MeZO"][seed] for _, score in points)
                costs.append(min(first_reach(points, target) for points, _ in results))
            seconds = statistics.median(s for results in by_seed.values() for _, s in results if s == s)
            rows[method] = {"forward_passes": statistics.median(costs), "s_per_forward": seconds}
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
    parser.add_argument("--budget", type=int, default=1200, help="forward passes per run")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between dev evaluations")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args)
    if args.json:
        print(json.dumps(results, default=str))
        return
    for task_name, rows in results.items():
        print(f"\n{task_name}: budget {args.budget} forward passes, median over {args.seeds} seeds")
        print(f"{'method':<18}{'fwd to MeZO best':>18}{'ratio':>8}{'s/fwd ratio':>13}")
        for method, row in rows.items():
            print(
                f"{method:<18}{row['forward_passes']:>18.0f}{row['passes_ratio']:>8.2f}{row['time_ratio']:>13.2f}"
            )


if __name__ == "__main__":
    main()
