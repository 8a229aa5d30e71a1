"""What a search spends to find the full grid's best: Ray Tune's searchers against the grid, same run.

    make bench-data && python benchmarks/search_efficiency.py    # the real pair (bench_data.py), CPU
    python benchmarks/search_efficiency.py --model PATH --task FILE.yaml   # your model and task
    python benchmarks/search_efficiency.py --tiny          # the tiny MLM's synthetic task, offline (~15 min)
    python benchmarks/search_efficiency.py --seeds 3 --reps 3 --jobs 2 --json

The space: MeZO on the task, ``--lrs`` x ``--eps`` (4 x 3 = 12 points by default),
a point that diverges ends where it stopped (non-finite losses), every trial capped at
``--steps`` steps, dev evaluated every ``--eval-steps``. Per data seed:

1. **Grid** (the reference): every point trained to the cap by the recipe (``run_trial``, in this
   process or ``--jobs`` worker processes). Its best dev score (the running best over evaluations,
   what Tune optimises) is the target; its forward passes are the sum over the 12 trials.
2. **ASHA**, **Optuna TPE + ASHA** and **random**: Ray Tune runs them over the grid's recorded curves
   (a trial reports the curve its point produced, evaluation by evaluation, and stops where the
   scheduler says): the searchers' decisions are Ray's own, the training is not redone. Trials run one
   at a time, so "forward passes until within 1 point" counts what had been spent when the running
   best first came within 1 point of the grid's best. ASHA: grace period 2 evaluations, reduction
   factor 3 (rungs at 2, 6 evaluations of 10: a third survive each); Optuna proposes 12 points of the
   same grid (categorical lr, eps). Random: points drawn without replacement, each trained to the cap,
   until it has spent what ASHA spent (the honest baseline for an adaptive searcher of that budget).
3. **PBT**: real training (a new trajectory per exploit), through ``python -m mezo_ray.tune
   --scheduler pbt`` with a population of 4 random points, lr / eps mutated within the grid's values.

For each searcher: forward passes and seconds until its running best is within 1 point of the grid's
best (median over ``--reps`` search seeds, then over data seeds; inf: never), that cost as a fraction
of its data seed's grid with a 95% bootstrap interval over the runs (data seed x search seed), the
fraction of runs that got there, and the test score of its dev-selected point. Every run writes its
JSON to ``--results`` (``benchmarks/results/``; ``python -m mezo_ray.report --benchmark FILE`` plots
it); ``--quick`` is the smoke version. Target (issue 14): some searcher within
1 point at <= 1/3 of the grid's forward passes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_data import lr_scale, pair_settings, regime
from machine import header, save_result

from mezo_ray.report import intervals

TINY = {"model": "tiny-mlm", "task": "synthetic-sst2", "k": 64}
WITHIN = 0.01  # 1 point of accuracy
RESULTS = Path(__file__).resolve().parent / "results"
#: ``--quick``: the smoke version, minutes on the pair with 2 cores (options after it win).
QUICK = "--steps 20 --eval-steps 10 --seeds 1 --reps 2 --eps 1e-3 --dev-examples 64 --no-pbt"
#: The lrs of the space, across decades; times ``bench_data.lr_scale`` (1/3 on a causal LM's prompt).
LRS = (1e-4, 3e-4, 1e-3, 3e-3)


def grid_points(args: argparse.Namespace) -> list[tuple[float, float]]:
    return list(itertools.product(args.lrs, args.eps))


def settings(args: argparse.Namespace, seed: int, lr: float, eps: float) -> dict[str, Any]:
    return {
        **args.pair,
        "batch_size": args.batch_size,
        "method": "mezo",
        "data_seed": 13 + seed,
        "lr": lr,
        "eps": eps,
        "max_steps": args.steps,
        "eval_steps": args.eval_steps,
        "num_workers": 0,
        "snapshot_every": None,
    }


def train_curve(config: dict[str, Any]) -> dict[str, Any]:
    """One grid point trained to the cap: its evaluations (step, forward passes, dev, running best,
    seconds since the start) and its test score."""
    import torch

    from mezo_ray.train.config import parse_trial_config
    from mezo_ray.train.recipe import run_trial
    from mezo_ray.train.session import FAILURE_KEY, LocalSession
    from mezo_ray.zo import NonFiniteLossError

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        session = LocalSession(directory)
        start = time.perf_counter()
        times = []
        report = session.report

        def timed(metrics: dict[str, Any], checkpoint: str | None) -> None:
            times.append(time.perf_counter() - start)
            report(metrics, checkpoint)

        session.report = timed  # type: ignore[method-assign]
        with contextlib.suppress(NonFiniteLossError):  # a diverged point: its curve ends where it stopped
            run_trial(parse_trial_config(config), session)
    evals = [
        (r, t)
        for r, t in zip(session.reports, times, strict=True)
        if not r.get("done") and FAILURE_KEY not in r
    ]
    return {
        "evals": [(r["step"], r["forward_passes"], r["dev_acc"], r["best_dev_acc"], t) for r, t in evals],
        "test": session.reports[-1].get("test_acc", math.nan),
    }


# ----------------------------------------------------------------------------------------------------
# Searchers over the recorded curves
def replay_trainable(config: dict[str, Any]) -> None:
    """A Tune trial that reports the recorded curve of its grid point."""
    from ray import tune

    for step, passes, dev, best, seconds in config["curve"]:
        metrics = {"step": step, "forward_passes": passes, "dev_acc": dev, "best_dev_acc": best}
        tune.report({**metrics, "seconds": seconds, "wall": time.time()})


def tune_search(
    kind: str, curves: dict[tuple[float, float], dict], args: argparse.Namespace, rep: int
) -> list[dict]:
    """The reports Ray Tune's searcher asked for, in the order they came (one trial at a time)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    by_key = {f"{lr:g}/{eps:g}": curve["evals"] for (lr, eps), curve in curves.items()}
    asha = ASHAScheduler(
        time_attr="step", max_t=args.steps, grace_period=2 * args.eval_steps, reduction_factor=3
    )
    if kind == "asha":
        points = list(by_key)
        random.Random(rep).shuffle(points)  # the order trials arrive in is the search's randomness
        search = BasicVariantGenerator(points_to_evaluate=[{"point": p} for p in points], max_concurrent=1)
        space = {"point": points[0]}
        samples = len(points)
    else:  # optuna
        from ray.tune.search.optuna import OptunaSearch

        search = ConcurrencyLimiter(OptunaSearch(seed=rep), max_concurrent=1)
        space = {"point": tune.choice(list(by_key))}
        samples = len(by_key)

    def trainable(config: dict[str, Any]) -> None:
        replay_trainable({"curve": by_key[config["point"]]})

    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="best_dev_acc", mode="max", search_alg=search, scheduler=asha, num_samples=samples
            ),
            run_config=tune.RunConfig(storage_path=storage, name=kind, verbose=0),
        )
        grid = tuner.fit()
        reports = []
        for result in grid:
            frame = result.metrics_dataframe
            for row in frame.to_dict("records"):
                reports.append({**row, "point": result.config["point"]})
    return sorted(reports, key=lambda r: r["wall"])


def summarise(reports: list[dict], target: float, curves: dict, by_key: dict) -> dict[str, Any]:
    """Forward passes and seconds spent until the running best came within 1 point of ``target``,
    and the test score of the point selected on dev."""
    spent, seconds, reached_at, best, chosen, last_passes = 0.0, 0.0, None, -math.inf, None, {}
    for r in reports:
        previous = last_passes.get(r["point"], (0, 0.0))
        spent += r["forward_passes"] - previous[0]
        seconds += r["seconds"] - previous[1]
        last_passes[r["point"]] = (r["forward_passes"], r["seconds"])
        if r["best_dev_acc"] > best:
            best, chosen = r["best_dev_acc"], r["point"]
        if reached_at is None and best >= target - WITHIN - 1e-12:
            reached_at = (spent, seconds)
    return {
        "forward_passes": reached_at[0] if reached_at else math.inf,
        "seconds": reached_at[1] if reached_at else math.inf,
        "reached": reached_at is not None,
        "total_forward_passes": spent,
        "test": by_key[chosen]["test"] if chosen else math.nan,
    }


def random_search(curves: dict, budget: float, rep: int, target: float) -> dict[str, Any]:
    points = list(curves)
    random.Random(1000 + rep).shuffle(points)
    reports = []
    spent = 0.0
    for point in points:
        if spent >= budget:
            break
        for _, passes, _, best, seconds in curves[point]["evals"]:
            reports.append(
                {"point": point, "forward_passes": passes, "best_dev_acc": best, "seconds": seconds}
            )
        spent += curves[point]["evals"][-1][1]
    return summarise(reports, target, curves, curves)


def pbt_search(args: argparse.Namespace, seed: int, rep: int, curves: dict, target: float) -> dict[str, Any]:
    """A real PBT run through the CLI: population of 4 random grid points."""
    from mezo_ray.report import from_experiment_dirs
    from mezo_ray.tune import main

    population = random.Random(2000 + rep).sample(grid_points(args), 4)
    with tempfile.TemporaryDirectory() as directory:
        space = Path(directory) / "pbt.yaml"
        defaults = {k: v for k, v in settings(args, seed, *population[0]).items() if k not in ("lr", "eps")}
        grids = [{"name": f"p{i}", "set": {"lr": lr, "eps": eps}} for i, (lr, eps) in enumerate(population)]
        spec = {
            "description": "pbt",
            "defaults": defaults,
            "grids": grids,
            "pbt": {"lr": list(args.lrs), "eps": list(args.eps)},
        }
        space.write_text(json.dumps(spec))
        with contextlib.redirect_stdout(sys.stderr):
            main(["--space", str(space), "--storage-path", directory, "--name", "pbt", "--scheduler", "pbt"])
        report = from_experiment_dirs(Path(directory) / "pbt")
        history = report.history.merge(report.trials[["trial_id", "test_acc"]], on="trial_id")
    # synchronous PBT moves every trial to the next evaluation before any goes further: by step is by time
    rows = history.dropna(subset=["best_dev_acc"]).sort_values(["step", "trial_id"])
    reports = [
        {
            "point": r.trial_id,
            "forward_passes": r.forward_passes,
            "best_dev_acc": r.best_dev_acc,
            "seconds": 0.0,
        }
        for r in rows.itertuples()
    ]
    tests = {t.trial_id: {"test": t.test_acc} for t in report.trials.itertuples()}
    return summarise(reports, target, curves, tests)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    jobs = [(seed, point) for seed in range(args.seeds) for point in grid_points(args)]
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        trained = list(pool.map(train_curve, [settings(args, seed, *point) for seed, point in jobs]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {"grid": {}, "searchers": {}}
    per_searcher: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        curves = {point: curve for (s, point), curve in zip(jobs, trained, strict=True) if s == seed}
        target = max(curve["evals"][-1][3] for curve in curves.values())
        grid_passes = sum(curve["evals"][-1][1] for curve in curves.values())
        best_point = max(curves, key=lambda p: curves[p]["evals"][-1][3])
        out["grid"][seed] = {
            "best_dev": target,
            "forward_passes": grid_passes,
            "test": curves[best_point]["test"],
        }
        by_key = {f"{lr:g}/{eps:g}": curve for (lr, eps), curve in curves.items()}
        for rep in range(args.reps):
            asha = summarise(tune_search("asha", curves, args, rep), target, curves, by_key)
            optuna = summarise(tune_search("optuna", curves, args, rep), target, curves, by_key)
            rand = random_search(curves, asha["total_forward_passes"], rep, target)
            results = {"ASHA": asha, "Optuna TPE + ASHA": optuna, "random (ASHA's budget)": rand}
            if args.pbt:
                results["PBT (population 4)"] = pbt_search(args, seed, rep, curves, target)
            for name, result in results.items():
                per_searcher.setdefault(name, []).append({**result, "seed": seed, "grid_passes": grid_passes})
    ray.shutdown()
    for name, runs in per_searcher.items():
        passes = statistics.median(r["forward_passes"] for r in runs)
        grid = statistics.median(r["grid_passes"] for r in runs)
        out["searchers"][name] = {
            "forward_passes": passes,
            "fraction_of_grid": passes / grid,
            # per run (data seed x search seed) over its own grid's cost: median, 95% bootstrap interval
            "fraction_interval": intervals.median_interval(
                [r["forward_passes"] / r["grid_passes"] for r in runs]
            ),
            "runs": runs,
            "seconds": statistics.median(r["seconds"] for r in runs),
            "reached": sum(r["reached"] for r in runs) / len(runs),
            "total_forward_passes": statistics.median(r["total_forward_passes"] for r in runs),
            "test": statistics.fmean(r["test"] for r in runs if r["test"] == r["test"]),
        }
    out["grid_median"] = {
        "forward_passes": statistics.median(g["forward_passes"] for g in out["grid"].values()),
        "test": statistics.fmean(g["test"] for g in out["grid"].values()),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=500, help="per-trial step cap")
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3, help="data seeds")
    parser.add_argument("--reps", type=int, default=3, help="search seeds per data seed")
    parser.add_argument(
        "--lrs", type=float, nargs="+", help="default: LRS, 1/3 of them on a causal LM's prompt"
    )
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    parser.add_argument(
        "--batch-size", type=int, default=16, help="examples per forward pass (16: the paper's)"
    )
    parser.add_argument("--dev-examples", type=int, default=512, help="dev examples per evaluation")
    parser.add_argument("--model", help="a local checkpoint (default: make bench-data's model)")
    parser.add_argument("--task", help="a task YAML (default: make bench-data's vader-snippets)")
    parser.add_argument("--tiny", action="store_true", help="the tiny MLM's synthetic task instead")
    parser.add_argument("--jobs", type=int, default=2, help="grid trials side by side, one core each")
    parser.add_argument("--no-pbt", dest="pbt", action="store_false", help="leave out PBT (real training)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON folder (default {RESULTS})")
    parser.add_argument("--json", action="store_true", help="print the JSON it writes")
    parser.add_argument("--quick", action="store_true", help=f"the smoke version: {QUICK}")
    argv = sys.argv[1:]
    args = parser.parse_args([*QUICK.split(), *argv] if "--quick" in argv else argv)
    dev = args.dev_examples
    args.pair = {**TINY, "max_eval_examples": dev} if args.tiny else pair_settings(args.model, args.task, dev)
    args.lrs = args.lrs or [lr * lr_scale(args.pair) for lr in LRS]
    with contextlib.redirect_stdout(sys.stderr):  # the trials' logs; the figures go to stdout
        results = run(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "pair")}
    results = {"task": args.pair, "regime": regime(args.pair), "settings": settings, **results}
    path = save_result("search_efficiency", results, args.results)
    print(f"wrote {path}; plots: python -m mezo_ray.report --benchmark {path}", file=sys.stderr)
    if args.json:
        print(path.read_text())
        return
    print(header())
    print(f"{args.pair['model']} on {args.pair['task']}: {regime(args.pair)}")
    grid = results["grid_median"]
    print(
        f"grid: {len(grid_points(args))} points x {args.steps} steps, {grid['forward_passes']:,.0f} forward "
        f"passes, test {100 * grid['test']:.1f} (median / mean over {args.seeds} data seeds)"
    )
    print(
        f"{'searcher':<26}{'fwd to within 1 pt':>20}{'of grid [95% interval]':>24}{'reached':>9}{'test':>7}"
    )
    for name, row in results["searchers"].items():
        print(
            f"{name:<26}{row['forward_passes']:>20,.0f}"
            f"{intervals.interval_text(*row['fraction_interval'], digits=2):>24}"
            f"{row['reached']:>9.0%}{100 * row['test']:>7.1f}"
        )


if __name__ == "__main__":
    main()
