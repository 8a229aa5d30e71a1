"""LOZO and LOZO-M (Chen et al., arXiv 2410.07698; code: optsuite/LOZO, ``LOZOtrainer.py``
``lowrank_zo_perturb_parameters``, ``lowrank_zo_update``, ``lowrank_zo_update_momentum``).

MeZO's two-point estimate, with each matrix W (m x n) perturbed along a rank-r direction U V^T: U
(m x r) fresh every step, V (n x r) kept for ``interval`` steps (the paper's nu); vectors (biases,
norms) take MeZO's Gaussian z. One step, two forwards:

    g = (l(theta + eps Z) - l(theta - eps Z)) / (2 eps)
    LOZO:    W <- W (1 - lr wd) - lr g U V^T
    LOZO-M:  N <- beta N + (1 - beta) g U       N (m x r); a new V: N <- beta N V_old^T V / n + ...
             W <- W (1 - lr wd) - lr N V^T;     vectors: b <- beta b + (1 - beta) g z, w -= lr b

As the code (the paper writes g U V^T / r; the lr absorbs the 1 / r), and as the code the first
LOZO-M step sets N = g U. U and V are drawn whole (they are small) from seeds mixed from the step (V:
its interval) and the parameter's name; a parameter sharded by rows takes its rows of U. So, as
MeZO's z, the perturbation is a pure function of (seed, name, row): sharded runs see the same one
and a seed log replays a run bit for bit. State: none (LOZO); N, r / n of each matrix, and one
buffer per vector (LOZO-M).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from mezo_ray.zo.base import ZeroOrderOptimizer
from mezo_ray.zo.cpu_noise import sum_of_products
from mezo_ray.zo.noise import Chunk, NoiseSlice, add_lowrank_, add_scaled_, draw, lowrank_factor, mix_seed
from mezo_ray.zo.record import Closure, StepRecord, check, takes_index

U_STREAM, V_STREAM = 0x1A0, 0x1A1


def _times_small(n: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """n @ m for a small square m (r x r), its r products added in order (see ``add_lowrank_``)."""
    out = n[:, 0:1] * m[0]
    for k in range(1, m.shape[0]):
        out.add_(n[:, k : k + 1] * m[k])
    return out


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^T b (n x r each): on the CPU each entry a fixed-order float64 sum (``sum_of_products``)."""
    if a.device.type != "cpu":
        return a.T @ b
    entries = [
        [sum_of_products(a[:, i].contiguous(), b[:, j].contiguous()) for j in range(b.shape[1])]
        for i in range(a.shape[1])
    ]
    return torch.tensor(entries, dtype=a.dtype)


class LOZO(ZeroOrderOptimizer):
    """LOZO (``beta=0``) or LOZO-M (``beta > 0``): ``step(closure)`` runs two forwards.

    Args: as ``ZeroOrderOptimizer`` (``lr``, ``eps``, ``weight_decay``, ``seed``, ``chunk_numel``,
    ``on_nonfinite``), and ``rank`` (r; the code's RoBERTa default 4), ``interval`` (nu: steps V is
    kept; its default 100), ``beta`` (LOZO-M's momentum; its default 0.9).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-3,
        *,
        rank: int = 4,
        interval: int = 100,
        beta: float = 0.0,
        **kw: Any,
    ):
        check(rank >= 1, "rank", rank, "an integer >= 1")
        check(interval >= 1, "interval", interval, "an integer >= 1")
        check(0 <= beta < 1, "beta", beta, "a number in [0, 1) (0: LOZO, > 0: LOZO-M)")
        super().__init__(params, lr=lr, eps=eps, **kw)
        self.rank, self.interval, self.beta = rank, interval, beta
        self._basis: int | None = None  # LOZO-M: the interval whose V the factors N are expressed in
        self._factors: dict[tuple[str, int, int], torch.Tensor] = {}  # (name, stream, seed) -> factor

    @property
    def state_multiple(self) -> float:
        """LOZO: 0; LOZO-M: N (r / n of each m x n matrix) and a buffer per vector, as a fraction."""
        if not self.beta:
            return 0
        entries = [(p, s.local.numel()) for s, p, _ in self.sweeps.slices()]
        held = sum(n // (p.numel() // p.shape[0]) * self.rank if p.dim() >= 2 else n for p, n in entries)
        return held / max(1, sum(n for _, n in entries))

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one LOZO step; returns the loss at theta + eps Z (nan if skipped). A closure that
        raises leaves the weights at theta (to rounding), and the next step starts afresh."""
        if closure is None:
            raise ValueError("LOZO.step needs a closure that returns the loss")
        seed = mix_seed(self.seed, self.step_count, 0)
        plus, minus = self.two_point(self._perturb, seed, closure, takes_index(closure))
        if not (math.isfinite(plus) and math.isfinite(minus)):
            return self._skip((seed,), (plus, minus))
        record = StepRecord(self.step_count, (seed,), ((plus - minus) / (2 * self.eps),), self._lrs())
        self._commit(record)
        return plus

    def _redo_sweeps(self, record: StepRecord) -> None:
        self.two_point(self._perturb, record.seeds[0], None, False)

    def _passes_of(self, record: StepRecord) -> int:
        return 2

    # ------------------------------------------------------------------------------------------------
    def _factor(self, name: str, rows: int, seed: int, stream: int, like: torch.Tensor) -> torch.Tensor:
        """A factor on ``like``'s device and dtype, drawn once per (name, stream, seed)."""
        key = (name, stream, seed)
        if key not in self._factors:
            if len(self._factors) > 4 * len(self.sweeps.names):  # keep this step's and interval's
                self._factors.clear()
            self._factors[key] = lowrank_factor(name, rows, self.rank, seed, stream).to(like)
        return self._factors[key]

    def _u_v(
        self, s: NoiseSlice, p: torch.Tensor, seed: int, interval: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of U (the step's ``seed``) and the whole V of ``interval``."""
        name, cols = self.sweeps.names[p], p.numel() // p.shape[0]
        first = s.offset // cols
        u = self._factor(name, p.shape[0], seed, U_STREAM, s.local)[first : first + s.local.numel() // cols]
        return u, self._factor(name, cols, mix_seed(self.seed, interval), V_STREAM, s.local)

    def _perturb(self, seed: int, scale: float) -> None:
        """theta += scale * Z(seed): U V^T on matrices (``add_lowrank_``), z on vectors."""
        vectors = []
        for s, p, _ in self.sweeps.active():
            if p.dim() < 2:
                vectors.append(s)
                continue
            u, v = self._u_v(s, p, seed, self.step_count // self.interval)
            add_lowrank_(s.local.view(u.shape[0], v.shape[0]), u, v, scale)

        def perturb_chunk(s: NoiseSlice, c: Chunk) -> None:
            add_scaled_(s.local[c.p_lo : c.p_hi], draw(s, c, seed), scale)

        self.sweeps.for_chunks(perturb_chunk, vectors)

    def _update(self, record: StepRecord) -> None:
        """W <- W (1 - lr wd) - lr g U V^T (LOZO) or - lr N V^T (LOZO-M); vectors likewise with z."""
        self.update_count += 1
        (seed,), (grad,) = record.seeds, record.projected_grads
        lr_of = self._group_lrs(record)
        interval, beta = self.step_count // self.interval, self.beta
        first = self._basis is None  # the code's first LOZO-M step: N = g U, b = g z
        keep, add = (0.0, 1.0) if first else (beta, 1 - beta)
        vectors = {}
        for s, p, group in self.sweeps.active():
            lr, wd = lr_of[id(group)], self._weight_decay(p, group)
            if p.dim() < 2:
                vectors[id(s)] = (s, p, lr, wd)
                continue
            u, v = self._u_v(s, p, seed, interval)
            held = s.local.view(u.shape[0], v.shape[0])
            weights = held.float() if p in self.sweeps.rounded else held  # rounded back below, chunk by chunk
            u, v = u.to(weights.dtype), v.to(weights.dtype)
            if wd:
                weights.mul_(1 - lr * wd)
            if not beta:
                add_lowrank_(weights, u, v, -lr * grad)
                self.sweeps.round_whole(p, s, weights, seed)
                continue
            state = self.state[p]
            if first:
                state["lowrank_momentum"] = u * grad
            elif self._basis != interval:  # a new V: N V_old^T V / n carries N over
                v_old = self._u_v(s, p, seed, self._basis)[1].to(weights.dtype)
                moved = _times_small(state["lowrank_momentum"], _gram(v_old, v)).div_(v.shape[0])
                state["lowrank_momentum"] = add_scaled_(moved.mul_(keep), u, add * grad)
            else:
                add_scaled_(state["lowrank_momentum"].mul_(keep), u, add * grad)
            add_lowrank_(weights, state["lowrank_momentum"], v, -lr)
            self.sweeps.round_whole(p, s, weights, seed)

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            _, p, lr, wd = vectors[id(s)]
            theta, z = s.local[c.p_lo : c.p_hi], draw(s, c, seed)
            work = self.sweeps.working_copy(theta)
            if wd:
                work.mul_(1 - lr * wd)
            if not beta:
                add_scaled_(work, z, -lr * grad)
            else:
                buffer = self.state[p]["momentum_buffer"].view(-1)[c.p_lo : c.p_hi]
                add_scaled_(buffer.mul_(keep), z, add * grad)
                add_scaled_(work, buffer, -lr)
            self.sweeps.round_into(p, theta, work, s, c, seed)

        for s, p, _, _ in vectors.values():
            if beta and "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(s.local)
        self.sweeps.for_chunks(update_chunk, [entry[0] for entry in vectors.values()])
        self._basis = interval

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["mezo"]["lozo_basis"] = self._basis
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._basis = state_dict["mezo"].get("lozo_basis")
        super().load_state_dict(state_dict)
        self._factors.clear()

    def _trajectory_settings(self) -> dict[str, Any]:
        settings = {**self._common_settings("lozo"), "rank": self.rank}
        return {**settings, "interval": self.interval, "beta": self.beta}
