"""CPU noise and sweeps, compiled with Numba: z drawn inside the loop that uses it, the same bits as
the CUDA kernels on every CPU.

The generator is ``noise.py``'s (Philox4x32-10, then ``box_muller``); every operation is an integer
one or a single correctly rounded IEEE float32 +, -, *, / or sqrt, in a fixed order. Numba compiles
with LLVM for the machine it runs on (SSE, AVX2, AVX-512, NEON): vector lanes round as scalars do,
and without ``fastmath`` LLVM never contracts a * b + c into a fused multiply-add, so the bits do not
depend on the instruction set, the thread count or how the elements are split into calls.

Each call works through the counters of its elements in blocks of ``BLOCK`` counters: Philox fills
four word arrays, then the Gaussian transform and the sweep read them, loops that LLVM vectorizes.
The kernels release the GIL, so ``noise.for_each_chunk``'s threads run them in parallel.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
import torch
from numba import types
from numba.extending import overload

from mezo_ray.zo.noise import DEFAULT_CHUNK_NUMEL, Chunk, NoiseSlice, for_each_chunk, mix_seed

BLOCK = 1024  # Philox counters per block: 4096 elements, 48 KiB of words and normals (L1 / L2)

_U64 = np.uint64
_M32 = np.uint64(0xFFFFFFFF)
_KEY_A, _KEY_B = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)  # Philox4x32's Weyl key increments
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # ... and its round multipliers
_F = np.float32
# ln 2 in two parts: e * _LN2_HI is exact for |e| < 256 (the high part has 16 trailing zero bits)
_LN2_HI, _LN2_LO = _F(0.693145751953125), _F(1.428606765330187e-06)
_SQRT2 = _F(1.4142135)
_TWO_POW_M24 = _F(2.0**-24)
_ANGLE_STEP = _F(2 * np.pi / 2**24)  # a 24-bit angle index k is the angle k * 2 pi / 2^24
# Taylor coefficients: atanh (ln m = 2 atanh s), sin and cos; truncation < 1e-9 on the reduced ranges
_ATANH = tuple(_F(1 / n) for n in (3, 5, 7, 9, 11))
_SIN = tuple(_F((-1) ** n / np.prod(np.arange(1, 2 * n + 2, dtype=np.float64))) for n in (1, 2, 3, 4))
_COS = tuple(_F((-1) ** n / np.prod(np.arange(1, 2 * n + 1, dtype=np.float64))) for n in (1, 2, 3, 4, 5))

_JIT = {"nogil": True, "error_model": "numpy", "fastmath": False, "cache": True}
_inline = numba.njit(inline="always", **_JIT)
_kernel = numba.njit(**_JIT)


@_inline
def _round(c0, c1, c2, c3, k0, k1):  # type: ignore[no-untyped-def]
    """One Philox4x32 round: 32 x 32 -> 64-bit products, their halves xor-ed with the key."""
    p0 = _ROUND_B * c2
    p1 = _ROUND_A * c0
    return (p0 >> _U64(32)) ^ c1 ^ k0, p0 & _M32, (p1 >> _U64(32)) ^ c3 ^ k1, p1 & _M32


@_kernel
def _philox(seed, j0, count, words):  # type: ignore[no-untyped-def]
    """words[m, t] = word m of Philox4x32-10(key=seed, counter=(j0 + t, 0, 0)) for t < count: the
    counter's low 32 bits, its high 32 bits, 0, 0; the key: seed's low and high 32 bits."""
    seed = _U64(seed)
    k0, k1 = seed & _M32, seed >> _U64(32)
    for t in range(count):
        j = _U64(j0 + t)
        c0, c1, c2, c3 = j & _M32, j >> _U64(32), _U64(0), _U64(0)
        a0, a1 = k0, k1
        for _ in range(9):  # ten rounds, the key raised between them
            c0, c1, c2, c3 = _round(c0, c1, c2, c3, a0, a1)
            a0, a1 = (a0 + _KEY_A) & _M32, (a1 + _KEY_B) & _M32
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, a0, a1)
        words[0, t], words[1, t] = np.uint32(c0), np.uint32(c1)
        words[2, t], words[3, t] = np.uint32(c2), np.uint32(c3)


@_inline
def box_muller(wa, wb):  # type: ignore[no-untyped-def]
    """Two standard normals from two 32-bit words: radius sqrt(-2 ln u), u = (wa >> 8 + 1) / 2^24 in
    (0, 1], angle (wb >> 8) * 2 pi / 2^24. ln, sin and cos by range reduction and short series in
    float32 (``noise.py`` gives the operations; ``cuda_noise.py`` does the same ones)."""
    u = _F(np.int32(wa >> np.uint32(8)) + np.int32(1)) * _TWO_POW_M24
    bits = np.float32(u).view(np.int32)
    e = (bits >> np.int32(23)) - np.int32(127)
    m = np.int32((bits & np.int32(0x7FFFFF)) | np.int32(0x3F800000)).view(np.float32)  # u = m 2^e
    big = m > _SQRT2  # m in [sqrt(1/2), sqrt(2)): exact halving
    m = m * _F(0.5) if big else m
    e = e + np.int32(1) if big else e
    f = m - _F(1.0)
    s = f / (f + _F(2.0))  # ln m = 2 atanh(s), |s| < 0.172
    s2 = s * s
    p = s2 * (_ATANH[0] + s2 * (_ATANH[1] + s2 * (_ATANH[2] + s2 * (_ATANH[3] + s2 * _ATANH[4]))))
    fe = _F(e)
    ln_u = fe * _LN2_HI + (fe * _LN2_LO + (s + s * p) * _F(2.0))
    radius = np.sqrt(ln_u * _F(-2.0))
    # the angle's quarter turns in float32, where every value is an integer below 2^24 and so exact
    # (the same numbers as integer arithmetic, which Numba would widen to int64 lanes)
    k = _F(np.int32(wb >> np.uint32(8)))
    q = np.floor((k + _F(2.0**21)) * _F(2.0**-22))  # the nearest quarter turn ...
    x = (k - q * _F(2.0**22)) * _ANGLE_STEP  # ... and the rest, |x| <= pi / 4
    x2 = x * x
    sin_x = x + x * (x2 * (_SIN[0] + x2 * (_SIN[1] + x2 * (_SIN[2] + x2 * _SIN[3]))))
    cos_x = _F(1.0) + x2 * (_COS[0] + x2 * (_COS[1] + x2 * (_COS[2] + x2 * (_COS[3] + x2 * _COS[4]))))
    q = q - _F(4.0) * np.floor(q * _F(0.25))  # q mod 4: turn (cos x, sin x) by q quarter turns
    odd = (q == _F(1.0)) | (q == _F(3.0))
    cos_a = sin_x if odd else cos_x
    sin_a = cos_x if odd else sin_x
    cos_a = -cos_a if (q == _F(1.0)) | (q == _F(2.0)) else cos_a
    sin_a = -sin_a if q >= _F(2.0) else sin_a
    return radius * cos_a, radius * sin_a


@_kernel
def _normals(words, count, out):  # type: ignore[no-untyped-def]
    """out[4t + m] = normal m of counter t: words 0, 1 give normals 0, 1; words 2, 3 normals 2, 3."""
    for t in range(count):
        a, b = box_muller(words[0, t], words[1, t])
        c, d = box_muller(words[2, t], words[3, t])
        out[4 * t], out[4 * t + 1], out[4 * t + 2], out[4 * t + 3] = a, b, c, d


@_kernel
def _uniform_bits(words, count, out):  # type: ignore[no-untyped-def]
    """out[4t + m] = word m of counter t (the uniform of element 4t + m is (word >> 8) / 2^24)."""
    for t in range(count):
        for m in range(4):
            out[4 * t + m] = words[m, t]


@_kernel
def _blocks(start, n):  # type: ignore[no-untyped-def]
    """The first counter and the number of blocks that cover elements start .. start + n - 1."""
    j_first = start // 4
    j_last = (start + n - 1) // 4
    return j_first, (j_last - j_first) // BLOCK + 1


@_kernel
def _block_span(start, n, j_first, b):  # type: ignore[no-untyped-def]
    """Block b: its first counter, how many it has, and the out[lo:hi] it covers (at z offset off)."""
    j0 = j_first + b * BLOCK
    j_last = (start + n - 1) // 4
    count = min(BLOCK, j_last - j0 + 1)
    lo = max(start, 4 * j0) - start
    hi = min(start + n, 4 * (j0 + count)) - start
    return j0, count, lo, hi, start + lo - 4 * j0


@_kernel
def _uniforms(words, count, out):  # type: ignore[no-untyped-def]
    """out[4t + m] = (word m of counter t >> 8) / 2^24, in [0, 1)."""
    for t in range(count):
        for m in range(4):
            out[4 * t + m] = _F(np.int32(words[m, t] >> np.uint32(8))) * _TWO_POW_M24


@_kernel
def _draw_into(out, seed, start, uniform):  # type: ignore[no-untyped-def]
    n = out.shape[0]
    if n == 0:
        return
    words = np.empty((4, BLOCK), np.uint32)
    drawn = np.empty(4 * BLOCK, np.float32)
    j_first, n_blocks = _blocks(start, n)
    for b in range(n_blocks):
        j0, count, lo, hi, off = _block_span(start, n, j_first, b)
        _philox(seed, j0, count, words)
        if uniform:
            _uniforms(words, count, drawn)
        else:
            _normals(words, count, drawn)
        out[lo:hi] = drawn[off : off + hi - lo]


@_kernel
def normals_into(out, seed, start):  # type: ignore[no-untyped-def]
    """out[i] = z[start + i] for the stream keyed ``seed`` (out: float32)."""
    _draw_into(out, seed, start, False)


@_kernel
def uniforms_into(out, seed, start):  # type: ignore[no-untyped-def]
    """out[i] = u[start + i] = (word >> 8) / 2^24 in [0, 1) for the stream keyed ``seed``."""
    _draw_into(out, seed, start, True)


@_inline
def _bf16_nearest(x):  # type: ignore[no-untyped-def]
    """float32 -> bfloat16 bits, to nearest even (torch's rule; NaN -> 0x7FC0)."""
    bits = np.float32(x).view(np.uint32)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    bias = ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return np.uint16(0x7FC0) if nan else np.uint16((bits + bias) >> np.uint32(16))  # a select, no branch


@_inline
def _bf16_stochastic(x, word):  # type: ignore[no-untyped-def]
    """float32 -> bfloat16 bits, up or down with probability of the dropped bits: the uniform
    (word >> 8) / 2^24 times 2^16, truncated, is word >> 16 (``noise.stochastic_round_``)."""
    bits = np.float32(x).view(np.uint32)
    return np.uint16((bits + (word >> np.uint32(16))) >> np.uint32(16))


@_inline
def _bf16_value(bits):  # type: ignore[no-untyped-def]
    return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)


def _widen(x):  # type: ignore[no-untyped-def]
    """An element as float32: itself, or bfloat16 bits widened (exact)."""


def _on_grid(y, x):  # type: ignore[no-untyped-def]
    """y (float32) rounded to nearest on the grid of x's dtype, as float32."""


def _store(y, x, word, stochastic):  # type: ignore[no-untyped-def]
    """y (float32) as an element of x's dtype: as is, or bfloat16 bits to nearest or stochastically."""


@overload(_widen, jit_options=_JIT)
def _widen_typed(x):  # type: ignore[no-untyped-def]
    if isinstance(x, types.Float):
        return lambda x: x
    return lambda x: _bf16_value(x)


@overload(_on_grid, jit_options=_JIT)
def _on_grid_typed(y, x):  # type: ignore[no-untyped-def]
    if isinstance(x, types.Float):
        return lambda y, x: y
    return lambda y, x: _bf16_value(_bf16_nearest(y))


@overload(_store, jit_options=_JIT)
def _store_typed(y, x, word, stochastic):  # type: ignore[no-untyped-def]
    if isinstance(x, types.Float):
        return lambda y, x, word, stochastic: y
    return lambda y, x, word, stochastic: _bf16_stochastic(y, word) if stochastic else _bf16_nearest(y)


@_kernel
def sweep(src, dst, seed, start, r, a, b, round_seed, stochastic):  # type: ignore[no-untyped-def]
    """dst <- a * x + b * z, x = src or (r != 0) src + r * z rounded to src's dtype to nearest; in
    float32, each product and sum rounded on its own; the result stored in src's dtype (float32, or
    bfloat16 as uint16 bits: to nearest or, if ``stochastic``, with the uniforms of the stream keyed
    ``round_seed``). dst may be src."""
    n = src.shape[0]
    if n == 0:
        return
    words = np.empty((4, BLOCK), np.uint32)
    z = np.empty(4 * BLOCK, np.float32)
    ubits = np.zeros(4 * BLOCK, np.uint32)
    j_first, n_blocks = _blocks(start, n)
    restore = r != 0
    for blk in range(n_blocks):
        j0, count, lo, hi, off = _block_span(start, n, j_first, blk)
        _philox(seed, j0, count, words)
        _normals(words, count, z)
        if stochastic:
            _philox(round_seed, j0, count, words)
            _uniform_bits(words, count, ubits)
        for i in range(hi - lo):
            zi = z[off + i]
            x = _widen(src[lo + i])
            if restore:
                x = _on_grid(x + r * zi, src[lo + i])
            dst[lo + i] = _store(a * x + b * zi, src[lo + i], ubits[off + i], stochastic)


# ---------------------------------------------------------------------------------------------------
# The torch side: the interface ``cuda_noise`` offers, on CPU tensors.
FUSED_DTYPES = (torch.float32, torch.bfloat16)  # float16 / float64 parameters take the chunked path
# A forward copy is one module's parameter, drawn while the forward waits: in pieces small enough
# that both threads share a 768 x 768 matrix (z does not depend on how the elements are split)
COPY_PIECE = 1 << 16


_CTYPES = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double, torch.bfloat16: ctypes.c_uint16}


def _array(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a flat contiguous CPU tensor's memory: float32, float64, or bfloat16 as its
    uint16 bits.
    From the address, not ``Tensor.numpy()``, which marks the storage as shared and so not resizable
    (FSDP2 frees a gathered parameter by resizing its storage to 0). Keep ``t`` alive while in use."""
    if t.numel() == 0:
        return np.ctypeslib.as_array((_CTYPES[t.dtype] * 1)())[:0]
    return np.ctypeslib.as_array((_CTYPES[t.dtype] * t.numel()).from_address(t.data_ptr()))


def fill_normal(out: torch.Tensor, seed: int, key: int, start: int) -> None:
    """out[j] = z[start + j] of the parameter with name key ``key`` (out: contiguous float32)."""
    normals_into(_array(out), mix_seed(seed, key), start)


def fill_uniform(out: torch.Tensor, seed: int, key: int, start: int) -> None:
    """out[j] = u[start + j] in [0, 1), the uniform draws stochastic rounding takes with ``seed``."""
    uniforms_into(_array(out), mix_seed(seed, key), start)


def _sweep(
    src: np.ndarray,
    dst: np.ndarray,
    seed: int,
    start: int,
    r: float,
    a: float,
    b: float,
    round_seed: int | None,
) -> None:
    """dst <- a * x + b * z (``sweep``), the coefficients as float32."""
    stochastic = round_seed is not None and src.dtype == np.uint16
    f = np.float32
    sweep(src, dst, seed, start, f(r), f(a), f(b), round_seed if stochastic else 0, stochastic)


def axpbz_into(
    s: NoiseSlice, out: torch.Tensor, seed: int, a: float, b: float, round_seed: int | None = None
) -> None:
    """out <- a * theta + b * z(seed) for the elements ``s`` holds (``out`` flat, like ``s.local``),
    rounded as ``FusedSweep`` rounds a parameter with this ``round_seed``; theta is left as it is."""
    src, dst = _array(s.local), _array(out)
    seeded = mix_seed(seed, s.key)
    rounded = None if round_seed is None else mix_seed(round_seed, s.key)

    def run(s: NoiseSlice, c: Chunk) -> None:
        lo, hi = c.p_lo, c.p_hi
        _sweep(src[lo:hi], dst[lo:hi], seeded, c.first, 0.0, a, b, rounded)

    for_each_chunk([s], COPY_PIECE, run)


class FusedSweep:
    """theta_p <- a_p * x_p + b_p * z_p(seed) for a fixed list of CPU tensors, x_p = theta_p or, with
    ``restore``, theta_p + r_p z_p rounded to the parameter's dtype: z drawn in the loop that uses it,
    the chunks on the sweeps' thread pool; the result rounded stochastically where ``rounded[p]`` and
    the call gives a rounding seed, else to nearest (``cuda_noise.FusedSweep``'s arithmetic)."""

    def __init__(self, slices: list[NoiseSlice], rounded: list[bool]) -> None:
        other = sorted({str(s.local.dtype) for s in slices if s.local.dtype not in FUSED_DTYPES})
        if other:
            raise ValueError(f"the CPU fused sweep takes float32 and bfloat16, not {other} parameters")
        self.slices = slices
        self.rounded = rounded
        self.arrays = {id(s): (i, _array(s.local)) for i, s in enumerate(slices)}

    def __call__(
        self,
        seed: int,
        a: list[float],
        b: list[float],
        round_seed: int | None = None,
        restore: list[float] | None = None,
    ) -> None:
        seeds = [mix_seed(seed, s.key) for s in self.slices]
        round_seeds = [
            mix_seed(round_seed, s.key) if round_seed is not None and r else None
            for s, r in zip(self.slices, self.rounded, strict=True)
        ]

        def run(s: NoiseSlice, c: Chunk) -> None:
            i, theta = self.arrays[id(s)]
            part = theta[c.p_lo : c.p_hi]
            r = restore[i] if restore is not None else 0.0
            _sweep(part, part, seeds[i], c.first, r, a[i], b[i], round_seeds[i])

        for_each_chunk(self.slices, DEFAULT_CHUNK_NUMEL, run)


@_kernel
def _sum_of_products(a, b):  # type: ignore[no-untyped-def]
    """sum_i a[i] * b[i] in float64, in a fixed order: eight running sums over i % 8, then added in
    order (without fastmath LLVM keeps this order on every CPU)."""
    acc = np.zeros(8, np.float64)
    n = a.shape[0]
    for i in range(n):
        acc[i & 7] += np.float64(a[i]) * np.float64(b[i])
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


def sum_of_products(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum(a * b) over two flat CPU tensors of one shape, in float64 and a fixed order: the same bits
    on every CPU, where ``torch.sum``'s order follows the vector width (AVX-512 against AVX2).
    bfloat16 / float16 are widened to float32 first (exact)."""
    a, b = (t.detach().float() if t.dtype in (torch.bfloat16, torch.float16) else t.detach() for t in (a, b))
    a, b = a.contiguous().view(-1), b.contiguous().view(-1)
    return float(_sum_of_products(_array(a), _array(b)))
