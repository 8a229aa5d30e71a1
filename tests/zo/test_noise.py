"""z is a pure function of (seed, name, element index): shards draw exactly their rows of the whole."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mezo_ray.zo import MeZO, cpu_noise, full_noise, noise
from mezo_ray.zo.noise import NoiseSlice, materialise, mix_seed, name_key
from tests.zo import reference


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
    # z does not depend on how the sweeps split a parameter into chunks
    assert torch.equal(a, full_noise(torch.zeros(50), "w", seed=1, chunk_numel=7))


def test_mix_seed_spreads_nearby_inputs():
    seeds = {mix_seed(0, t, k) for t in range(100) for k in range(4)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    assert len({s & 0xFFFFFFFF for s in seeds}) == 400  # Philox's key takes the low and high 32 bits


def test_one_tag_names_the_generator_on_every_device():
    opt = MeZO([("w", torch.nn.Parameter(torch.zeros(3)))], lr=0.1)
    assert opt.noise_backend == noise.NOISE_TAG == "philox4x32-10-bm32-v3"


# --------------------------------------------------------------------------------------------------
# The generator against its definition: Philox4x32-10 and the float32 Box-Muller of noise.py


@pytest.mark.parametrize(
    ("counter", "key", "expected"),
    [  # Random123's known-answer vectors for philox4x32_10 (kat_vectors)
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_the_reference_philox_gives_the_published_answers(counter, key, expected):
    assert reference.philox4x32_10(counter, key) == expected


@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1, mix_seed(7, 3)])
def test_the_cpu_kernel_draws_philox_words_and_their_normals_and_uniforms(seed):
    """cpu_noise against a plain-Python Philox and a numpy float32 Box-Muller written from the spec."""
    start, n = 4 * (2**32 - 3) + 1, 30  # the counter's high word changes inside the range
    z, u = np.empty(n, np.float32), np.empty(n, np.float32)
    cpu_noise.normals_into(z, seed, start)
    cpu_noise.uniforms_into(u, seed, start)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    words = [
        reference.philox4x32_10(((j & 0xFFFFFFFF), j >> 32, 0, 0), key)
        for j in range(start // 4, (start + n) // 4 + 1)
    ]
    flat = np.array([w for ws in words for w in ws], dtype=np.uint32)
    a, b = reference.box_muller32(flat[0::2], flat[1::2])
    normals = np.stack([a, b], axis=1).reshape(-1)
    first = start - 4 * (start // 4)
    assert normals[first : first + n].tobytes() == z.tobytes()
    assert ((flat[first : first + n] >> 8).astype(np.float32) * np.float32(2**-24)).tobytes() == u.tobytes()


def test_the_float32_box_muller_is_the_exact_transform_to_a_few_ulps():
    """Against float64 libm on the same uniforms: the series and range reductions lose < 1e-6."""
    rng = np.random.default_rng(0)
    wa, wb = (rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32) for _ in range(2))
    wa[:3] = [0, 0xFFFFFFFF, 0x80000000]  # the smallest, largest, middle radius
    a, b = reference.box_muller32(wa, wb)
    u = ((wa >> 8).astype(np.float64) + 1) * 2.0**-24
    angle = (wb >> 8).astype(np.float64) * (2 * np.pi / 2**24)
    radius = np.sqrt(-2 * np.log(u))
    assert np.max(np.abs(a - radius * np.cos(angle))) < 2e-6
    assert np.max(np.abs(b - radius * np.sin(angle))) < 2e-6


def test_z_is_standard_normal_and_u_uniform():
    z = full_noise(torch.zeros(1_000_000), "w", seed=11).double()
    assert abs(float(z.mean())) < 0.005 and abs(float(z.std()) - 1) < 0.005
    assert abs(float((z**4).mean()) - 3) < 0.05  # Gaussian kurtosis
    for threshold, p in ((1.0, 0.682689), (2.0, 0.954500), (3.0, 0.997300)):
        assert abs(float((z.abs() < threshold).double().mean()) - p) < 0.002
    u = np.empty(1_000_000, np.float32)
    cpu_noise.uniforms_into(u, mix_seed(11, 5), 0)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.002
    counts = np.histogram(u, bins=16, range=(0, 1))[0]
    assert counts.min() > 0.98 * 62_500 and counts.max() < 1.02 * 62_500


@pytest.mark.parametrize(("start", "n"), [(0, 1), (3, 2), (5, 4097), (4096 * 3 - 1, 9000)])
def test_a_range_draws_the_same_elements_as_the_whole(start, n):
    whole = np.empty(start + n + 5, np.float32)
    cpu_noise.normals_into(whole, 1234, 0)
    part = np.empty(n, np.float32)
    cpu_noise.normals_into(part, 1234, start)
    assert part.tobytes() == whole[start : start + n].tobytes()


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


def test_the_compiled_kernels_contain_no_fused_multiply_add(tmp_path):
    """Numba compiles for this CPU; without fastmath LLVM must not contract a * b + c (an FMA rounds
    once, so the bits would depend on whether the CPU has one). In a fresh process with an empty
    cache: Numba cannot show the code of cached kernels."""
    script = """
import numpy as np
from mezo_ray.zo import cpu_noise
out, bits, f = np.zeros(64, np.float32), np.zeros(64, np.uint16), np.float32(1e-3)
cpu_noise.normals_into(out, 1, 0)
cpu_noise.sweep(out, out, 1, 0, f, f, f, 0, False)
cpu_noise.sweep(bits, bits, 1, 0, f, f, f, 2, True)
for kernel in (cpu_noise.normals_into, cpu_noise.sweep):
    for signature in kernel.signatures:
        asm = kernel.inspect_asm(signature).lower()
        print(kernel.__name__, "mul" in asm, any(op in asm for op in ("fmadd", "fmsub", "fnmadd", "fmla")))
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [
        word for name in ("normals_into", "sweep", "sweep") for word in (name, "True", "False")
    ]
