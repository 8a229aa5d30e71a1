"""Small, pickle-free trial checkpoints: JSON state + the seed log + safetensors weight snapshots.

A checkpoint folder holds
- ``state.json`` (rank 0): progress, best-dev bookkeeping, the optimizer's counters, and the MeZO
  seed log since the last weight snapshot;
- ``snapshot-rank{r}.safetensors``: the trainable weights (and optimizer state) at the snapshot step;
  absent when the snapshot is step 0, i.e. the base model as loaded (its mode parameters are
  re-created from ``init_seed``);
- ``best-rank{r}.safetensors``: the best-dev trainable weights, when they are not the snapshot.

Resuming loads the snapshot and replays the seed log, which reproduces the uninterrupted run bit for
bit. Only rank 0 writes the weights of a replicated (data-parallel) model; with FSDP every rank
writes its own shards (Ray Train merges the workers' folders into one checkpoint).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mezo_ray.zo import StepRecord

STATE_FILE = "state.json"


@dataclass
class Progress:
    """The scalars of a trial that a resumed run continues from."""

    step: int = 0
    snapshot_step: int = 0
    max_dev_acc: float = float("-inf")  # the running best dev metric (what Tune optimises)
    best_dev_acc: float = float("-inf")  # best_*: the checkpoint kept by the selection rule
    best_dev_loss: float = float("inf")
    best_step: int = 0
    consecutive_nonfinite: int = 0
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    optimizer: dict[str, Any] = field(default_factory=dict)  # counters (MeZO) or scheduler state (FT)
    world_size: int = 1
    fsdp: bool = False


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The part of a (possibly DTensor) parameter this process holds."""
    return t.to_local() if hasattr(t, "to_local") else t


def shard_file(kind: str, rank: int) -> str:
    return f"{kind}-rank{rank}.safetensors"


def save(
    directory: str,
    progress: Progress,
    trajectory: list[StepRecord],
    snapshot: dict[str, torch.Tensor] | None,
    best: dict[str, torch.Tensor] | None,
    rank: int,
    writes_weights: bool,
) -> None:
    """Write this rank's part of a checkpoint into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    if rank == 0:
        state = {"progress": asdict(progress), "trajectory": [r.to_dict() for r in trajectory]}
        with open(os.path.join(directory, STATE_FILE), "w") as f:
            json.dump(state, f)
    if writes_weights:
        for kind, tensors in (("snapshot", snapshot), ("best", best)):
            if tensors is not None:
                contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
                save_file(contiguous, os.path.join(directory, shard_file(kind, rank)))


def load_state(directory: str) -> tuple[Progress, list[StepRecord]]:
    with open(os.path.join(directory, STATE_FILE)) as f:
        state = json.load(f)
    progress = Progress(**state["progress"])
    return progress, [StepRecord.from_dict(r) for r in state["trajectory"]]


def load_tensors(directory: str, kind: str, rank: int) -> dict[str, torch.Tensor] | None:
    path = os.path.join(directory, shard_file(kind, rank))
    return load_file(path) if os.path.exists(path) else None


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
