"""A data-parallel run whose workers would draw different z stops before it starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from mezo_ray.train import distributed


def _worker(rank: int, init_file: str, out_dir: str, differ: bool) -> None:
    import torch

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if differ and rank == 1:  # another generator on this node
        distributed.noise_fingerprint = lambda device: 0x123456789ABC
    try:
        distributed.check_noise_agrees(torch.device("cpu"))
        message = "ok"
    except RuntimeError as err:
        message = str(err)
    with open(os.path.join(out_dir, f"{rank}.txt"), "w") as f:
        f.write(message)
    dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_workers_whose_noise_differs_are_refused_at_the_start(differ):
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(os.path.join(out_dir, "init"), out_dir, differ), nprocs=2, join=True)
        messages = [Path(out_dir, f"{rank}.txt").read_text() for rank in (0, 1)]
    if not differ:
        assert messages == ["ok", "ok"]
    else:
        for message in messages:  # every rank stops, naming both fingerprints
            assert "the workers draw different noise" in message and "0x123456789abc" in message
