"""CUDA noise and sweeps in Triton: z is drawn inside the kernel that uses it.

z and u are ``noise.py``'s generator, element by element: Philox4x32-10 keyed by mix_seed(seed, name),
counter i // 4, and ``_box_muller``, the operations of ``cpu_noise.box_muller`` in the same order, so
a GPU draws the CPU's bits (division and square root correctly rounded: ``div_rn``, ``sqrt_rn``).
Shards draw exactly their part, with no chunking. One launch per sweep (per dtype) applies
``theta_p <- a_p * x_p + b_p * z_p`` to every parameter, x_p = theta_p or, restoring, theta_p +
r_p z_p rounded to nearest in the parameter's dtype: +eps z, -2 eps z, and the restore followed by
the SGD update; ``axpbz_into`` writes ``a * theta + b * z`` of one parameter into another tensor
(the copies of ``perturb_in_forward``). The arithmetic is done in float32 registers, each product
and sum rounded on its own (launched without FMA contraction), z never reaches memory, and the result
is rounded to nearest (bfloat16 in integer operations, torch's rule) or stochastically for the updates
and forward copies of bfloat16 / float16 weights, from uniform draws keyed by (rounding seed, name):
``cpu_noise``'s kernels compute the same. So the sweep takes float32, bfloat16 and float16
parameters only: float64 ones would lose precision (the optimizer gives them the chunked path, whose
sweeps compute in float64).

Without a GPU the kernels run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the test suite checks them against the CPU kernels, bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mezo_ray.zo import cpu_noise
from mezo_ray.zo.noise import NoiseSlice, mix_seed

BLOCK = 4096
# No FMA contraction: z and every sweep are then the same bits under every Triton release (3.9 fuses
# by default and says that will change), and equal torch's separate multiply and add.
LAUNCH = {"num_warps": 8, "enable_fp_fusion": False}

NEAREST, STOCHASTIC_BF16, STOCHASTIC_FP16 = 0, 1, 2  # how a sweep rounds on store (ROUND)

# cpu_noise's float32 constants, as Triton globals (the two files compute the same operations)
SQRT2 = tl.constexpr(float(cpu_noise._SQRT2))
LN2_HI, LN2_LO = tl.constexpr(float(cpu_noise._LN2_HI)), tl.constexpr(float(cpu_noise._LN2_LO))
ANGLE_STEP = tl.constexpr(float(cpu_noise._ANGLE_STEP))
ATANH0, ATANH1, ATANH2, ATANH3, ATANH4 = (tl.constexpr(float(c)) for c in cpu_noise._ATANH)
SIN0, SIN1, SIN2, SIN3 = (tl.constexpr(float(c)) for c in cpu_noise._SIN)
COS0, COS1, COS2, COS3, COS4 = (tl.constexpr(float(c)) for c in cpu_noise._COS)


@triton.jit
def _philox_block(seed, first, BLOCK: tl.constexpr):
    """Philox counters j = first // 4 + 0 .. BLOCK // 4 - 1 (first % 4 == 0): four 32-bit words each."""
    j = first // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    c0 = (j & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((j >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = c0 * 0
    return tl.philox(seed, c0, c1, zero, zero)


@triton.jit
def _interleave4(a, b, c, d):
    # interleave(interleave(a, c), interleave(b, d)) = a_0, b_0, c_0, d_0, a_1, ...: element 4j + m
    # takes word m of counter j
    return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))


@triton.jit
def _box_muller(wa, wb):
    """``cpu_noise.box_muller``'s float operations in its order (see it): the same two normals, bit
    for bit (the quarter turns here in integers, there in float32, where they are exact integers).
    Division and square root rounded correctly (``div_rn``, ``sqrt_rn``; Triton's ``/`` and
    ``sqrt`` are approximate on a GPU)."""
    u = ((wa >> 8).to(tl.int32) + 1).to(tl.float32) * 5.9604644775390625e-08  # 2^-24
    bits = u.to(tl.int32, bitcast=True)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > SQRT2
    m = tl.where(big, m * 0.5, m)
    e = tl.where(big, e + 1, e)
    f = m - 1.0
    s = tl.math.div_rn(f, f + 2.0)
    s2 = s * s
    p = s2 * (ATANH0 + s2 * (ATANH1 + s2 * (ATANH2 + s2 * (ATANH3 + s2 * ATANH4))))
    fe = e.to(tl.float32)
    ln_u = fe * LN2_HI + (fe * LN2_LO + (s + s * p) * 2.0)
    radius = tl.sqrt_rn(ln_u * -2.0)
    k = (wb >> 8).to(tl.int32)
    q = (k + (1 << 21)) >> 22
    x = (k - (q << 22)).to(tl.float32) * ANGLE_STEP
    x2 = x * x
    sin_x = x + x * (x2 * (SIN0 + x2 * (SIN1 + x2 * (SIN2 + x2 * SIN3))))
    cos_x = 1.0 + x2 * (COS0 + x2 * (COS1 + x2 * (COS2 + x2 * (COS3 + x2 * COS4))))
    q = q & 3
    odd = (q & 1) == 1
    cos_a = tl.where(odd, sin_x, cos_x)
    sin_a = tl.where(odd, cos_x, sin_x)
    cos_a = tl.where((q == 1) | (q == 2), -cos_a, cos_a)
    sin_a = tl.where(q >= 2, -sin_a, sin_a)
    return radius * cos_a, radius * sin_a


@triton.jit
def _normal_block(seed, first, BLOCK: tl.constexpr):
    """z[first : first + BLOCK]: counter j gives the four normals of elements 4j .. 4j+3 (two
    Box-Muller pairs), so one Philox call serves four elements."""
    r0, r1, r2, r3 = _philox_block(seed, first, BLOCK)
    n0, n1 = _box_muller(r0, r1)
    n2, n3 = _box_muller(r2, r3)
    return _interleave4(n0, n1, n2, n3)


@triton.jit
def _to_uniform(word):
    return (word >> 8).to(tl.int32).to(tl.float32) * 5.9604644775390625e-08  # (word >> 8) / 2^24


@triton.jit
def _uniform_block(seed, first, BLOCK: tl.constexpr):
    """u[first : first + BLOCK] in [0, 1): element 4j + m takes word m of counter j."""
    r0, r1, r2, r3 = _philox_block(seed, first, BLOCK)
    return _interleave4(_to_uniform(r0), _to_uniform(r1), _to_uniform(r2), _to_uniform(r3))


@triton.jit
def _fill_kernel(out_ptr, seed, start, n, UNIFORM: tl.constexpr, BLOCK: tl.constexpr):
    first = (start // BLOCK + tl.program_id(0)) * BLOCK  # blocks aligned in the parameter's index space
    local = first + tl.arange(0, BLOCK).to(tl.int64) - start
    values = _uniform_block(seed, first, BLOCK) if UNIFORM else _normal_block(seed, first, BLOCK)
    tl.store(out_ptr + local, values, mask=(local >= 0) & (local < n))


@triton.jit
def _nearest(y, DTYPE: tl.constexpr):
    """y (float32) on DTYPE's grid, to nearest even: bfloat16 in integer operations (torch's rule;
    Triton's interpreter converts by truncation), float16 by conversion, float32 as it is."""
    if DTYPE == tl.bfloat16:  # noqa: SIM300 (a constexpr compare Triton resolves)
        bits = y.to(tl.int32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
        y = tl.where(y == y, rounded, y)  # NaN stays NaN
    elif DTYPE == tl.float16:  # noqa: SIM300
        y = y.to(tl.float16).to(tl.float32)
    return y


@triton.jit
def _round(y, round_seed, first, DTYPE: tl.constexpr, ROUND: tl.constexpr, BLOCK: tl.constexpr):
    """y (float32) on the stored dtype's grid: to nearest, or stochastically to one of its two
    neighbours with the nearer one's probability its distance from the farther
    (``noise.stochastic_round_``'s arithmetic, its uniform draws from ``round_seed``)."""
    if ROUND == 0:
        y = _nearest(y, DTYPE)
    elif ROUND == 1:  # bfloat16 is float32's top 16 bits: add 16 random low bits, drop them
        u = _uniform_block(round_seed, first, BLOCK)
        bits = y.to(tl.int32, bitcast=True) + (u * 65536.0).to(tl.int32)
        y = (bits & -65536).to(tl.float32, bitcast=True)  # exact in bfloat16: the store does not round
    elif ROUND == 2:  # float16: the nearest value and its neighbour on y's other side
        u = _uniform_block(round_seed, first, BLOCK)
        near = y.to(tl.float16)
        near32 = near.to(tl.float32)
        up = y > near32
        # one step of the magnitude in the sign-magnitude bits; from zero, the smallest subnormal
        step = tl.where((near32 > 0) == up, 1, -1).to(tl.int16)
        from_zero = tl.where(up, 1, -32767).to(tl.int16)  # 0x0001, 0x8001
        other_bits = tl.where(near32 == 0, from_zero, near.to(tl.int16, bitcast=True) + step)
        other32 = other_bits.to(tl.float16, bitcast=True).to(tl.float32)
        y = tl.where(u * tl.abs(other32 - near32) < tl.abs(y - near32), other32, near32)
    return y


@triton.jit
def _axpbz_block(
    src,
    dst,
    local,
    mask,
    first,
    seed,
    round_seed,
    r,
    a,
    b,
    DTYPE: tl.constexpr,
    RESTORE: tl.constexpr,
    ROUND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dst <- a * x + b * z, x = src, or with RESTORE src + r * z rounded to nearest on DTYPE's grid;
    each product and sum rounded to float32 (no contraction), the result rounded as ROUND says."""
    z = _normal_block(seed, first, BLOCK)
    x = tl.load(src + local, mask=mask).to(tl.float32)
    if RESTORE:
        x = _nearest(x + r * z, DTYPE)
    y = a * x + b * z
    tl.store(dst + local, _round(y, round_seed, first, DTYPE, ROUND, BLOCK).to(DTYPE), mask=mask)


@triton.jit
def _axpbz_kernel(
    block_param,
    block_first,
    addrs,
    numels,
    offsets,
    seeds,
    round_seeds,
    r_ptr,
    a_ptr,
    b_ptr,
    DTYPE: tl.constexpr,
    RESTORE: tl.constexpr,
    ROUND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    i = tl.load(block_param + pid)
    first = tl.load(block_first + pid)
    local = first + tl.arange(0, BLOCK).to(tl.int64) - tl.load(offsets + i)
    mask = (local >= 0) & (local < tl.load(numels + i))
    ptr = tl.load(addrs + i).to(tl.pointer_type(DTYPE))
    seed, round_seed = tl.load(seeds + i), tl.load(round_seeds + i)
    r, a, b = tl.load(r_ptr + i), tl.load(a_ptr + i), tl.load(b_ptr + i)
    _axpbz_block(ptr, ptr, local, mask, first, seed, round_seed, r, a, b, DTYPE, RESTORE, ROUND, BLOCK)


@triton.jit
def _axpbz_into_kernel(
    src, dst, offset, n, seed, round_seed, a, b, DTYPE: tl.constexpr, ROUND: tl.constexpr, BLOCK: tl.constexpr
):
    first = (offset // BLOCK + tl.program_id(0)) * BLOCK  # aligned in the whole parameter
    local = first + tl.arange(0, BLOCK).to(tl.int64) - offset
    mask = (local >= 0) & (local < n)
    _axpbz_block(src, dst, local, mask, first, seed, round_seed, 0.0, a, b, DTYPE, False, ROUND, BLOCK)


_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}  # no float64: the kernel computes in float32
_STOCHASTIC = {torch.bfloat16: STOCHASTIC_BF16, torch.float16: STOCHASTIC_FP16}
FUSED_DTYPES = tuple(_TL_DTYPES)  # float64 parameters take the chunked path (it computes in float64)


def _blocks(offset: int, n: int) -> int:
    """Launch blocks covering elements offset .. offset + n - 1, aligned in the whole parameter."""
    return (offset + n - 1) // BLOCK - offset // BLOCK + 1


def _fill(out: torch.Tensor, seed: int, key: int, start: int, uniform: bool) -> None:
    n = out.numel()
    if n:
        seeded = mix_seed(seed, key)
        _fill_kernel[(_blocks(start, n),)](out, seeded, start, n, UNIFORM=uniform, BLOCK=BLOCK, **LAUNCH)


def fill_normal(out: torch.Tensor, seed: int, key: int, start: int) -> None:
    """out[j] = z[start + j] of the parameter with name key ``key`` (out: contiguous float32)."""
    _fill(out, seed, key, start, uniform=False)


def fill_uniform(out: torch.Tensor, seed: int, key: int, start: int) -> None:
    """out[j] = u[start + j] ~ U[0, 1), the uniform draws stochastic rounding takes with ``seed``."""
    _fill(out, seed, key, start, uniform=True)


def _rounding(dtype: torch.dtype, round_seed: int | None) -> int:
    return NEAREST if round_seed is None else _STOCHASTIC.get(dtype, NEAREST)


def axpbz_into(
    s: NoiseSlice, out: torch.Tensor, seed: int, a: float, b: float, round_seed: int | None = None
) -> None:
    """out <- a * theta + b * z(seed) for the elements ``s`` holds (``out`` flat, like ``s.local``),
    rounded as ``FusedSweep`` rounds a parameter with this ``round_seed``; theta is left as it is."""
    n = s.local.numel()
    if n == 0:
        return
    rs = 0 if round_seed is None else mix_seed(round_seed, s.key)
    _axpbz_into_kernel[(_blocks(s.offset, n),)](
        s.local,
        out,
        s.offset,
        n,
        mix_seed(seed, s.key),
        rs,
        a,
        b,
        DTYPE=_TL_DTYPES[s.local.dtype],
        ROUND=_rounding(s.local.dtype, round_seed),
        BLOCK=BLOCK,
        **LAUNCH,
    )


class FusedSweep:
    """theta_p <- a_p * theta_p + b_p * z_p(seed) for a fixed list of tensors, one launch per dtype;
    rounded stochastically where ``rounded[p]`` and the call gives a rounding seed, else to nearest."""

    def __init__(self, slices: list[NoiseSlice], rounded: list[bool]) -> None:
        wide = sorted({str(s.local.dtype) for s in slices if s.local.dtype not in _TL_DTYPES})
        if wide:
            raise ValueError(f"the fused sweep computes in float32 and cannot take {wide} parameters")
        self.keys = [s.key for s in slices]
        self.groups: list[tuple[list[int], torch.dtype, bool, dict[str, torch.Tensor], int]] = []
        device = slices[0].local.device
        kinds = [(s.local.dtype, r) for s, r in zip(slices, rounded, strict=True)]
        for dtype, stochastic in dict.fromkeys(kinds):
            members = [i for i, s in enumerate(slices) if kinds[i] == (dtype, stochastic) and s.local.numel()]
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
            self.groups.append((members, dtype, stochastic, tables, len(block_param)))
        self._seed_cache: dict[int, torch.Tensor] = {}

    def _seeds(self, seed: int) -> torch.Tensor:
        """mix_seed(seed, key) per tensor, kept for the last two seeds (a step's z and its rounding)."""
        if seed not in self._seed_cache:
            if len(self._seed_cache) > 1:
                self._seed_cache.pop(next(iter(self._seed_cache)))
            self._seed_cache[seed] = torch.tensor([mix_seed(seed, k) for k in self.keys], dtype=torch.int64)
        return self._seed_cache[seed]

    def __call__(
        self,
        seed: int,
        a: list[float],
        b: list[float],
        round_seed: int | None = None,
        restore: list[float] | None = None,
    ) -> None:
        all_seeds = self._seeds(seed)
        for members, dtype, stochastic, t, n_blocks in self.groups:
            device = t["addrs"].device
            seeds = all_seeds[members].to(device, non_blocking=True)
            rounding = _rounding(dtype, round_seed if stochastic else None)
            round_seeds = self._seeds(round_seed)[members].to(device) if rounding != NEAREST else seeds
            r = restore or [0.0] * len(a)
            coeffs = [[r[i] for i in members], [a[i] for i in members], [b[i] for i in members]]
            coeffs = torch.tensor(coeffs, dtype=torch.float32)
            coeffs = coeffs.to(device, non_blocking=True)
            _axpbz_kernel[(n_blocks,)](
                t["block_param"],
                t["block_first"],
                t["addrs"],
                t["numels"],
                t["offsets"],
                seeds,
                round_seeds,
                coeffs[0],
                coeffs[1],
                coeffs[2],
                DTYPE=_TL_DTYPES[dtype],
                RESTORE=restore is not None,
                ROUND=rounding,
                BLOCK=BLOCK,
                **LAUNCH,
            )
