"""Ray wiring: the Tune trainable that runs one trial, on Ray Train workers or in its own process.

In Ray 2.60 (Train V2) Tune runs a function that builds a ``TorchTrainer`` and calls ``fit()``;
``TuneReportCallback`` forwards rank 0's reports to Tune. The Train run is named after the Tune
trial id (``train-<trial id>``) inside the experiment's folder, so a restored experiment finds each
trial's latest checkpoint and a copied experiment folder holds them. With ``num_workers=0`` the
recipe runs in the trial's own process (no worker start-up, about 20 s less per trial: the right
choice for tiny models).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from mezo_ray.train.config import flat_default, parse_trial_config


def tune_trainable(config: dict[str, Any], storage_path: str) -> None:
    """One Tune trial (use it via ``trainable_with_resources``)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from mezo_ray.train.checkpoint import retention
    from mezo_ray.train.session import FAILURE_KEY, RaySession, salvage_train_run

    cfg = parse_trial_config(config)  # the process boundary's check: Tune hands over a dict
    res = cfg.resources
    if res.num_workers == 0:
        import torch

        from mezo_ray.train.recipe import run_trial  # only here: a process driving workers needs no model

        # the threads the trial's CPUs give, whichever Ray worker process hosts it (a reused one may have
        # started with another count): the same matmul reductions, so the same bits, run after run
        torch.set_num_threads(max(1, int(res.cpus_per_worker)))
        run_trial(cfg, RaySession("tune"))
        return
    use_gpu = res.gpus_per_worker > 0
    resources = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})}
    context = ray.tune.get_context()
    name = f"train-{context.get_trial_id()}"
    runs = train_runs_root(storage_path, context.get_experiment_name(), name)
    result = TorchTrainer(
        partial(
            train_worker,
            resume_from=salvage_train_run(runs, name),
            trial=(context.get_experiment_name(), context.get_trial_name()),  # the workers' gauges' labels
        ),
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=res.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=runs,
            callbacks=[TuneReportCallback()],
            checkpoint_config=retention(ray.train.CheckpointConfig),
            failure_config=ray.train.FailureConfig(max_failures=res.max_worker_failures),
            # the terminal: the trial's own lines once each (Train's print patch would repeat them),
            # not Train's INFO line per checkpoint
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    ).fit()
    if (result.metrics or {}).get(FAILURE_KEY):  # the workers stopped on purpose: fail the trial, once
        from mezo_ray.zo import NonFiniteLossError

        raise NonFiniteLossError(result.metrics[FAILURE_KEY])


def train_runs_root(storage_path: str, experiment: str, name: str) -> str:
    """Where a trial's Train run lives: the experiment's folder; the storage root (where earlier versions
    wrote Train runs) only when the run is there and not in the experiment, so an experiment begun by
    an earlier version resumes from its checkpoints."""
    from pyarrow.fs import FileSystem, FileType

    fs, root = FileSystem.from_uri(storage_path)
    old = fs.get_file_info(f"{root.rstrip('/')}/{name}").type == FileType.Directory
    new = fs.get_file_info(f"{root.rstrip('/')}/{experiment}/{name}").type == FileType.Directory
    return storage_path if old and not new else f"{storage_path.rstrip('/')}/{experiment}"


def train_worker(
    config: dict[str, Any], resume_from: str | None = None, trial: tuple[str, str] | None = None
) -> None:
    """The function every Ray Train worker runs; ``resume_from``: the checkpoint to start from when
    Train has none (a run salvaged after a kill); ``trial``: the Tune experiment and trial name, which
    the workers cannot read themselves, for rank 0's gauges (``mezo_ray.train.dashboard``). Non-finite
    losses end it normally (the recipe has reported why): raised, Train would restart the workers from
    the last checkpoint into the same losses, ``max_worker_failures`` times; the trial process raises
    instead."""
    from mezo_ray.train.recipe import run_trial
    from mezo_ray.train.session import RaySession
    from mezo_ray.zo import NonFiniteLossError

    # Train sets the worker's root logger to INFO, where it logs every report by a logger named after
    # its file path (out of LoggingConfig's reach); the trial's own lines are printed, not logged
    logging.getLogger().setLevel(logging.WARNING)
    try:
        run_trial(parse_trial_config(config), RaySession("train", resume_from, trial))
    except NonFiniteLossError:
        return


def trial_resources(config: dict[str, Any]) -> dict[str, float]:
    """What Tune reserves for the trial process itself, read off a trial's config (validated on the
    driver). With Train workers it only waits for them, so it takes no CPU (the workers' own
    placement group holds theirs); alone, it is the worker."""
    num_workers, cpus, gpus = (
        config.get(key, flat_default(key)) for key in ("num_workers", "cpus_per_worker", "gpus_per_worker")
    )
    if num_workers == 0:
        return {"cpu": cpus, "gpu": gpus}
    return {"cpu": 0, "memory": 1}  # Tune refuses an empty request; one byte of memory is none
