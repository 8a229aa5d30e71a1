"""MeZO-GV (Jin, Cen, Tan, arXiv 2601.04710: v2 "Steering the Noise: Turning Random Perturbations into
Effective Descent for Memory-Efficient LLM Fine-Tuning"; v1 "Prior-Informed Zeroth-Order Optimization
with Adaptive Direction Alignment for Memory-Efficient LLM Fine-Tuning"; code: stan-anony/MeZO-GV).

What was read, and where:
- the paper's own text: only the abstracts of v2 (https://arxiv.org/html/2601.04710) and v1
  (https://arxiv.org/html/2601.04710v1) were reachable, not its method or experiment sections;
- the step's equations: a third-party summary of v1 (themoonlight.io, "prior-informed-zeroth-order-
  optimization-with-adaptive-direction-alignment-for-memory-efficient-llm-fine-tuning", its "GV-ZO");
- checked against the authors' code, stan-anony/MeZO-GV at 70a2551, ``large_models/
  trainer_fwa_mem_eff.py`` (``_compute_mgfwa_fitness``, ``zo_perturb_parameters``, ``zo_update``),
  which computes the same guiding vector from seeds, with M = 2 and a split ratio of 0.5.

One step t, with a pool of M Gaussian perturbations z_i = z(mix_seed(seed, t, i)), i = 0..M-1:

    l_i = loss(theta + eps z_i)                          M forwards, one-sided (sweep +eps z_i, -eps z_i)
    sort the pool by l_i, ascending; the first K = int(alpha M) are the elite group E, the rest B
    v = (1 / K) sum_{i in E} z_i - (1 / (M - K)) sum_{i in B} z_i          the guiding vector
    g = (loss(theta + eps v) - loss(theta - eps v)) / (2 eps)               two forwards (MeZO along v)
    theta <- theta (1 - lr wd) - lr g v          wd: the group's, none for biases / LayerNorm weights

M + 2 forward passes a step. The record keeps the M seeds and M + 1 coefficients: the weight w_i of
each z_i in v (+1 / K or -1 / (M - K)), then g; from them a seed log redoes every sweep and the update
bit for bit (the weights, not g w_i, so that g = 0 still says what v was). No state between steps:
v is regenerated from the seeds in every sweep, chunk by chunk (scratch: one chunk), never stored.
Like MeZO's z, v is a pure function of (seeds, parameter name, element): data-parallel and sharded
(FSDP Shard(0)) workers see the same v, given the same (all-reduced) losses.

Where we depart from the code:
- z: this package's noise, not torch.normal on a torch generator; seeds ``mix_seed(seed, t, i)``, not
  numpy draws; v is summed in float32 (float64 for float64 weights) and the update rounded once into
  bfloat16 / float16 weights (stochastically by default), where the code sums in the weights' dtype;
- ties between pool losses are broken by pool index (a stable sort; the code's ``torch.argsort`` is
  not stable);
- a non-finite loss skips the step (weights restored): one in the pool skips it before the two-point
  probe (M forwards), one at theta +- eps v after it (M + 2); the code has no such steps.

What the reachable text leaves open, and what we chose:
- the paper's defaults for M and alpha: not reachable. Defaults here are the code's (M = 2,
  alpha = 0.5, so v = z_best - z_worst); K = int(alpha M) as the code computes it; both groups must be
  non-empty (1 <= K <= M - 1), else refused. Note: g v is the same for v and -v, so when K = M - K
  the ranking's direction cannot change the update, and at M = 2 (the code's setting) the pool's
  losses cannot change it at all: the step is MeZO along z_0 - z_1, its M forwards spent for nothing.
  Only M >= 3 lets the losses steer v;
- the step's loss: the code's (loss at theta + eps v), as MeZO returns;
- weight decay: the code's (``args.weight_decay``, with its no-decay name rule), 0 by default.
The code's ``trainer.py`` (the one its ``run.py`` imports) runs another variant, which keeps the best
seed across steps and re-evaluates it (v = z_best - z_worst, one new probe a step); it is not this one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from mezo_ray.zo.base import ZeroOrderOptimizer
from mezo_ray.zo.noise import Chunk, NoiseSlice, add_scaled_, draw, mix_seed
from mezo_ray.zo.noise import scratch as scratch_like
from mezo_ray.zo.record import Closure, StepRecord, check, takes_index


def guide_weights(losses: Sequence[float], elite: int) -> tuple[float, ...]:
    """The weight of each pool member in v: +1 / K for the K lowest losses (ties: lower index first),
    -1 / (M - K) for the others."""
    order = sorted(range(len(losses)), key=lambda i: (losses[i], i))
    top = set(order[:elite])
    rest = len(losses) - elite
    return tuple(1.0 / elite if i in top else -1.0 / rest for i in range(len(losses)))


class MeZOGV(ZeroOrderOptimizer):
    """MeZO-GV: ``step(closure)`` runs M + 2 forwards; no optimizer state.

    Args: as ``ZeroOrderOptimizer`` (``lr``, ``eps``, ``weight_decay``, ``seed``, ``chunk_numel``,
    ``on_nonfinite``, ``no_decay``, ``stochastic_rounding``), and
        pool_size: M, the candidate perturbations scored each step (the code's ``base_fw_size``, 2);
        elite_ratio: alpha, the share of the pool (the lowest losses, K = int(alpha M)) that v points
            toward; the rest it points away from (the code's ``split_ratio``, 0.5).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-3,
        *,
        pool_size: int = 2,
        elite_ratio: float = 0.5,
        **kw: Any,
    ):
        check(
            isinstance(pool_size, int) and not isinstance(pool_size, bool) and pool_size >= 2,
            "pool_size",
            pool_size,
            "an integer >= 2 (v contrasts a low-loss group with a high-loss one)",
        )
        check(
            isinstance(elite_ratio, (int, float))
            and not isinstance(elite_ratio, bool)
            and 0 < elite_ratio < 1
            and int(pool_size * elite_ratio) >= 1,
            "elite_ratio",
            elite_ratio,
            f"a number in (0, 1) with int(elite_ratio * pool_size) >= 1 (pool_size={pool_size})",
        )
        super().__init__(params, lr=lr, eps=eps, **kw)
        self.pool_size = pool_size
        self.elite_ratio = float(elite_ratio)
        self.elite = int(pool_size * elite_ratio)

    @property
    def state_multiple(self) -> int:
        return 0

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one MeZO-GV step; returns the loss at theta + eps v (nan if skipped). A closure that
        raises leaves the weights at theta (to rounding), and the next step starts afresh."""
        if closure is None:
            raise ValueError("MeZOGV.step needs a closure that returns the loss")
        indexed = takes_index(closure)
        seeds = tuple(mix_seed(self.seed, self.step_count, i) for i in range(self.pool_size))
        losses = self.one_sided(self.sweeps.perturb, seeds, closure, indexed)
        if not all(math.isfinite(v) for v in losses):
            return self._skip(seeds, losses)
        weights = guide_weights(losses, self.elite)
        along = self._along(seeds, weights)
        plus, minus = self.two_point(along, seeds[0], closure, indexed, k=self.pool_size)
        if not (math.isfinite(plus) and math.isfinite(minus)):
            try:
                return self._skip(seeds, (*losses, plus, minus))
            finally:  # the record keeps v's weights: a replay redoes the sweeps along v
                self.trajectory[-1] = dataclasses.replace(self.trajectory[-1], projected_grads=weights)
        grad = (plus - minus) / (2 * self.eps)
        self._commit(StepRecord(self.step_count, seeds, (*weights, grad), self._lrs()))
        return plus

    def _redo_sweeps(self, record: StepRecord) -> None:
        for seed in record.seeds:
            self.sweeps.perturb(seed, self.eps)
            self.sweeps.perturb(seed, -self.eps)
        if record.projected_grads:  # the step got as far as the two-point probe along v
            weights = record.projected_grads[: len(record.seeds)]
            self.two_point(self._along(record.seeds, weights), record.seeds[0], None, False)

    def _passes_of(self, record: StepRecord) -> int:
        return len(record.seeds) + (2 if record.projected_grads else 0)

    # ------------------------------------------------------------------------------------------------
    def _guide(self, s: NoiseSlice, c: Chunk, seeds: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
        """v = sum_i w_i z_i for one chunk (scratch slot 1; float32, float64 for float64 weights), the
        terms added in pool order."""
        v = scratch_like(s.local[c.p_lo : c.p_hi], slot=1).zero_()
        for seed, w in zip(seeds, weights, strict=True):
            add_scaled_(v, draw(s, c, seed), w)
        return v

    def _along(self, seeds: Sequence[int], weights: Sequence[float]) -> Callable[[int, float], None]:
        """The sweep ``two_point`` takes: ``sweep(_, a)`` adds a * v to the weights, one pass."""

        def sweep(_seed: int, scale: float) -> None:
            def perturb_chunk(s: NoiseSlice, c: Chunk) -> None:
                add_scaled_(s.local[c.p_lo : c.p_hi], self._guide(s, c, seeds, weights), scale)

            self.sweeps.for_chunks(perturb_chunk)

        return sweep

    def _update(self, record: StepRecord) -> None:
        """theta <- theta (1 - lr wd) - lr g v: one sweep, M draws of z per chunk."""
        self.update_count += 1
        seeds, weights, grad = record.seeds, record.projected_grads[:-1], record.projected_grads[-1]
        lr_of = self._group_lrs(record)
        active = self.sweeps.active()
        entries = {id(s): (p, g) for s, p, g in active}

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            p, group = entries[id(s)]
            lr = lr_of[id(group)]
            wd = self._weight_decay(p, group)
            theta = s.local[c.p_lo : c.p_hi]
            v = self._guide(s, c, seeds, weights)
            work = self.sweeps.working_copy(theta)
            if wd:
                work.mul_(1 - lr * wd)
            add_scaled_(work, v, -lr * grad)
            self.sweeps.round_into(p, theta, work, s, c, seeds[0])

        self.sweeps.for_chunks(update_chunk, [s for s, _, _ in active])

    def _trajectory_settings(self) -> dict[str, Any]:
        return {
            **self._common_settings("mezo_gv"),
            "pool_size": self.pool_size,
            "elite_ratio": self.elite_ratio,
        }
