"""CUDA noise and sweeps in Triton: z is drawn inside the kernel that uses it.

On CUDA, z for element i of a parameter is a pure function of (seed, name, i): Philox with key
mix_seed(seed, name) and counter i // 4 gives four uniforms, two Box-Muller pairs give four normals,
and element i takes number i % 4. Shards draw exactly their part, with no chunking.
One launch per sweep (per dtype) applies ``theta_p <- a_p * theta_p + b_p * z_p`` to every
parameter: +eps z, -2 eps z, and the restore fused with the SGD update. The arithmetic is done in
float32 registers with one rounding on store, and z never reaches memory. So the sweep takes float32,
bfloat16 and float16 parameters only: float64 ones would lose precision (the optimizer gives them the
chunked path, whose sweeps compute in float64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mezo_ray.zo.noise import NoiseSlice, mix_seed

BLOCK = 4096


@triton.jit
def _normal_block(seed, first, BLOCK: tl.constexpr):
    """z[first : first + BLOCK] where first % 4 == 0: Philox counter j gives the four normals of
    elements 4j .. 4j+3 (two Box-Muller pairs), so one Philox call serves four elements."""
    j = first // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    c0 = (j & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((j >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = c0 * 0
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, zero, zero)
    n0, n1 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(r0), tl.uint_to_uniform_float(r1))
    n2, n3 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(r2), tl.uint_to_uniform_float(r3))
    # interleave(interleave(n0, n2), interleave(n1, n3)) = n0_0, n1_0, n2_0, n3_0, n0_1, ...
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))


@triton.jit
def _fill_kernel(out_ptr, seed, start, n, BLOCK: tl.constexpr):
    first = (start // BLOCK + tl.program_id(0)) * BLOCK  # blocks aligned in the parameter's index space
    local = first + tl.arange(0, BLOCK).to(tl.int64) - start
    tl.store(out_ptr + local, _normal_block(seed, first, BLOCK), mask=(local >= 0) & (local < n))


@triton.jit
def _axpbz_kernel(
    block_param,
    block_first,
    addrs,
    numels,
    offsets,
    seeds,
    a_ptr,
    b_ptr,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    i = tl.load(block_param + pid)
    first = tl.load(block_first + pid)
    local = first + tl.arange(0, BLOCK).to(tl.int64) - tl.load(offsets + i)
    mask = (local >= 0) & (local < tl.load(numels + i))
    ptr = tl.load(addrs + i).to(tl.pointer_type(DTYPE)) + local
    z = _normal_block(tl.load(seeds + i), first, BLOCK)
    x = tl.load(ptr, mask=mask).to(tl.float32)
    tl.store(ptr, (tl.load(a_ptr + i) * x + tl.load(b_ptr + i) * z).to(DTYPE), mask=mask)


_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}  # no float64: the kernel computes in float32


def fill_normal(out: torch.Tensor, seed: int, key: int, start: int) -> None:
    """out[j] = z[start + j] of the parameter with name key ``key`` (out: contiguous float32)."""
    n = out.numel()
    blocks = (start + n - 1) // BLOCK - start // BLOCK + 1
    _fill_kernel[(blocks,)](out, mix_seed(seed, key), start, n, BLOCK=BLOCK)


class FusedSweep:
    """theta_p <- a_p * theta_p + b_p * z_p(seed) for a fixed list of tensors, one launch per dtype."""

    def __init__(self, slices: list[NoiseSlice]) -> None:
        wide = sorted({str(s.local.dtype) for s in slices if s.local.dtype not in _TL_DTYPES})
        if wide:
            raise ValueError(f"the fused sweep computes in float32 and cannot take {wide} parameters")
        self.keys = [s.key for s in slices]
        self.groups: list[tuple[list[int], torch.dtype, dict[str, torch.Tensor], int]] = []
        device = slices[0].local.device
        for dtype in dict.fromkeys(s.local.dtype for s in slices):
            members = [i for i, s in enumerate(slices) if s.local.dtype == dtype and s.local.numel()]
            if not members:
                continue
            block_param, block_first = [], []
            for j, i in enumerate(members):
                lo, hi = slices[i].offset, slices[i].offset + slices[i].local.numel()
                firsts = range(lo // BLOCK * BLOCK, hi, BLOCK)  # aligned in the whole parameter
                block_param += [j] * len(firsts)
                block_first += list(firsts)

            def long(values: list[int]) -> torch.Tensor:
                return torch.tensor(values, dtype=torch.int64, device=device)

            tables = {
                "block_param": long(block_param),
                "block_first": long(block_first),
                "addrs": long([slices[i].local.data_ptr() for i in members]),
                "numels": long([slices[i].local.numel() for i in members]),
                "offsets": long([slices[i].offset for i in members]),
            }
            self.groups.append((members, dtype, tables, len(block_param)))
        self._seed_cache: tuple[int, torch.Tensor] | None = None

    def __call__(self, seed: int, a: list[float], b: list[float]) -> None:
        if self._seed_cache is None or self._seed_cache[0] != seed:
            seeds = [mix_seed(seed, k) for k in self.keys]
            self._seed_cache = (seed, torch.tensor(seeds, dtype=torch.int64))
        all_seeds = self._seed_cache[1]
        for members, dtype, t, n_blocks in self.groups:
            device = t["addrs"].device
            seeds = all_seeds[members].to(device, non_blocking=True)
            coeffs = torch.tensor([[a[i] for i in members], [b[i] for i in members]], dtype=torch.float32)
            coeffs = coeffs.to(device, non_blocking=True)
            _axpbz_kernel[(n_blocks,)](
                t["block_param"],
                t["block_first"],
                t["addrs"],
                t["numels"],
                t["offsets"],
                seeds,
                coeffs[0],
                coeffs[1],
                DTYPE=_TL_DTYPES[dtype],
                BLOCK=BLOCK,
                num_warps=8,
            )
