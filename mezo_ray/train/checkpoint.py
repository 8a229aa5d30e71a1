"""Small, pickle-free trial checkpoints: JSON state + safetensors tensors.

A checkpoint folder holds
- ``state.json`` (rank 0): progress and best-dev bookkeeping, the optimizer's state dict without its
  tensors (hyper-parameters, MeZO's counters), and, with ``checkpoint_mode=seed_log``, MeZO's seed log
  since the weight snapshot it continues from (``progress.snapshot_step``; 0: the base model);
- ``snapshot-rank{r}.safetensors``: the trainable weights and the optimizer's tensors (Adam moments,
  momentum); in seed-log mode only every ``snapshot_every``-th checkpoint has them, the others are
  rebuilt from that snapshot (another checkpoint folder of the same run) and the replayed log;
- ``best-rank{r}.safetensors``: the best-dev trainable weights, when they are not the snapshot and
  cannot be replayed.

``WEIGHTS_STEP`` is the metric Ray's retention ranks checkpoints by: the step of the weights a
checkpoint holds, -1 for a seed log alone. Ray keeps the two best and the latest, so the snapshot a
seed log continues from is never deleted.

Only rank 0 writes the tensors of a replicated (data-parallel) model; with FSDP every rank writes its
own shards (Ray Train merges the workers' folders into one checkpoint).

The recipe calls ``write`` at every evaluation and ``restore`` once, after loading a checkpoint; the
readers of a run's checkpoint folders (finding a snapshot, salvaging a killed run) are in ``session``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from mezo_ray.zo import StepRecord, ZeroOrderOptimizer, local_tensor, replay

if TYPE_CHECKING:
    from mezo_ray.train.config import TrialConfig
    from mezo_ray.train.session import Session

STATE_FILE = "state.json"
WEIGHTS_STEP = "weights_step"
OPTIMIZER_PREFIX = "optimizer/"
PBT_KEEP = 5  # checkpoints kept per trial under PBT


def retention(checkpoint_config: Any, pbt: bool = False) -> Any:
    """Ray's ``CheckpointConfig`` (Train's or Tune's class) keeping the two latest weight snapshots;
    Ray also keeps the latest checkpoint, so the snapshot it continues from is always there. Under
    PBT (seed logs from the base model, kB each): the latest few, so the one another trial is told
    to take over is still there when that trial restarts."""
    if pbt:
        return checkpoint_config(
            num_to_keep=PBT_KEEP, checkpoint_score_attribute="step", checkpoint_score_order="max"
        )
    return checkpoint_config(
        num_to_keep=2, checkpoint_score_attribute=WEIGHTS_STEP, checkpoint_score_order="max"
    )


@dataclass
class Progress:
    """The scalars of a trial that a resumed run continues from."""

    step: int = 0
    snapshot_step: int = 0  # the step of the weight snapshot the seed log continues from (0: base model)
    checkpoints: int = 0
    max_dev_acc: float = float("-inf")  # the running best dev metric (what Tune optimises)
    best_dev_acc: float = float("-inf")  # best_*: the checkpoint kept by the selection rule
    best_dev_loss: float = float("inf")
    best_step: int = 0
    consecutive_nonfinite: int = 0
    nonfinite_steps: int = 0
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    last_metrics: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    fsdp: bool = False


@dataclass
class Checkpoint:
    """What a folder holds, for this rank."""

    progress: Progress
    trajectory: list[StepRecord]
    weights: dict[str, torch.Tensor] | None  # trainable weights at ``progress.step`` (None: seed log)
    best: dict[str, torch.Tensor] | None  # best-dev trainable weights
    optimizer: dict[str, Any] | None  # a torch optimizer state dict, ready for load_state_dict


def save(
    directory: str,
    progress: Progress,
    trajectory: list[StepRecord],
    weights: dict[str, torch.Tensor] | None,
    best: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any] | None,
    rank: int,
    writes_tensors: bool,
) -> None:
    """Write this rank's part of a checkpoint into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    tensors, optimizer_json = _split(optimizer) if optimizer is not None else ({}, None)
    if rank == 0:
        state = {
            "progress": asdict(progress),
            "trajectory": [r.to_dict() for r in trajectory],
            "optimizer": optimizer_json,
        }
        with open(os.path.join(directory, STATE_FILE), "w") as f:
            json.dump(state, f)
    if not writes_tensors:
        return
    for kind, named in (("snapshot", weights), ("best", best)):
        if named is not None:
            payload = {**named, **tensors} if kind == "snapshot" else named
            contiguous = {k: local_tensor(v).detach().contiguous().cpu() for k, v in payload.items()}
            save_file(contiguous, os.path.join(directory, f"{kind}-rank{rank}.safetensors"))


def load(directory: str | None, rank: int) -> Checkpoint | None:
    """This rank's view of a checkpoint folder, or None when there is none."""
    if directory is None or not os.path.exists(os.path.join(directory, STATE_FILE)):
        return None
    with open(os.path.join(directory, STATE_FILE)) as f:
        state = json.load(f)
    progress = Progress(**state["progress"])
    shard = rank if progress.fsdp else 0
    snapshot = _tensors(directory, "snapshot", shard)
    weights = {k: v for k, v in snapshot.items() if not k.startswith(OPTIMIZER_PREFIX)} if snapshot else None
    best = _tensors(directory, "best", shard)
    if best is None and weights is not None and progress.best_step == progress.step:
        best = weights
    optimizer = _join(state["optimizer"], snapshot or {}) if state["optimizer"] is not None else None
    return Checkpoint(
        progress, [StepRecord.from_dict(r) for r in state["trajectory"]], weights, best, optimizer
    )


def copy_into(named: list[tuple[str, torch.Tensor]], tensors: dict[str, torch.Tensor], what: str) -> None:
    """Copy saved tensors into the (local shards of the) named parameters, checking names and shapes."""
    missing = [n for n, _ in named if n not in tensors]
    if missing:
        raise ValueError(f"checkpoint {what} lacks parameters {missing[:5]}; was it saved by another config?")
    with torch.no_grad():
        for name, p in named:
            local = local_tensor(p)
            if tuple(local.shape) != tuple(tensors[name].shape):
                raise ValueError(
                    f"checkpoint {what}: {name} has shape {tuple(tensors[name].shape)}, "
                    f"the model's is {tuple(local.shape)} (a different world size with FSDP?)"
                )
            local.copy_(tensors[name])


def _split(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer state dict -> (its tensors, keyed optimizer/<param>/<key>; the rest, JSON)."""
    tensors, scalars = {}, {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {**{k: v for k, v in state_dict.items() if k != "state"}, "state_scalars": scalars}


def _join(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in json_part["state_scalars"].items()}
    for name, value in tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            index, key = name[len(OPTIMIZER_PREFIX) :].split("/", 1)
            state.setdefault(int(index), {})[key] = value
    rest = {k: v for k, v in json_part.items() if k != "state_scalars"}
    return {**rest, "state": state}


def _tensors(directory: str, kind: str, rank: int) -> dict[str, torch.Tensor] | None:
    path = os.path.join(directory, f"{kind}-rank{rank}.safetensors")
    return load_file(path) if os.path.exists(path) else None


def restore(
    resumed: Checkpoint | None,
    session: Session,
    params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    selection: str,
    after_step: Callable[[int], None],
) -> tuple[Progress, dict[str, torch.Tensor] | None]:
    """Bring the weights and optimizer to a resumed checkpoint: its weight snapshot (in it, in another
    folder of the run, or the base model already loaded), then a replay of the seed log since it, bit
    for bit (``after_step(step)`` after each replayed step, as after each trained one). Returns the
    progress to continue from and the selected (best-dev) weights, where kept."""
    if resumed is None:
        return Progress(), None
    progress, best = resumed.progress, resumed.best
    snapshot = resumed
    if resumed.weights is None and progress.snapshot_step > 0:
        with session.snapshot_checkpoint(progress.snapshot_step) as directory:
            snapshot = load(directory, session.rank)
        best = snapshot.best if progress.best_step <= progress.snapshot_step else None
    if snapshot.weights is not None:
        copy_into(params, snapshot.weights, "weights")
        optimizer.load_state_dict(snapshot.optimizer)

    def replayed(record: StepRecord) -> None:
        nonlocal best
        after_step(record.step + 1)
        if record.step + 1 == progress.best_step and selection != "final":
            best = trainable_copy(params)

    # the same sweeps as the original steps (from the base model: checked against the run's settings)
    state = resumed.optimizer if snapshot.weights is None else None
    replay(optimizer, resumed.trajectory, state, after_step=replayed)
    return progress, best


def write(
    session: Session,
    cfg: TrialConfig,
    progress: Progress,
    optimizer: torch.optim.Optimizer,
    params: list[tuple[str, torch.nn.Parameter]],
    best: dict[str, torch.Tensor] | None,
) -> None:
    """Report ``progress.last_metrics`` with a checkpoint: the trainable weights and optimizer state (a
    snapshot), or MeZO's seed log since the last snapshot (``checkpoint_mode=seed_log``: every
    ``snapshot_every``-th is a snapshot). Every report carries one: Ray Train's result is the latest
    checkpointed report, so a failure reported without one would not reach it."""
    rank = session.rank
    progress.world_size, progress.fsdp = session.world_size, cfg.resources.fsdp
    progress.checkpoints += 1
    seed_log = isinstance(optimizer, ZeroOrderOptimizer) and cfg.checkpoint.checkpoint_mode == "seed_log"
    every = cfg.checkpoint.snapshot_every
    log_only = seed_log and not (every and progress.checkpoints % every == 0)
    progress.last_metrics[WEIGHTS_STEP] = -1 if log_only else progress.step
    with tempfile.TemporaryDirectory(prefix="mezo-ckpt-") as directory:
        if log_only:
            save(directory, progress, optimizer.trajectory, None, None, optimizer.state_dict(), rank, False)
        else:
            progress.snapshot_step = progress.step
            if isinstance(optimizer, ZeroOrderOptimizer):
                optimizer.trajectory.clear()  # the snapshot holds the weights: the log restarts here
            weights = {n: local_tensor(p) for n, p in params}
            kept = best if progress.best_step != progress.step else None
            save(
                directory,
                progress,
                [],
                weights,
                kept,
                optimizer.state_dict(),
                rank,
                cfg.resources.fsdp or rank == 0,
            )
        session.report(progress.last_metrics, directory)


def trainable_copy(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """The trainable weights (this rank's shards), copied to the CPU."""
    return {n: local_tensor(p).detach().to("cpu", copy=True) for n, p in params}
