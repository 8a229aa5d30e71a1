"""FZOO (Dang et al., arXiv 2506.09034; code: DKmiyan/FZOO, ``trainer.py`` ``zo_step`` / ``zo_update``).

One step, with N Rademacher probes u_k (+-1 per element) of their own seeds:

    l_k = loss(theta + eps u_k)           for k = 1..N   (sweeps: +eps u_k, then -eps u_k back)
    l_0 = loss(theta)                      one forward: N + 1 in all, shared by every probe
    theta <- theta - lr * sum_k (l_k - l_0) / (N sigma) * u_k,   sigma = std(l_1..l_N) (population)

Dividing by sigma instead of eps makes the step a normalised SGD step whose size adapts to how much
the probes' losses spread. u_k is the sign of this package's Gaussian z for the same seed, so it is a
pure function of (seed, parameter name, element index) like MeZO's noise: data-parallel and sharded
runs see the same u, and a step is replayed exactly from its record (seeds, coefficients, lrs).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

import torch

from mezo_ray.zo.base import ZeroOrderOptimizer
from mezo_ray.zo.noise import Chunk, NoiseSlice, add_scaled_, draw, mix_seed
from mezo_ray.zo.noise import scratch as scratch_like
from mezo_ray.zo.record import Closure, StepRecord, check, takes_index


class FZOO(ZeroOrderOptimizer):
    """FZOO: ``step(closure)`` runs N + 1 forwards; no backward, no optimizer state.

    Args: as ``ZeroOrderOptimizer`` (``lr``, ``eps``, ``seed``, ``chunk_numel``, ``on_nonfinite``), and
    ``n_probes``: N, the paper's ``FORWARD_N`` (8 in its scripts). The update has no weight decay (the
    paper's has none).
    """

    def __init__(self, params: Iterable[Any], lr: float, eps: float = 1e-4, *, n_probes: int = 8, **kw: Any):
        check(n_probes >= 2, "n_probes", n_probes, "an integer >= 2 (the step divides by the losses' spread)")
        super().__init__(params, lr=lr, eps=eps, **kw)
        self.n_probes = n_probes

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one FZOO step; returns the loss at theta (nan if the step was skipped). A closure that
        raises leaves the weights at theta (to rounding), and the next step starts afresh."""
        if closure is None:
            raise ValueError("FZOO.step needs a closure that returns the loss")
        indexed = takes_index(closure)
        seeds = tuple(mix_seed(self.seed, self.step_count, k) for k in range(self.n_probes))
        losses = self.one_sided(self._probe, seeds, closure, indexed)
        loss_0 = self._loss_at(closure, self.n_probes, indexed)
        if not all(math.isfinite(v) for v in (*losses, loss_0)):
            return self._skip(seeds, (*losses, loss_0))
        spread = statistics.pstdev(losses)
        coefs = tuple((v - loss_0) / (self.n_probes * spread) if spread > 0 else 0.0 for v in losses)
        record = StepRecord(self.step_count, seeds, coefs, self._lrs())
        self._commit(record)
        return loss_0

    def _redo_sweeps(self, record: StepRecord) -> None:
        for seed in record.seeds:
            self._probe(seed, self.eps)
            self._probe(seed, -self.eps)

    def _passes_of(self, record: StepRecord) -> int:
        return len(record.seeds) + 1

    # ------------------------------------------------------------------------------------------------
    def _probe(self, seed: int, scale: float) -> None:
        """theta += scale * u(seed), u = sign(z(seed)): one sweep."""

        def probe_chunk(s: NoiseSlice, c: Chunk) -> None:
            add_scaled_(s.local[c.p_lo : c.p_hi], draw(s, c, seed).sign_(), scale)

        self.sweeps.for_chunks(probe_chunk)

    def _update(self, record: StepRecord) -> None:
        """theta <- theta - lr * sum_k coef_k u_k: one sweep, N draws per chunk."""
        self.update_count += 1
        lr_of = self._group_lrs(record)
        active = self.sweeps.active()
        entries = {id(s): (p, g) for s, p, g in active}

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            p, group = entries[id(s)]
            theta = s.local[c.p_lo : c.p_hi]
            step = scratch_like(theta, slot=1).zero_()
            for seed, coef in zip(record.seeds, record.projected_grads, strict=True):
                add_scaled_(step, draw(s, c, seed).sign_(), coef)
            work = self.sweeps.working_copy(theta)
            add_scaled_(work, step, -lr_of[id(group)])
            self.sweeps.round_into(p, theta, work, s, c, record.seeds[-1])

        self.sweeps.for_chunks(update_chunk, [s for s, _, _ in active])

    @property
    def state_multiple(self) -> int:
        return 0

    def _trajectory_settings(self) -> dict[str, Any]:
        return {**self._common_settings("fzoo"), "n_probes": self.n_probes}
