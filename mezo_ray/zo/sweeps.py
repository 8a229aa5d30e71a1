"""The sweep engine: where a * z(seed) meets the weights, for every estimator.

A sweep walks the trainable parameters chunk by chunk (``noise.for_each_chunk``), regenerating z from
the seed in each chunk, so scratch memory is one chunk per thread whatever the model size. The engine
owns what every estimator's sweeps share:

- which parameters a step touches (all, or one layer under ``layer_wise``) and their noise slices;
- the fused kernels (``cpu_noise`` / ``cuda_noise``: one launch per sweep) where the dtypes allow,
  else the chunked path;
- rounding: an update is computed in float32 for bfloat16 / float16 weights and stored back rounded,
  stochastically (its random bits from the step's seed) or to nearest;
- where a perturbation is applied: in place (the weights move and come back, to rounding), or in the
  forward (``perturb_in_forward``: each module runs on a copy theta + a z, the weights never move);
- per-parameter perturbation scales c (z / c), which MeZO's ``scale`` sets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mezo_ray.zo.forward_perturbation import ForwardPerturbation
from mezo_ray.zo.noise import (
    Chunk,
    NoiseSlice,
    add_scaled_,
    chunks,
    draw,
    draw_uniform,
    for_each_chunk,
    local_tensor,
    mix_seed,
    noise_slice,
    stochastic_round_,
    sweep_backend,
)
from mezo_ray.zo.noise import scratch as scratch_like
from mezo_ray.zo.record import check

LOW_PRECISION: frozenset[torch.dtype] = frozenset({torch.bfloat16, torch.float16})
# The seed stream of stochastic rounding's uniform draws: mix_seed(step seed, ROUNDING_STREAM).
ROUNDING_STREAM = 0x5200
# perturb_in_forward: the uniform draws that round a perturbed copy, mix_seed(seed, this, sign of a).
PERTURBATION_ROUNDING_STREAM = 0x5201

Entry = tuple[NoiseSlice, torch.Tensor, dict[str, Any]]  # (noise slice, parameter, its group)


class Sweeps:
    """The sweeps over ``optimizer``'s parameters (its ``param_groups``, read anew each time: torch
    replaces them when a state dict is loaded).

    Args:
        optimizer: the optimizer whose parameters are swept (``param_groups``, ``step_count``).
        chunk_numel: elements per unit of work and of scratch memory; z does not depend on it.
        no_decay: name parts (case-insensitive) of parameters without weight decay.
        stochastic_rounding: round bfloat16 / float16 updates stochastically (None: on for them).

    ``layer_wise`` (MeZO sets it): a step touches one block, ``step_count mod num_blocks``, the first
    ``.<i>.`` of a parameter's name (the paper code's ``--layer_wise_optim``); others stay put.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        chunk_numel: int,
        no_decay: Sequence[str],
        stochastic_rounding: bool | None,
    ) -> None:
        self._optimizer = optimizer
        self.chunk_numel = chunk_numel
        self.layer_wise = False
        groups = optimizer.param_groups
        self.rounded = {
            p
            for g in groups
            for p in g["params"]
            if p.dtype in LOW_PRECISION and stochastic_rounding is not False
        }
        lowered = tuple(s.lower() for s in no_decay)
        self.names: dict[torch.Tensor, str] = {}
        self.decays: dict[torch.Tensor, bool] = {}
        index = 0
        for group in groups:
            names = group.get("param_names") or [f"param.{index + i}" for i in range(len(group["params"]))]
            index += len(group["params"])
            for p, name in zip(group["params"], names, strict=True):
                self.names[p] = name
                self.decays[p] = not any(s in name.lower() for s in lowered)
        self.blocks = {p: block_of(name) for p, name in self.names.items()}
        self.num_blocks = 1 + max((b for b in self.blocks.values() if b is not None), default=-1)
        self.scales: dict[torch.Tensor, float] = {}  # per-parameter perturbation scale c (1 if absent)
        # perturb_in_forward: the hooks, and the perturbation they apply, theta + at * z(seed), as
        # (seed, at) with each active parameter's noise slice and scale (None: none, the forward sees theta)
        self.forward: ForwardPerturbation | None = None
        self.offset: tuple[int, float] | None = None
        self._plan: dict[torch.Tensor, tuple[NoiseSlice, float]] = {}
        self._fused: Any = None  # one-launch sweeps, built on first use
        self._slice_cache: tuple[tuple[int, ...], list[Entry]] | None = None

    # ------------------------------------------------------------------------------------------------
    # Which parameters
    def slices(self) -> list[Entry]:
        """(noise slice, parameter, group) for every parameter, rebuilt only when storage moves
        (per-sweep Python work must stay small next to a GPU sweep of a few hundred microseconds)."""
        groups = self._optimizer.param_groups
        storage = tuple(local_tensor(p).data_ptr() for g in groups for p in g["params"])
        if self._slice_cache is None or self._slice_cache[0] != storage:
            slices = [(noise_slice(p, self.names[p]), p, g) for g in groups for p in g["params"]]
            self._slice_cache = (storage, slices)
            self._fused = None
        return self._slice_cache[1]

    def forget_slices(self) -> None:
        """The groups were replaced (a state dict was loaded): rebuild the slices on next use."""
        self._slice_cache = None

    def active(self) -> list[Entry]:
        """The parameters this step perturbs and updates: all, or one block under ``layer_wise``."""
        if not self.layer_wise:
            return self.slices()
        block = self._optimizer.step_count % self.num_blocks
        return [entry for entry in self.slices() if self.blocks[entry[1]] == block]

    def scale_of(self, p: torch.Tensor) -> float:
        """c of ``p`` (perturbed by z / c), 1 unless MeZO's ``scale`` set it."""
        return self.scales.get(p, 1.0)

    def for_chunks(
        self, fn: Callable[[NoiseSlice, Chunk], None], slices: list[NoiseSlice] | None = None
    ) -> None:
        """``fn(slice, chunk)`` over every chunk of the active parameters (or of ``slices``), on the
        sweeps' thread pool."""
        slices = [s for s, _, _ in self.active()] if slices is None else slices
        for_each_chunk(slices, self.chunk_numel, fn)

    # ------------------------------------------------------------------------------------------------
    # Perturbations
    def perturb(self, seed: int, scale: float) -> None:
        """theta += scale * z(seed) / c, in place: one sweep over the weights. After
        ``perturb_in_forward`` no sweep: the weights stay, and the forward sees theta + (the scales so
        far) * z."""
        if self.forward is not None:
            at = scale + (self.offset[1] if self.offset is not None else 0.0)
            assert self.offset is None or self.offset[0] == seed, "a perturbation was left pending"
            self.set_offset(None if at == 0 else (seed, at))
            return
        active = self.active()
        slices = [s for s, _, _ in active]
        # z / c under scale='param_norm'; a plain scale otherwise (no per-sweep dict on the hot path)
        alpha = {id(s): scale / self.scale_of(p) for s, p, _ in active} if self.scales else None
        fused = self.fused_sweep(active)
        if fused is not None:
            fused(seed, [1.0] * len(slices), [alpha[id(s)] if alpha else scale for s in slices])
            return

        def perturb_chunk(s: NoiseSlice, c: Chunk) -> None:
            add_scaled_(s.local[c.p_lo : c.p_hi], draw(s, c, seed), alpha[id(s)] if alpha else scale)

        for_each_chunk(slices, self.chunk_numel, perturb_chunk)

    def perturb_in_forward(self, model: torch.nn.Module) -> None:
        """Apply perturbations inside ``model``'s forward from now on (``forward_perturbation.py``)."""
        held = set(model.parameters())
        missing = [name for p, name in self.names.items() if p not in held]
        check(not missing, "parameters", missing[:3], "parameters of the model given")
        self.forward = ForwardPerturbation(model, self.names, self._perturbed_copy)

    @property
    def placement(self) -> str:
        """Where perturbations are applied: ``in_place`` (the sweeps) or ``forward``."""
        return "in_place" if self.forward is None else "forward"

    def set_offset(self, offset: tuple[int, float] | None) -> None:
        """perturb_in_forward: the perturbation the forward applies, and the parameters it touches."""
        self.offset = offset
        if offset is None:
            self._plan = {}
            return
        at = offset[1]
        self._plan = {p: (s, at / self.scale_of(p)) for s, p, _ in self.active()}

    def check_forward(self) -> None:
        """perturb_in_forward: refuse a forward that read some perturbed parameter outside its module."""
        assert self.forward is not None
        self.forward.check(self._plan, self.names)

    def _perturbed_copy(self, p: torch.Tensor, held: torch.Tensor, out: torch.Tensor) -> bool:
        """Write theta + a z(seed) of ``held`` (``p``, or under FSDP the whole parameter gathered from
        ``p``'s shards) into ``out`` with the in-place sweep's arithmetic (stochastically rounded for a
        rounded dtype), its chunks on the sweeps' thread pool; False when no perturbation applies."""
        plan = self._plan.get(p)
        if plan is None or self.offset is None:
            return False
        s, alpha = plan
        whole = local_tensor(held) is held  # a DTensor not gathered by FSDP has no whole to perturb
        check(whole, "parameter", self.names[p], "a plain tensor, or FSDP2-gathered, in its forward")
        if held is not p:  # FSDP2: all of it, drawn as one process holding it would draw it
            s = NoiseSlice(held.detach().view(-1), 0, s.numel, s.key)
        seed = self.offset[0]
        flat = out.view(-1)
        rounded = p in self.rounded
        rounding = mix_seed(seed, PERTURBATION_ROUNDING_STREAM, int(alpha > 0)) if rounded else None
        backend = sweep_backend(s.local.device)
        if backend is not None and s.local.dtype in backend.FUSED_DTYPES:  # z drawn where it is used
            backend.axpbz_into(s, flat, seed, 1.0, alpha, rounding)
            return True

        def copy_chunk(s: NoiseSlice, c: Chunk) -> None:
            theta, into = s.local[c.p_lo : c.p_hi], flat[c.p_lo : c.p_hi]
            z = draw(s, c, seed)
            if rounding is not None:
                work = add_scaled_(scratch_like(theta, 5, torch.float32).copy_(theta), z, alpha)
                stochastic_round_(into, work, draw_uniform(s, c, rounding))
            else:
                add_scaled_(into.copy_(theta), z, alpha)

        for_each_chunk([s], self.chunk_numel, copy_chunk)
        return True

    # ------------------------------------------------------------------------------------------------
    # Updates
    def working_copy(self, theta: torch.Tensor) -> torch.Tensor:
        """Where an update is computed: ``theta`` itself (float32, float64), or for a bfloat16 /
        float16 one a float32 copy of it (scratch slot 5) that ``round_into`` writes back, rounded
        once, as the fused sweeps compute."""
        if theta.dtype not in LOW_PRECISION:
            return theta
        return scratch_like(theta, 5, torch.float32).copy_(theta)

    def round_into(
        self, p: torch.Tensor, theta: torch.Tensor, work: torch.Tensor, s: NoiseSlice, c: Chunk, seed: int
    ) -> None:
        """Store an update computed in ``work`` into ``theta``: stochastically rounded where ``p`` is,
        its random bits drawn from the step's seed and each element's index (replays and FSDP shards
        round alike), else to nearest."""
        if work is theta:
            return
        if p in self.rounded:
            stochastic_round_(theta, work, draw_uniform(s, c, mix_seed(seed, ROUNDING_STREAM)))
        else:
            theta.copy_(work)

    def round_whole(self, p: torch.Tensor, s: NoiseSlice, work: torch.Tensor, seed: int) -> None:
        """``round_into`` for an update computed for all of ``s``'s elements at once (chunk by chunk,
        so the random bits are those of the chunked sweeps)."""
        if work.data_ptr() == s.local.data_ptr():
            return
        flat = work.view(-1)
        for c in chunks(s, self.chunk_numel):
            self.round_into(p, s.local[c.p_lo : c.p_hi], flat[c.p_lo : c.p_hi], s, c, seed)

    def fused_sweep(self, active: list[Entry]) -> Any:
        """The device's fused sweep (``cuda_noise`` on CUDA with Triton: float32, bfloat16, float16;
        ``cpu_noise`` on the CPU: float32, bfloat16) when every parameter is on one device in a dtype
        it takes; else None, and the chunked path (float64 ones keep float64 arithmetic there)."""
        if self._fused is not None:  # built for these parameters (reset by slices() when storage moves)
            return self._fused
        slices = [s for s, _, _ in active]
        if self.layer_wise or not slices:  # the fused sweep is built for every parameter
            return None
        device = slices[0].local.device  # one launch serves one device
        backend = sweep_backend(device)
        if backend is None or any(
            s.local.dtype not in backend.FUSED_DTYPES or s.local.device != device for s in slices
        ):
            return None
        self._fused = backend.FusedSweep(slices, [p in self.rounded for _, p, _ in active])
        return self._fused


def block_of(name: str) -> int | None:
    """A parameter's layer index: the first ``.<i>.`` of its name (``encoder.layer.3.attention...``)."""
    found = re.search(r"\.(\d+)\.", name)
    return int(found[1]) if found else None
