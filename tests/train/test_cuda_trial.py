"""A trial on CUDA: plain, and FSDP2 over NCCL (one rank per GPU here), give the same weights.
Skipped without a GPU; run on a GPU machine."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from mezo_ray.train.config import parse_trial_config
from mezo_ray.train.recipe import run_trial
from mezo_ray.train.session import LocalSession

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIG = {
    "model": "tiny-causal",
    "task": "synthetic-sst2-causal",
    "num_train": 128,
    "num_dev": 64,
    "num_test": 64,
    "batch_size": 16,
    "max_steps": 40,
    "eval_steps": 20,
    "lr": 1e-3,
    "gpus_per_worker": 1,
    "num_workers": 1,
}


def final_weights(tmp_path, name: str, **changes) -> dict[str, torch.Tensor]:
    session = LocalSession(str(tmp_path / name))
    final = run_trial(parse_trial_config({**CONFIG, **changes}), session)
    assert final["done"] and final["forward_passes"] == 80
    return load_file(os.path.join(session.checkpoints[-1], "snapshot-rank0.safetensors"))


def test_cuda_trial_plain_and_fsdp_over_nccl_agree(tiny_models, tmp_path):
    import torch.distributed as dist

    plain = final_weights(tmp_path, "plain")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        sharded = final_weights(tmp_path, "fsdp", fsdp=True)
    finally:
        dist.destroy_process_group()
    start = load_file(os.path.join(tiny_models.causal, "model.safetensors"))
    for name, value in plain.items():
        torch.testing.assert_close(sharded[name], value, rtol=0, atol=1e-5, msg=name)
    assert max(float((plain[k] - start[k]).abs().max()) for k in plain if k in start) > 1e-4
