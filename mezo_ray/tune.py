"""``python -m mezo_ray.tune``: a search space plus overrides -> a Ray Tune experiment.

    python -m mezo_ray.tune --list
    python -m mezo_ray.tune --space demo
    python -m mezo_ray.tune --space roberta_table18 --only k=16 --set task=SST-2 --dry-run
    python -m mezo_ray.tune --space roberta_optuna --search optuna --num-samples 40 --scheduler asha
    ray job submit --address http://127.0.0.1:8265 -- python -m mezo_ray.tune --space demo

Everything is validated before Ray starts. The run ends with the best trials and the paper-format
table (``mezo_ray.report``). ``--resume`` finishes an interrupted experiment: finished trials are
kept, unfinished ones continue from their last checkpoints. Restoring unpickles the experiment's
``tuner.pkl``: resume only experiments you wrote.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from mezo_ray.spaces import SearchSpace, builtin_spaces, expand, load_space, parse_filters, parse_overrides
from mezo_ray.train.cluster import check_address, check_resources, check_storage_visible, local_resources
from mezo_ray.train.config import TrialConfig, flat_default, parse_trial_config

DEFAULT_STORAGE = os.path.expanduser("~/ray_results")
#: What PBT's trials run with: in their own process (Tune hands a trial another's checkpoint there),
#: checkpoints that are the seed log from the base model (an exploit then copies kB and replays it).
PBT_TRIALS = {"num_workers": 0, "snapshot_every": None}
#: Methods PBT evolves: those that train (the others report once and have nothing to take over).
PBT_METHODS = ("mezo", "ft")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mezo_ray.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", help="built-in space name (see --list) or a path to a YAML file")
    p.add_argument("--list", action="store_true", help="list the built-in spaces with their trial counts")
    p.add_argument("--dry-run", action="store_true", help="show the expanded trials; do not start Ray")
    p.add_argument("--json", action="store_true", help="with --dry-run or --list: one JSON object")
    p.add_argument(
        "--show-examples",
        type=int,
        default=0,
        metavar="N",
        help="with --dry-run: N training examples of each task as the model reads them (ids, mask, labels)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a trial field")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=V1[,V2]",
        help="keep only the grid's trials with these values (e.g. k=16), unlike --set, which rewrites all",
    )
    p.add_argument("--search", choices=("grid", "optuna"), default="grid")
    p.add_argument("--num-samples", type=int, default=None, help="optuna trials (default 20); grid repeats")
    p.add_argument(
        "--scheduler",
        choices=("none", "asha", "pbt"),
        default="none",
        help="asha stops bad trials early; pbt lets trials take over better ones' seed logs with a mutated "
        "lr / eps (the space's `pbt:` ranges)",
    )
    p.add_argument("--max-concurrent", type=int, default=None, help="default: what the cluster can hold")
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="times Tune retries a failed trial (a lost node, a killed process) from its last checkpoint",
    )
    p.add_argument("--workers-per-trial", type=int, default=None, help="Ray Train workers (0: in-process)")
    p.add_argument(
        "--gpus-per-trial", type=float, default=None, help="GPUs per trial, split over its workers"
    )
    p.add_argument("--storage-path", default=DEFAULT_STORAGE)
    p.add_argument("--name", default=None, help="experiment name (default: <space>-<time>)")
    p.add_argument("--resume", action="store_true", help="finish the experiment --name (default: latest)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local, or the job's)")
    p.add_argument("--skip-preflight", action="store_true", help="do not check models and data before Ray")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Tune's full tables (every trial's configuration and results) and the trial processes' output",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    # Ray folds log lines that differ only in their numbers into one "[repeated Nx across cluster]",
    # which hides one trial's progress lines behind another's (read when ray is imported; yours wins)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            return list_spaces(args.json)
        if not args.space:
            raise ValueError("--space is required (see --list for the built-in spaces)")
        experiment = plan_experiment(args)
        if args.dry_run:
            print_plan(experiment, args.json)
            if args.show_examples:
                from mezo_ray.train.preflight import show_examples

                shown = {}  # one per task, model and prompt: trials differing in lr read the same inputs
                for cfg in experiment.configs:
                    shown.setdefault((cfg.task.name, cfg.model.name, cfg.task.prompt, cfg.task.family), cfg)
                for cfg in shown.values():
                    print("\n" + show_examples(cfg, args.show_examples))
            return 0
        return run(experiment, args)
    except ValueError as err:  # bad input: say what and stop before any cluster work
        print(f"error: {err}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------------
def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_overrides(args.set)
    if args.workers_per_trial is not None:
        if args.workers_per_trial < 0:
            raise ValueError(f"--workers-per-trial={args.workers_per_trial}: must be >= 0")
        overrides["num_workers"] = args.workers_per_trial
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ValueError(f"--gpus-per-trial={args.gpus_per_trial}: must be >= 0")
    return overrides


@dataclass(frozen=True)
class Experiment:
    """Everything about a search that is known (and checked) before Ray starts.

    ``configs``: every trial of a grid search, or one sample of an Optuna space (for the checks);
    ``param_space``: the Optuna space Tune samples from (None for a grid).
    """

    space: SearchSpace
    search: str
    configs: tuple[TrialConfig, ...]
    num_trials: int
    param_space: dict[str, Any] | None = None
    grid_forward_passes: int | None = None  # the full grid of the space: what a search is measured by
    notes: tuple[str, ...] = ()  # what the command line's choices changed, said before the search

    @property
    def trials(self) -> list[dict[str, Any]]:
        """The grid's trials as Tune takes them (flat, every field): its params.json."""
        return [cfg.to_flat() for cfg in self.configs] if self.search == "grid" else []

    @property
    def resources_per_trial(self) -> dict[str, float]:
        return max((c.resources.total() for c in self.configs), key=lambda r: (r["GPU"], r["CPU"]))

    @property
    def total_forward_passes(self) -> int:
        per_config = sum(c.forward_passes() for c in self.configs)
        return per_config if self.search == "grid" else per_config * self.num_trials


def plan_experiment(args: argparse.Namespace) -> Experiment:
    """The experiment the command line asks for, validated (nothing below validates it again)."""
    space = load_space(args.space)
    overrides = overrides_from(args)
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num-samples={args.num_samples}: must be >= 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ValueError(f"--max-concurrent={args.max_concurrent}: must be >= 1")
    if args.max_failures < 0:
        raise ValueError(f"--max-failures={args.max_failures}: must be >= 0 (0: no retries)")
    if args.scheduler == "pbt":
        return plan_pbt(args, space, overrides)
    if args.search == "grid":
        only = parse_filters(args.only)
        configs = expand(space, overrides, only, args.gpus_per_trial, args.num_samples or 1)
        grid = sum(cfg.forward_passes() for cfg in configs) // (args.num_samples or 1)
        return Experiment(space, "grid", tuple(configs), len(configs), None, grid)
    if args.only:
        raise ValueError(f"--only {args.only}: filters a grid search; with --search optuna use --set")
    param_space = space.optuna_space(overrides)
    if args.gpus_per_trial is not None:
        workers = param_space.get("num_workers", flat_default("num_workers")) or 1
        param_space["gpus_per_worker"] = args.gpus_per_trial / workers
    constants = {k: v for k, v in param_space.items() if not hasattr(v, "sample")}
    example = {**constants, **{k: v.sample() for k, v in param_space.items() if hasattr(v, "sample")}}
    sample = parse_trial_config(example, where=f"space {space.name!r} (optuna sample)")
    grid = sum(cfg.forward_passes() for cfg in expand(space, overrides)) if space.grids else None
    return Experiment(space, "optuna", (sample,), args.num_samples or 20, param_space, grid)


def plan_pbt(args: argparse.Namespace, space: SearchSpace, overrides: dict[str, Any]) -> Experiment:
    """PBT over the grid's training trials, each in its own process with seed-log checkpoints."""
    space.pbt_mutations()  # the space must say what PBT may mutate
    if args.search != "grid":
        raise ValueError("--scheduler pbt evolves the grid's trials as its population; use --search grid")
    for key, value in PBT_TRIALS.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(
                f"--scheduler pbt runs trials with {key}={value} (an exploit hands a trial another's "
                f"checkpoint, which Train workers would not see); got {key}={overrides[key]}"
            )
    configs = expand(space, {**overrides, **PBT_TRIALS}, parse_filters(args.only), args.gpus_per_trial)
    population = tuple(cfg for cfg in configs if cfg.method.name in PBT_METHODS)
    if len(population) < 2:
        raise ValueError(
            f"--scheduler pbt needs at least 2 training trials; the space gives {len(population)}"
        )
    left_out = len(configs) - len(population)
    notes = [
        f"PBT: {len(population)} trials in their own processes, seed-log checkpoints from the base model"
    ]
    if left_out:
        notes.append(f"PBT: {left_out} trial(s) that do not train (zero-shot, ICL, LP) left out")
    grid = sum(cfg.forward_passes() for cfg in population)
    return Experiment(space, "grid", population, len(population), None, grid, tuple(notes))


def print_plan(experiment: Experiment, as_json: bool) -> None:
    space = experiment.space
    summary = {
        "space": space.name,
        "search": experiment.search,
        "num_trials": experiment.num_trials,
        "resources_per_trial": experiment.resources_per_trial,
        "total_forward_passes": experiment.total_forward_passes,
        "metric": space.metric,
        "mode": space.mode,
    }
    trials = experiment.trials
    if as_json:
        summary["trials"] = trials
        if experiment.param_space is not None:
            summary["param_space"] = {k: repr(v) for k, v in experiment.param_space.items()}
        print(json.dumps(summary, default=str))
        return
    for note in experiment.notes:
        print(note)
    for key, value in summary.items():
        print(f"{key}: {value}")
    varying = [k for k in (trials[0] if trials else {}) if len({repr(t[k]) for t in trials}) > 1]
    if trials:
        print("\n" + "  ".join(["#", *varying]))
        for i, t in enumerate(trials):
            print("  ".join([str(i), *(str(t[k]) for k in varying)]))
    else:
        for key, value in (experiment.param_space or {}).items():
            print(f"  {key}: {value}")


def list_spaces(as_json: bool) -> int:
    rows = []
    for name, path in sorted(builtin_spaces().items()):
        space = load_space(path)
        rows.append({"name": name, "trials": len(expand(space)), "description": space.description})
    if as_json:
        print(json.dumps(rows))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['trials']:>6} trials  {r['description']}")
    return 0


# ----------------------------------------------------------------------------------------------------
def run(experiment: Experiment, args: argparse.Namespace) -> int:
    import ray
    from ray import tune

    from mezo_ray.train.checkpoint import retention
    from mezo_ray.train.ray_trial import trial_resources, tune_trainable

    space = experiment.space
    check_address(args.address)
    storage = storage_location(args.storage_path)
    name = experiment_name(args, space, storage)
    if not args.skip_preflight:
        from mezo_ray.train.preflight import preflight

        preflight(experiment.configs)
    remote = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if not remote:  # this machine is the cluster: refuse what it cannot hold before starting Ray
        check_resources(experiment.configs, args.max_concurrent, local_resources())
    connect(args.address, args.verbose)
    check_storage_visible(storage)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    max_concurrent = check_resources(experiment.configs, args.max_concurrent, ray.cluster_resources(), nodes)

    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, storage_path=storage),
        trial_resources,
    )
    path = f"{storage.rstrip('/')}/{name}"
    if args.resume:
        if not tune.Tuner.can_restore(path):
            raise ValueError(f"--resume: no restorable experiment at {path}")
        print(f"Resuming {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(experiment),
            tune_config=tune.TuneConfig(
                metric=space.metric,
                mode=space.mode,
                search_alg=search_algorithm(experiment, max_concurrent),
                scheduler=scheduler(args.scheduler, experiment),
                num_samples=experiment.num_trials,
                reuse_actors=reuse_trial_processes(experiment, args.scheduler),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                # in-process trials' checkpoints
                checkpoint_config=retention(tune.CheckpointConfig, pbt=args.scheduler == "pbt"),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                verbose=2 if args.verbose else 0,
                callbacks=[] if args.verbose else [search_terminal(experiment, args.scheduler)],
            ),
        )
    for note in experiment.notes:
        print(note)
    print(f"Experiment {path}: {experiment.num_trials} trials, up to {max_concurrent} at a time")
    # every trial is a point to evaluate, not a sample of the placeholder space that Tune compares it to
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    results = tuner.fit()
    print_results(results, experiment, path)
    return 0 if not results.errors else 1


def search_terminal(experiment: Experiment, scheduler: str) -> Any:
    """The search's terminal: each trial named by what sets it apart from the others of its method."""
    from ray.tune.search.sample import Domain

    from mezo_ray.terminal import SearchTerminal, shown_keys

    space = experiment.space
    tuned = [k for k, v in (experiment.param_space or {}).items() if isinstance(v, Domain)]
    if scheduler == "pbt":
        tuned += list(space.pbt or {})
    trials = experiment.trials or [cfg.to_flat() for cfg in experiment.configs]
    return SearchTerminal(shown_keys(trials, tuned), space.metric, space.mode)


def reuse_trial_processes(experiment: Experiment, scheduler: str) -> bool:
    """Whether one trial process runs trial after trial (it imports torch and transformers once, not
    once per trial: seconds each). Only for in-process trials run to the end: Tune errors the next trial
    when the process it would reuse is still winding down the last (a Train run shutting down its
    workers, a trial a scheduler stopped; Ray 2.60: "Trainable runner reuse requires reset_config()")."""
    return scheduler == "none" and all(cfg.resources.num_workers == 0 for cfg in experiment.configs)


def connect(address: str | None, verbose: bool = False) -> None:
    """Join the given cluster, the one a ``ray job`` runs in, or start a local one. Unless ``verbose``,
    the trial processes' output stays in their logs (the search prints their progress itself) and
    Ray's start-up notes give way to one line."""
    import ray

    if ray.is_initialized():
        return
    quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
    remote = bool(address or os.environ.get("RAY_ADDRESS"))
    if not remote:  # a Train-worker trial starts five processes at once (trial, controller, worker, two
        # queues); past 4x its start-up concurrency (the CPU count) the raylet warns of runaway fan-out
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
    context = ray.init(address=address, **quiet)  # local: dashboard (if installed) on 127.0.0.1 only
    if not verbose:
        where = f"Ray at {context.address_info['gcs_address']}" if remote else "A local Ray"
        dashboard = f", dashboard http://{context.dashboard_url}" if context.dashboard_url else ""
        print(f"{where}{dashboard}")


def param_space(experiment: Experiment) -> dict[str, Any]:
    if experiment.param_space is not None:
        return experiment.param_space
    return experiment.trials[0]  # placeholders: every trial comes from points_to_evaluate


def search_algorithm(experiment: Experiment, max_concurrent: int) -> Any:
    """The searcher, capped at ``max_concurrent`` running trials. The cap goes on the searcher itself:
    Tune ignores ``TuneConfig(max_concurrent_trials)`` for a ``BasicVariantGenerator`` passed in, and
    uncapped Train trials (0 CPU each to Tune) would all start and starve each other's workers."""
    if experiment.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=0), max_concurrent=max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # a union of grids is a list of exact configs: Tune runs them as given, flat in params.json
    return BasicVariantGenerator(points_to_evaluate=experiment.trials, max_concurrent=max_concurrent)


def scheduler(kind: str, experiment: Experiment) -> Any:
    if kind == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    configs = experiment.configs
    if kind == "pbt":  # a decision at every evaluation (each reports a checkpoint), all trials at once:
        # which trial takes over which then depends on their scores only, not on which reported first
        return PopulationBasedTraining(
            time_attr="step",
            perturbation_interval=min(c.schedule.eval_steps for c in configs),
            hyperparam_mutations=experiment.space.pbt_mutations(),
            synch=True,
        )
    return ASHAScheduler(
        time_attr="step",
        max_t=max(c.schedule.max_steps for c in configs),
        grace_period=max(1, min(c.schedule.eval_steps for c in configs)),
        reduction_factor=3,
    )


def storage_location(path: str) -> str:
    """Where Tune writes: a bucket URI (``s3://``, ``gs://``: every node of a cluster sees it) as
    given, a local or NFS path made absolute, created if missing and refused if it cannot be written."""
    if "://" in path:
        return path
    local = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(local, exist_ok=True)
        with tempfile.TemporaryFile(dir=local):
            pass
    except OSError as err:
        raise ValueError(
            f"--storage-path {path}: cannot write there ({err.strerror or err}); give a folder you can "
            "write to, or a bucket URI (s3://..., gs://...)"
        ) from None
    return local


def results(path: str, metric: str = "best_dev_acc", mode: str = "max") -> Any:
    """Ray's ``ResultGrid`` of an experiment folder, finished or interrupted, where it was written or
    copied to: each trial's config, last metrics, ``metrics_dataframe`` (one row per report), path and
    checkpoint; ``get_best_result()`` ranks by ``metric`` (the shipped spaces' ``best_dev_acc``).
    Read from the folder (Tune's ``ExperimentAnalysis``): no trainable and no Ray cluster needed.
    Tune's experiment state is partly pickled, so, as with ``--resume``, read only folders you trust.
    """
    from ray.tune import ExperimentAnalysis, ResultGrid

    folder = os.path.abspath(os.path.expanduser(path))
    if not glob.glob(os.path.join(folder, "experiment_state-*.json")):
        raise ValueError(f"{path}: not a Tune experiment folder (it has no experiment_state-*.json)")
    return ResultGrid(ExperimentAnalysis(folder, default_metric=metric, default_mode=mode))


def experiment_name(args: argparse.Namespace, space: SearchSpace, storage: str) -> str:
    if args.name:
        return args.name
    if args.resume and "://" in storage:
        raise ValueError(f"--resume on --storage-path {storage}: pass --name, the experiment to resume")
    if args.resume:  # the latest experiment of this space
        found = sorted(glob.glob(os.path.join(storage, f"{space.name}-*")), key=os.path.getmtime)
        if not found:
            raise ValueError(f"--resume: no experiment of space {space.name!r} under {storage}; pass --name")
        return os.path.basename(found[-1])
    return f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def print_results(results: Any, experiment: Experiment, path: str) -> None:
    space = experiment.space
    if results.errors:
        print(f"\n{len(results.errors)} trial(s) errored; see {path}")
    try:
        from mezo_ray.report import render
        from mezo_ray.report.output import as_report
        from mezo_ray.report.select import search_cost

        report = as_report(results)
        print_best_trials(report.trials, space.metric, space.mode)
        print("\n" + render(report).rstrip())
        spent, grid = search_cost(report.trials)["forward_passes"], experiment.grid_forward_passes
        if grid and spent != grid:  # a search that ran the whole grid spent all of it
            print(f"The space's full grid: {grid:,} forward passes; this search spent {spent / grid:.0%}.")
    except ValueError as err:
        print(f"(no report table: {err})")
    print(f"\nResults: {path}\nReport:  python -m mezo_ray.report {path}")


def print_best_trials(trials: Any, metric: str, mode: str, top: int = 10) -> None:
    """The ``top`` trials by the space's metric, a setting the trial's method does not read shown as "-"."""
    if metric not in trials or trials[metric].isna().all():
        return
    columns = [c for c in ("trial_id", "task", "row", "lr", "eps", metric, "test_acc", "step") if c in trials]
    best = trials.sort_values(metric, ascending=mode == "min", na_position="last").head(top)
    table = best[columns].rename(columns={"row": "method"}).to_string(index=False, na_rep="-")
    print("\nBest trials:\n" + table)


if __name__ == "__main__":
    sys.exit(main())
