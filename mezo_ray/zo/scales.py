"""MeZO's per-group perturbation scales: the paper code's ``--zo_variant`` (Appendix B.3).

Each group of parameters (the embeddings, the LM head, each layer: ``retrieve_c``) is perturbed by
z / c. ``param_norm``: c is the group's weight norm. ``grad_norm``: c estimates the group's gradient
norm from two forwards with that group alone perturbed (``--use_zo_grad_est``), so it is measured,
recorded in the step's record and replayed. The estimate multiplies z by c (``variance``: unbiased,
Definition 6) or by 1 (``expectation``: Definition 7, ``--change_grad_estimate``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from mezo_ray.zo.cpu_noise import sum_of_products
from mezo_ray.zo.noise import Chunk, NoiseSlice, add_scaled_, draw, local_tensor, mix_seed
from mezo_ray.zo.record import Closure, StepRecord
from mezo_ray.zo.sweeps import Entry, Sweeps, block_of

if TYPE_CHECKING:
    from mezo_ray.zo.base import ZeroOrderOptimizer

SCALES: tuple[str, ...] = ("none", "param_norm", "grad_norm")
# The seed stream of scale='grad_norm''s per-group probes: mix_seed(seed, step, GRAD_NORM_STREAM, group).
GRAD_NORM_STREAM = 0x6E0F


class GroupScales:
    """The scales c of ``sweeps``' parameters (kept in ``sweeps.scales``), set when due."""

    def __init__(self, sweeps: Sweeps, mode: str, estimate: str, rescale_every: int | None) -> None:
        self.sweeps, self.mode, self.estimate, self.rescale_every = sweeps, mode, estimate, rescale_every
        self.group_of = {p: norm_group(name) for p, name in sweeps.names.items()}
        self.groups = list(dict.fromkeys(g for g in self.group_of.values() if g is not None))

    def rescale(
        self,
        opt: ZeroOrderOptimizer,
        closure: Closure | None = None,
        indexed: bool = False,
        record: StepRecord | None = None,
    ) -> tuple[float, ...]:
        """Set the scales where due at ``opt``'s step. Replaying a ``record``, grad_norm's scales and
        sweeps are the recorded ones. Returns grad_norm's measured scales (else ())."""
        if not self.due(opt.step_count):
            return ()
        if self.mode == "param_norm":
            norms = self.param_norms()
        elif record is None:
            assert closure is not None
            norms = [self._probe(opt, i, group, closure, indexed) for i, group in enumerate(self.groups)]
        else:
            norms = list(record.scales)
            for i, group in enumerate(self.groups):
                self._probe(opt, i, group)
        self.set(norms)
        return tuple(norms) if self.mode == "grad_norm" else ()

    def _probe(
        self,
        opt: ZeroOrderOptimizer,
        index: int,
        group: str,
        closure: Closure | None = None,
        indexed: bool = False,
    ) -> float:
        """grad_norm: |l(theta + eps z) - l(theta - eps z)| / (2 eps) with only ``group`` perturbed by
        plain z (the paper code's ``perturb_single_layer``); without a closure, the sweeps alone (replay)."""
        members = [s for s, _, _ in self.members(group)]

        def sweep(seed: int, scale: float) -> None:
            def add(s: NoiseSlice, c: Chunk) -> None:
                add_scaled_(s.local[c.p_lo : c.p_hi], draw(s, c, seed), scale)

            self.sweeps.for_chunks(add, members)

        seed = mix_seed(opt.seed, opt.step_count, GRAD_NORM_STREAM, index)
        plus, minus = opt.two_point(sweep, seed, closure, indexed)
        return abs(plus - minus) / (2 * opt.eps)

    def due(self, step: int) -> bool:
        """At the first step and every ``rescale_every`` steps (the paper: each epoch)."""
        if self.mode == "none":
            return False
        return not self.sweeps.scales or bool(self.rescale_every and step % self.rescale_every == 0)

    def param_norms(self) -> list[float]:
        """Each group's weight norm, in group order."""
        sums = dict.fromkeys(self.groups, 0.0)
        for p, group in self.group_of.items():
            if group is not None:
                sums[group] += squared_norm(p)
        return [math.sqrt(sums[group]) for group in self.groups]

    def set(self, norms: list[float]) -> None:
        """c per parameter from its group's norm (a zero or non-finite norm counts as 1, so the group
        still moves)."""
        by_group = {
            group: norm if math.isfinite(norm) and norm > 0 else 1.0
            for group, norm in zip(self.groups, norms, strict=True)
        }
        self.sweeps.scales = {p: by_group[g] for p, g in self.group_of.items() if g is not None}

    def members(self, group: str) -> list[Entry]:
        """The parameters of ``group`` (grad_norm perturbs them alone)."""
        return [entry for entry in self.sweeps.slices() if self.group_of[entry[1]] == group]

    def factor(self, p: torch.Tensor) -> float:
        """What the estimate multiplies z by: c (unbiased for perturbations z / c), or 1."""
        return self.sweeps.scale_of(p) if self.estimate == "variance" else 1.0


def norm_group(name: str) -> str | None:
    """The paper code's groups for per-group scales (``retrieve_c``): the embeddings, the LM head,
    each layer; None: a parameter outside them (scale 1)."""
    for group in ("embed", "lm_head"):
        if group in name:
            return group
    block = block_of(name)
    return None if block is None else f"layer.{block}"


def squared_norm(p: torch.Tensor) -> float:
    """The sum of squares of a whole parameter, in float64 (a sharded DTensor's all shards): on the
    CPU in a fixed order (the same bits on every CPU), elsewhere by ``torch.sum``."""
    local = local_tensor(p)
    sharded = local is not p and all(type(x).__name__ == "Shard" for x in p.placements)  # FSDP2
    if local.device.type == "cpu" and (local is p or sharded):
        squares = sum_of_products(local, local)
        if local is p:
            return squares
        total = torch.tensor([squares], dtype=torch.float64)  # the shards' sums, added by the collective
        torch.distributed.all_reduce(total, group=p.device_mesh.get_group())
        return float(total)
    squares = torch.sum(p.detach().to(torch.float64) ** 2)
    full = getattr(squares, "full_tensor", None)
    return float(full() if full is not None else squares)
