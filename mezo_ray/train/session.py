"""Where a trial reports to: Ray Train workers, a Tune function trainable, or plain Python.

The recipe only ever calls ``session.report(metrics, checkpoint_dir)`` and
``session.latest_checkpoint()``; the two sessions below map that onto ``ray.train.report``
(inside a TorchTrainer worker), ``ray.tune.report`` (a single-process Tune trial: ``ray.train.report``
would be refused there, and ``ray.tune.report`` inside a Train worker silently drops metrics), or a
list in memory (tests, notebooks).
"""

from __future__ import annotations

import importlib
import os
import shutil
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, Protocol


class Session(Protocol):
    rank: int
    world_size: int

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Report metrics (every rank, same number of times) and optionally a checkpoint folder."""

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """The folder of the checkpoint to resume from, or None for a fresh start."""


class RaySession:
    """Reports through ``ray.train`` (inside a ``TorchTrainer`` worker, where ``report`` is a barrier
    across the workers) or ``ray.tune`` (a Tune trial running the recipe in its own process)."""

    def __init__(self, api: Literal["train", "tune"]) -> None:
        self._api = importlib.import_module(f"ray.{api}")
        self.rank, self.world_size = 0, 1
        if api == "train":
            context = self._api.get_context()
            self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = self._api.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._api.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        checkpoint = self._api.get_checkpoint()
        return checkpoint.as_directory() if checkpoint else nullcontext(None)


class LocalSession:
    """No Ray: metrics go to ``reports``, checkpoints are copied under ``checkpoint_root``.

    ``rank`` and ``world_size`` let a process group started by hand (tests, ``torchrun``) use it.
    """

    def __init__(
        self,
        checkpoint_root: str | None = None,
        resume_from: str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[str] = []
        self.checkpoint_root = checkpoint_root
        self.resume_from = resume_from

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir and self.checkpoint_root:
            target = os.path.join(self.checkpoint_root, f"checkpoint_{len(self.checkpoints):06d}")
            shutil.copytree(checkpoint_dir, target)
            self.checkpoints.append(target)

    @contextmanager
    def latest_checkpoint(self):  # type: ignore[override]
        yield self.resume_from
