"""z is a pure function of (seed, name, element index): shards draw exactly their rows of the whole."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mezo_ray.zo import MeZO, full_noise, noise
from mezo_ray.zo.noise import NoiseSlice, materialise, mix_seed, name_key


def shard_slices(whole: torch.Tensor, name: str, ways: int) -> list[NoiseSlice]:
    """Dim-0 shards with torch.chunk semantics (FSDP2's): ceil(rows / ways) rows each, last ones short."""
    row = whole[0].numel()
    out, start = [], 0
    for piece in torch.chunk(whole, ways, dim=0):
        out.append(NoiseSlice(piece.contiguous().view(-1), start * row, whole.numel(), name_key(name)))
        start += piece.shape[0]
    return out


@pytest.mark.parametrize("shape", [(7, 5), (10, 3, 2), (1000, 4), (3,)])
@pytest.mark.parametrize("ways", [1, 2, 3])
@pytest.mark.parametrize("chunk_numel", [4, 7, 1 << 20])
def test_shards_draw_their_rows_of_the_whole_bit_for_bit(shape, ways, chunk_numel):
    whole = torch.zeros(shape)
    z = full_noise(whole, "layer.weight", seed=1234, chunk_numel=chunk_numel).view(-1)
    parts = [materialise(s, 1234, chunk_numel) for s in shard_slices(whole, "layer.weight", ways)]
    assert torch.equal(torch.cat(parts), z)


def test_noise_depends_on_seed_name_and_nothing_else():
    a = full_noise(torch.zeros(50), "w", seed=1, chunk_numel=16)
    assert torch.equal(a, full_noise(torch.ones(50, dtype=torch.float64), "w", seed=1, chunk_numel=16))
    assert not torch.equal(a, full_noise(torch.zeros(50), "w", seed=2, chunk_numel=16))
    assert not torch.equal(a, full_noise(torch.zeros(50), "v", seed=1, chunk_numel=16))
    # chunks of one parameter are distinct streams, and z looks standard normal
    big = full_noise(torch.zeros(200_000), "w", seed=3, chunk_numel=1 << 14)
    assert not torch.equal(big[: 1 << 14], big[1 << 14 : 2 << 14])
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01


def test_mix_seed_spreads_nearby_inputs():
    seeds = {mix_seed(0, t, k) for t in range(100) for k in range(4)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    assert len({s & 0xFFFFFFFF for s in seeds}) == 400  # the CPU generator uses the low 32 bits


def test_backend_tag_tells_the_generators_apart(monkeypatch):
    assert noise.backend_tag(torch.device("cpu")) == "cpu-mt19937"
    monkeypatch.setattr(noise, "_cuda_backend", False)  # Triton missing: torch's CUDA generator
    assert noise.backend_tag(torch.device("cuda")) == "cuda-torch"
    monkeypatch.setattr(noise, "_cuda_backend", object())  # Triton there: counter-based Philox
    assert noise.backend_tag(torch.device("cuda")) == "cuda-triton-philox-v2"


# --------------------------------------------------------------------------------------------------
# Real DTensors (gloo, one process per rank)
def _dtensor_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    whole = torch.randn(7, 5)
    param = torch.nn.Parameter(distribute_tensor(whole, mesh, [Shard(0)]))
    z_local = full_noise(param, "w", seed=99, chunk_numel=4)
    opt = MeZO([("w", param)], lr=0.1, eps=1e-3, chunk_numel=4)
    opt.step(lambda: float((param.full_tensor() ** 2).sum()))
    torch.save({"z": z_local, "theta": param.to_local().detach()}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_dtensor_shards_match_the_whole_parameter(world):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dtensor_worker, args=(world, os.path.join(tmp, "init"), tmp), nprocs=world)
        parts = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    torch.manual_seed(0)
    whole = torch.nn.Parameter(torch.randn(7, 5))
    assert torch.equal(torch.cat([p["z"] for p in parts]), full_noise(whole, "w", seed=99, chunk_numel=4))
    opt = MeZO([("w", whole)], lr=0.1, eps=1e-3, chunk_numel=4)
    opt.step(lambda: float((whole**2).sum()))
    torch.testing.assert_close(torch.cat([p["theta"] for p in parts]), whole.detach(), rtol=0, atol=1e-6)
