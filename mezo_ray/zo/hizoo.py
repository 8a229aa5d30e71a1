"""HiZOO (Zhao et al., arXiv 2402.15173; code: Yanjun-Zhao/HiZOO, ``trainer.py`` ``zo_Hessian_step_update``).

MeZO whose perturbation is scaled by a diagonal Hessian estimate H (one buffer the size of the
parameters, starting at 1). One step, with z of the step's seed:

    l_0 = loss(theta);  l+ = loss(theta + eps z / sqrt(H));  l- = loss(theta - eps z / sqrt(H))
    H <- (1 - a) H + a |l+ + l- - 2 l_0| / (2 eps^2) * H z^2          a: ``hessian_smooth``
    theta <- theta - lr ((l+ - l-) / (2 eps) * z / sqrt(H) + wd theta)    with the updated H

Three forwards a step. Its record keeps the two scalars, (l+ - l-) / (2 eps) and
|l+ + l- - 2 l_0| / (2 eps^2), so a seed log replays H and the weights exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from mezo_ray.zo.base import ZeroOrderOptimizer
from mezo_ray.zo.noise import Chunk, NoiseSlice, draw, mix_seed
from mezo_ray.zo.noise import scratch as scratch_like
from mezo_ray.zo.record import Closure, StepRecord, check, takes_index


class HiZOO(ZeroOrderOptimizer):
    """HiZOO: ``step(closure)`` runs three forwards; state: the diagonal Hessian estimate (1x)."""

    def __init__(
        self, params: Iterable[Any], lr: float, eps: float = 1e-3, *, hessian_smooth: float = 1e-8, **kw: Any
    ):
        check(0 <= hessian_smooth <= 1, "hessian_smooth", hessian_smooth, "a number in [0, 1]")
        super().__init__(params, lr=lr, eps=eps, **kw)
        self.hessian_smooth = hessian_smooth

    @property
    def state_multiple(self) -> int:
        return 1

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one HiZOO step; returns the loss at theta (nan if skipped). A closure that raises leaves
        the weights at theta (to rounding), and the next step starts afresh."""
        if closure is None:
            raise ValueError("HiZOO.step needs a closure that returns the loss")
        indexed = takes_index(closure)
        seed = mix_seed(self.seed, self.step_count, 0)
        self._init_hessian()
        loss_0 = self._loss_at(closure, 0, indexed)
        loss_plus, loss_minus = self.two_point(self._perturb, seed, closure, indexed, k=1)
        losses = (loss_0, loss_plus, loss_minus)
        if not all(math.isfinite(v) for v in losses):
            return self._skip((seed,), losses)
        grad = (loss_plus - loss_minus) / (2 * self.eps)
        curvature = abs(loss_plus + loss_minus - 2 * loss_0) / (2 * self.eps**2)
        record = StepRecord(self.step_count, (seed,), (grad, curvature), self._lrs())
        self._commit(record)
        return loss_0

    def _redo_sweeps(self, record: StepRecord) -> None:
        self._init_hessian()
        self.two_point(self._perturb, record.seeds[0], None, False)

    def _passes_of(self, record: StepRecord) -> int:
        return 3

    # ------------------------------------------------------------------------------------------------
    def _init_hessian(self) -> None:
        for s, p, _ in self.sweeps.slices():
            if "hessian" not in self.state[p]:
                self.state[p]["hessian"] = torch.ones_like(s.local)

    def _hessian(self, p: torch.Tensor, c: Chunk) -> torch.Tensor:
        return self.state[p]["hessian"].view(-1)[c.p_lo : c.p_hi]

    def _perturb(self, seed: int, scale: float) -> None:
        """theta += scale * z / sqrt(H): one sweep."""
        param_of = {id(s): p for s, p, _ in self.sweeps.active()}

        def perturb_chunk(s: NoiseSlice, c: Chunk) -> None:
            step = scratch_like(s.local[c.p_lo : c.p_hi], slot=1)
            torch.rsqrt(self._hessian(param_of[id(s)], c), out=step)
            s.local[c.p_lo : c.p_hi].add_(step.mul_(draw(s, c, seed)).mul_(scale))

        self.sweeps.for_chunks(perturb_chunk)

    def _update(self, record: StepRecord) -> None:
        """H <- (1 - a) H + a k H z^2, then theta <- theta (1 - lr wd) - lr g z / sqrt(H): one sweep."""
        self.update_count += 1
        (seed,), (grad, curvature) = record.seeds, record.projected_grads
        lr_of = self._group_lrs(record)
        entries = {id(s): (p, g) for s, p, g in self.sweeps.active()}
        a = self.hessian_smooth

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            p, group = entries[id(s)]
            lr = lr_of[id(group)]
            wd = self._weight_decay(p, group)
            theta, hessian, z = s.local[c.p_lo : c.p_hi], self._hessian(p, c), draw(s, c, seed)
            estimate = scratch_like(theta, slot=1)
            torch.mul(hessian, z, out=estimate).mul_(z).mul_(a * curvature)  # a k H z^2
            hessian.mul_(1 - a).add_(estimate)
            torch.rsqrt(hessian, out=estimate)
            work = self.sweeps.working_copy(theta)
            if wd:
                work.mul_(1 - lr * wd)
            work.add_(estimate.mul_(z).mul_(-lr * grad))
            self.sweeps.round_into(p, theta, work, s, c, seed)

        self.sweeps.for_chunks(update_chunk)

    def _trajectory_settings(self) -> dict[str, Any]:
        return {**self._common_settings("hizoo"), "hessian_smooth": self.hessian_smooth}
