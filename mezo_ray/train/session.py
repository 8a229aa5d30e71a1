"""Where a trial reports to: Ray Train workers, a Tune function trainable, or plain Python.

The recipe only ever calls ``session.report(metrics, checkpoint_dir)`` and
``session.latest_checkpoint()``; the two sessions below map that onto ``ray.train.report``
(inside a TorchTrainer worker), ``ray.tune.report`` (a single-process Tune trial: ``ray.train.report``
would be refused there, and ``ray.tune.report`` inside a Train worker silently drops metrics), or a
list in memory (tests, notebooks).
"""

from __future__ import annotations

import importlib
import json
import os
import posixpath
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, Protocol

from mezo_ray.train.checkpoint import STATE_FILE
from mezo_ray.train.dashboard import TrialGauges

#: The key of a failed trial's last report: why it stopped (a restart would fail the same way).
FAILURE_KEY = "failure"
RAY_TRAIN_STATE_FILE = "checkpoint_manager_snapshot.json"  # ray.train.v2._internal.constants


class Session(Protocol):
    rank: int
    world_size: int
    log_dir: str | None  # a local folder beside the trial's results for its own files (None: none)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Report metrics (every rank, same number of times) and optionally a checkpoint folder."""

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """The folder of the checkpoint to resume from, or None for a fresh start."""

    def snapshot_checkpoint(self, step: int) -> AbstractContextManager[str]:
        """The folder of the run's checkpoint holding the weight snapshot of ``step`` (a seed-log
        checkpoint continues from it); FileNotFoundError if Ray's retention lost it."""


class RaySession:
    """Reports through ``ray.train`` (inside a ``TorchTrainer`` worker, where ``report`` is a barrier
    across the workers) or ``ray.tune`` (a Tune trial running the recipe in its own process)."""

    def __init__(
        self,
        api: Literal["train", "tune"],
        resume_from: str | None = None,
        trial: tuple[str, str] | None = None,
    ) -> None:
        """``trial``: (experiment, trial name) of the Tune trial, for the dashboard's gauges; a Train
        worker cannot read them (its context names only the Train run, which stands in without them)."""
        self._api = importlib.import_module(f"ray.{api}")
        self._resume_from = resume_from  # used when Ray has no checkpoint (see ``salvage_train_run``)
        self.rank, self.world_size = 0, 1
        context = self._api.get_context()
        if api == "train":
            self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
            storage = context.get_storage()  # the Train run's folder, where it is a local one
            local = storage.storage_filesystem.type_name == "local"
            self.log_dir = storage.experiment_fs_path if local else None
            trial = trial or (context.get_experiment_name(), context.get_experiment_name())
        else:
            self.log_dir = context.get_trial_dir()
            trial = trial or (context.get_experiment_name(), context.get_trial_name())
        # rank 0 reports for the trial (Tune keeps its reports): one series per trial, not per worker
        self._gauges = TrialGauges(*trial) if self.rank == 0 else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Report, with the Ray node this process runs on (``node_id``: hosts can run several nodes),
        and set the trial's gauges (``mezo_ray.train.dashboard``)."""
        import ray

        if self._gauges is not None:
            self._gauges.set(metrics)
        checkpoint = self._api.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._api.report(
            {**metrics, "node_id": ray.get_runtime_context().get_node_id()}, checkpoint=checkpoint
        )

    def _latest(self) -> Any:
        checkpoint = self._api.get_checkpoint()
        if checkpoint is None and self._resume_from is not None:
            checkpoint = self._api.Checkpoint(self._resume_from)
        return checkpoint

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        checkpoint = self._latest()
        return checkpoint.as_directory() if checkpoint else nullcontext(None)

    @contextmanager
    def snapshot_checkpoint(self, step: int) -> Iterator[str]:
        latest = self._latest()
        path = find_snapshot(latest.filesystem, posixpath.dirname(latest.path), step)
        with self._api.Checkpoint(path, filesystem=latest.filesystem).as_directory() as directory:
            yield directory


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
        self.log_dir = checkpoint_root
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

    @contextmanager
    def snapshot_checkpoint(self, step: int) -> Iterator[str]:
        from pyarrow.fs import LocalFileSystem

        yield find_snapshot(LocalFileSystem(), os.path.dirname(os.path.abspath(self.resume_from or "")), step)


def find_snapshot(fs: Any, parent: str, step: int) -> str:
    """The checkpoint folder under ``parent`` (on a pyarrow filesystem: local or a cloud bucket, as
    Ray stores them) whose weights are those of ``step``; reads only the folders' state.json."""
    for folder, progress in _checkpoint_folders(fs, parent):
        if progress["step"] == step and progress.get("snapshot_step") == step:
            return folder
    raise FileNotFoundError(
        f"no checkpoint beside {parent} holds the weights of step {step}, which the latest checkpoint's "
        f"seed log continues from"
    )


def salvage_train_run(storage_path: str, name: str) -> str | None:
    """Make a Train run whose state file a kill left unreadable resumable again.

    Ray Train writes ``checkpoint_manager_snapshot.json`` in place: a driver killed mid-write leaves it
    empty, and the restored run then fails with ``CheckpointManagerInitializationError`` instead of
    resuming. Such a file is moved aside (kept, renamed ``*.unreadable``) so Train starts a fresh
    run in the same folder, and the latest complete checkpoint folder is returned for the recipe to
    resume from (None: nothing to salvage, Train's own state is fine or absent).
    """
    from pyarrow.fs import FileSystem, FileType

    fs, run_dir = FileSystem.from_uri(storage_path)
    run_dir = posixpath.join(run_dir, name)
    state_file = posixpath.join(run_dir, RAY_TRAIN_STATE_FILE)
    if fs.get_file_info(state_file).type != FileType.File:
        return None
    try:
        with fs.open_input_stream(state_file) as f:
            json.loads(f.read())
        return None
    except ValueError:
        fs.move(state_file, state_file + ".unreadable")
    complete = [
        (progress["step"], posixpath.basename(folder))
        for folder, progress in _checkpoint_folders(fs, run_dir)
        if _upload_finished(fs, folder, progress)
    ]
    return posixpath.join(storage_path, name, max(complete)[1]) if complete else None


def _checkpoint_folders(fs: Any, parent: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, progress) of every checkpoint folder under ``parent`` whose state.json reads."""
    from pyarrow.fs import FileSelector, FileType

    for info in fs.get_file_info(FileSelector(parent)):
        if info.type != FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(posixpath.join(info.path, STATE_FILE)) as f:
                progress = json.loads(f.read())["progress"]
        except (FileNotFoundError, OSError, KeyError, ValueError):
            continue
        yield info.path, progress


def _upload_finished(fs: Any, folder: str, progress: dict[str, Any]) -> bool:
    """Whether a checkpoint folder was written whole, not cut short by a kill: every safetensors
    file as long as its header says, the weight snapshot present where the state says so."""
    from pyarrow.fs import FileSelector, FileType

    files = {i.base_name: i for i in fs.get_file_info(FileSelector(folder)) if i.type == FileType.File}
    if progress.get("snapshot_step") == progress["step"]:
        shards = progress.get("world_size", 1) if progress.get("fsdp") else 1
        if any(f"snapshot-rank{r}.safetensors" not in files for r in range(shards)):
            return False
    return all(
        _safetensors_size(fs, info.path) == info.size
        for base_name, info in files.items()
        if base_name.endswith(".safetensors")
    )


def _safetensors_size(fs: Any, path: str) -> int | None:
    """The size a safetensors file has when whole: 8 + header + the last tensor's end offset."""
    try:
        with fs.open_input_stream(path) as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError):
        return None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    return 8 + header_len + max(ends, default=0)
