"""Seeded Gaussian noise that is regenerated, never stored: the same bits on every machine.

z for a parameter is a pure function of (step seed, parameter name, element index), and so is the
uniform u that stochastic rounding draws:

- key = ``mix_seed(seed, name_key(name))``, a 63-bit integer;
- element i is word i % 4 of Philox4x32-10 with the key's low and high 32 bits as its key and the
  counter (i // 4 low 32 bits, i // 4 high 32 bits, 0, 0) (Salmon et al. 2011; Triton's
  ``tl.philox``);
- u = (word >> 8) / 2^24, in [0, 1);
- z: words 0, 1 of a counter give the normals of elements 4j, 4j+1, words 2, 3 those of 4j+2, 4j+3,
  by ``cpu_noise.box_muller``: a Box-Muller transform whose ln, sin and cos are range reductions and
  short series in float32, so that every step is an integer operation or one correctly rounded IEEE
  +, -, *, / or square root, in a fixed order, never contracted into a fused multiply-add. No
  library ``log`` or ``cos`` (their last bit differs between implementations), no torch generator
  (its CPU kernels give other numbers on AVX2 than on AVX-512 or scalar code).

So z is the same on any CPU instruction set, any thread count, on CPU and on GPU: the CPU draws it in
Numba kernels (``cpu_noise.py``), CUDA in Triton kernels (``cuda_noise.py``), which compute the same
operations; any other device draws on the CPU and copies. A seed log replays anywhere: one tag,
``NOISE_TAG``, names the generator. z is drawn element by element, so an FSDP shard holding rows a..b
draws exactly its part. The flattened parameter is still walked in chunks of ``chunk_numel``
elements, the units of work of the sweeps' thread pool and of their scratch memory; z does not
depend on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_CHUNK_NUMEL = 1 << 20  # 4 MiB of fp32 scratch per worker thread

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """Hash integers into one well-mixed 63-bit seed (every bit depends on every part)."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (part & _MASK64))
    return h >> 1


def name_key(name: str) -> int:
    """A stable 64-bit key for a parameter name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class NoiseSlice:
    """Where the elements this process holds sit in a parameter's flattened noise stream."""

    local: torch.Tensor  # flat, contiguous view of the held elements (writes go to the parameter)
    offset: int  # index of local[0] in the whole flattened parameter
    numel: int  # numel of the whole parameter
    key: int  # name_key(parameter name)


def noise_slice(param: torch.Tensor, name: str) -> NoiseSlice:
    """Describe ``param`` (a plain tensor or a dim-0 sharded DTensor) for noise generation."""
    local, offset = param, 0
    if _is_dtensor(param):
        local, offset = _dtensor_local_and_offset(param, name)
    if not local.is_contiguous():
        raise ValueError(f"parameter {name!r} is not contiguous; MeZO perturbs parameters in place")
    return NoiseSlice(local=local.detach().view(-1), offset=offset, numel=param.numel(), key=name_key(name))


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The part of a (possibly DTensor-sharded) tensor this process holds."""
    return t.to_local() if _is_dtensor(t) else t


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _dtensor_local_and_offset(param: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    for placement in param.placements:
        if not (isinstance(placement, Replicate) or (isinstance(placement, Shard) and placement.dim == 0)):
            raise ValueError(
                f"parameter {name!r} has placement {placement}; MeZO supports Shard(0) and Replicate"
            )
    _, global_offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    row_numel = param[0].numel() if param.dim() > 0 else 1
    return param.to_local(), global_offset[0] * row_numel if param.dim() > 0 else 0


@dataclass(frozen=True)
class Chunk:
    """A unit of a sweep's work: the held elements local[p_lo:p_hi], the first of which is element
    ``first`` of the whole parameter (z is drawn by that index, so chunks only split the work)."""

    first: int
    p_lo: int
    p_hi: int


def chunks(s: NoiseSlice, chunk_numel: int) -> Iterator[Chunk]:
    """Yield the chunks, aligned in the whole parameter, that overlap the elements held by ``s``."""
    n = s.local.numel()
    if n == 0:
        return
    for c in range(s.offset // chunk_numel, (s.offset + n - 1) // chunk_numel + 1):
        lo, hi = max(s.offset, c * chunk_numel), min(s.offset + n, (c + 1) * chunk_numel)
        yield Chunk(lo, lo - s.offset, hi - s.offset)


class _Scratch(threading.local):
    """Per-thread, per-device chunk-sized buffers."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[torch.device, int, torch.dtype], torch.Tensor] = {}

    def buffer(
        self, device: torch.device, slot: int, numel: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        buf = self.buffers.get((device, slot, dtype))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[(device, slot, dtype)] = buf
        return buf[:numel]


_scratch = _Scratch()
_CPU = torch.device("cpu")


def _fill(s: NoiseSlice, chunk: Chunk, seed: int, slot: int, uniform: bool) -> torch.Tensor:
    """z (or u) for the held part of ``chunk``, float32, in this thread's scratch buffer ``slot``."""
    device, n, start = s.local.device, chunk.p_hi - chunk.p_lo, chunk.first
    backend = sweep_backend(device)
    here = device if backend is not None else _CPU  # another device: drawn on the CPU, then copied
    backend = backend or sweep_backend(_CPU)
    buf = _scratch.buffer(here, slot, n)
    (backend.fill_uniform if uniform else backend.fill_normal)(buf, seed, s.key, start)
    return buf if here == device else _scratch.buffer(device, slot, n).copy_(buf)


def draw(s: NoiseSlice, chunk: Chunk, seed: int, slot: int = 0) -> torch.Tensor:
    """z for the held part of ``chunk`` (float32, in this thread's scratch buffer ``slot``)."""
    return _fill(s, chunk, seed, slot, uniform=False)


def draw_uniform(s: NoiseSlice, chunk: Chunk, seed: int) -> torch.Tensor:
    """u ~ U[0, 1) for the held part of ``chunk`` (float32, scratch buffer slot 7): the uniforms
    stochastic rounding takes with ``seed``, a pure function of (seed, name, element) like z."""
    return _fill(s, chunk, seed, 7, uniform=True)


def add_scaled_(out: torch.Tensor, z: torch.Tensor, alpha: float) -> torch.Tensor:
    """out += alpha * z as two correctly rounded operations: the product in float32 (float64 for a
    float64 ``out``), in this thread's scratch slot 6, then the sum in out's dtype; the arithmetic of
    the fused sweeps on every device. Not ``out.add_(z, alpha=alpha)``: torch's CPU kernels contract
    that into a fused multiply-add on AVX2 and AVX-512 but not in scalar code, so its bits depend on
    the CPU."""
    product = scratch(out, 6).view(out.shape)
    if product.dtype == z.dtype:
        torch.mul(z, alpha, out=product)
    else:
        product.copy_(z).mul_(alpha)
    return out.add_(product)


def stochastic_round_(out: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Write ``x`` (float32) into ``out`` (a lower precision), rounded to one of its two neighbours on
    ``out``'s grid with the probability of the nearer one's distance from the farther: E[out] = x, so
    updates far below half an ulp survive on average. ``u``: uniform draws, one per element.
    bfloat16 is float32's top 16 bits: adding 16 random low bits to the magnitude and dropping them
    rounds it up with probability (its low bits) / 2^16, in four integer operations."""
    if out.dtype == torch.bfloat16:
        bits = x.view(torch.int32) + (u * 65536).to(torch.int32)
        return out.copy_(bits.bitwise_and_(-65536).view(torch.float32))  # exact: the low bits are zero
    near = x.to(out.dtype)
    near32 = near.float()
    away = torch.where(near32 < x, torch.inf, -torch.inf).to(out.dtype)  # the neighbour on x's other side
    other = torch.nextafter(near, away)
    take_other = u * (other.float() - near32).abs() < (x - near32).abs()
    return out.copy_(torch.where(take_other, other, near))


_backends: dict[str, Any] = {}

# Device types whose tensors the Triton kernels serve. The tests add "cpu" under Triton's interpreter
# (TRITON_INTERPRET=1), which runs the CUDA path's kernels on CPU tensors.
TRITON_DEVICE_TYPES = frozenset({"cuda"})


def sweep_backend(device: torch.device) -> Any:
    """The kernels that draw z and sweep tensors on ``device``: ``cuda_noise`` (Triton) for CUDA, or
    for the CPU under Triton's interpreter; ``cpu_noise`` (Numba) for the CPU; None elsewhere (or
    CUDA without Triton), where z is drawn on the CPU and copied."""
    kind = "triton" if device.type in TRITON_DEVICE_TYPES else device.type
    if kind not in _backends:
        backend = None
        if kind == "cpu":
            from mezo_ray.zo import cpu_noise as backend
        elif kind == "triton":
            with contextlib.suppress(ImportError):  # no Triton: drawn on the CPU
                from mezo_ray.zo import cuda_noise as backend
        _backends[kind] = backend
    return _backends[kind]


# The generator of z and u (module docstring), on every device; a seed log records it. Earlier ones:
# "cpu-mt19937" (torch's CPU generator per chunk), "cuda-torch", "cuda-triton-philox"(-v2).
NOISE_TAG = "philox4x32-10-bm32-v3"


def scratch(like: torch.Tensor, slot: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Scratch shaped like ``like`` from this thread's buffer ``slot``, in ``dtype``; by default
    float32 or wider (float64 parameters keep float64 estimates)."""
    dtype = dtype or torch.promote_types(like.dtype, torch.float32)
    return _scratch.buffer(like.device, slot, like.numel(), dtype)


def full_noise(
    param: torch.Tensor, name: str, seed: int, chunk_numel: int = DEFAULT_CHUNK_NUMEL
) -> torch.Tensor:
    """Materialise z for the elements of ``param`` this process holds (for tests and references)."""
    local_shape = param.to_local().shape if _is_dtensor(param) else param.shape
    return materialise(noise_slice(param, name), seed, chunk_numel).view(local_shape)


def materialise(s: NoiseSlice, seed: int, chunk_numel: int = DEFAULT_CHUNK_NUMEL) -> torch.Tensor:
    """z for the elements held by ``s``, as one flat float32 tensor."""
    out = torch.empty(s.local.numel(), dtype=torch.float32, device=s.local.device)
    for chunk in chunks(s, chunk_numel):
        out[chunk.p_lo : chunk.p_hi] = draw(s, chunk, seed)
    return out


def _no_grad_call(fn: Callable[[NoiseSlice, Chunk], None], s: NoiseSlice, c: Chunk) -> None:
    with torch.no_grad():  # grad mode is thread-local
        fn(s, c)


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
POOL_MIN_NUMEL = 1 << 16


def for_each_chunk(
    slices: list[NoiseSlice], chunk_numel: int, fn: Callable[[NoiseSlice, Chunk], None]
) -> None:
    """Run ``fn`` on every (slice, chunk); CPU chunks run on a thread pool (torch and the Numba
    kernels release the GIL), so drawing z takes every core. Chunks write disjoint elements, so the
    result does not depend on scheduling. Below ``POOL_MIN_NUMEL`` elements in all, handing the chunks
    to threads costs more than drawing them.
    """
    global _pool, _pool_size
    work = [(s, c) for s in slices for c in chunks(s, chunk_numel)]
    threads = torch.get_num_threads()
    cpu_work = [(s, c) for s, c in work if s.local.device.type == "cpu"]
    if threads > 1 and len(cpu_work) > 1 and sum(c.p_hi - c.p_lo for _, c in cpu_work) >= POOL_MIN_NUMEL:
        if _pool is None or _pool_size != threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mezo-noise")
            _pool_size = threads
        list(_pool.map(lambda sc: _no_grad_call(fn, *sc), cpu_work))
        work = [(s, c) for s, c in work if s.local.device.type != "cpu"]
    for s, c in work:
        fn(s, c)


def lowrank_factor(name: str, rows: int, rank: int, seed: int, stream: int) -> torch.Tensor:
    """One Gaussian factor (rows x rank, float32, CPU) of a low-rank perturbation of parameter
    ``name``, for a seed and a stream (each estimator numbers its own); drawn by the noise generator,
    so the same bits on every machine."""
    return full_noise(torch.empty(rows, rank), name, mix_seed(seed, stream))


def add_lowrank_(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scale: float) -> None:
    """w += scale * u v^T (w: m x n, u: m x r, v: n x r) in a fixed order of operations, block of rows
    by block: the outer products u_k v_k^T added up over k in order, then scaled, then added to w.
    Not a GEMM: BLAS sums the r products in an order that depends on the build and the CPU."""
    rows = max(1, (1 << 16) // max(1, w.shape[1]))
    for lo in range(0, w.shape[0], rows):
        block = slice(lo, lo + rows)
        total = u[block, 0:1] * v[:, 0]
        for k in range(1, u.shape[1]):
            total.add_(u[block, k : k + 1] * v[:, k])
        w[block].add_(total.mul_(scale))
