"""AdaMeZO (Cai, Chen, Zhu, ICML 2026, arXiv 2605.00650; code: shawnnn3di/AdaMeZO at 4412153b, the
update in ``MeZO/medium_models/src/trainer.py`` (``train``, the ``hw`` branch after the two-point
estimate) and the same one in ``MeZO/large_models/trainer.py`` ``zo_update``; its settings: ``hw``,
``beta1``, ``beta2`` in ``run.py``, the README's example ``HESS_WINDOW=10 BETA1=0.7 BETA2=0.9``).

MeZO's two-point estimate, then an Adam-style step whose moments are not kept: each step rebuilds them
from the last W steps' seeds and projected gradients (the seed log), regenerating every z. Step t, with
z_t = z(seed_t) and updates counted from 0:

    g_t = (loss(theta + eps z_t) - loss(theta - eps z_t)) / (2 eps)          two forwards
    m_t = sum_{j=0..W-1} beta1^j g_{t-j} z_{t-j}
    v_t = sum_{j=0..W-1} beta2^j g_{t-j}^2 z_{t-j}^2      (elementwise; v_t = 1 when beta2 = 0)
    theta <- theta (1 - lr wd) - lr * gain * m_t / (sqrt(v_t) + adam_eps)      for t > W
    theta <- theta (1 - lr wd) - lr g_t z_t                                     for t <= W (MeZO)

wd: the group's weight decay, none for biases and LayerNorm weights (the code's name rule, our
``no_decay``). The code's constants: gain 100 and adam_eps 1e-5 (``temp_grad / (temp_hess ** 0.5 +
1e-5) * 100``); its warm-up: plain MeZO while ``total_steps <= hw`` (W + 1 updates), and always when
hw < 2 (refused here: use MeZO). The record keeps (seed_t,) and (g_t,), so a seed log replays the
weights exactly; the window itself, W (seed, g) pairs, is saved in the state dict (``"mezo"`` part,
JSON) so a resume continues bit for bit. No per-parameter state: a step's moments live in two
chunk-sized scratch buffers per thread.

Where we depart (the code is followed where the paper differs):
- the paper's truncated moments carry (1 - beta1) and (1 - beta2) factors and divide by
  sqrt(v + eps); the code has neither factor, adds eps outside the square root and multiplies by 100:
  we follow the code (neither has bias correction);
- z: this package's noise (a pure function of seed, name, element), not torch.normal on a CUDA
  generator; seeds ``mix_seed(seed, step, 0)``, not numpy draws;
- m and v are summed in float32 (float64 for float64 weights) and the update rounded once into
  bfloat16 / float16 weights (stochastically by default), where the code sums in the weights' dtype
  (float16 under ``--load_float16``);
- a step with a non-finite loss is skipped: it neither enters the window nor counts toward the
  warm-up (the code has no such steps);
- only the last W (seed, g) pairs are kept, not the whole history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from mezo_ray.zo.base import ZeroOrderOptimizer
from mezo_ray.zo.noise import Chunk, NoiseSlice, add_scaled_, draw, mix_seed
from mezo_ray.zo.noise import scratch as scratch_like
from mezo_ray.zo.record import Closure, StepRecord, check, takes_index

WINDOW_KEY = "adamezo_window"  # the state dict's "mezo" entry holding the window's [seed, g] pairs


class AdaMeZO(ZeroOrderOptimizer):
    """AdaMeZO: ``step(closure)`` runs two forwards; no optimizer state but the last ``window`` seeds
    and projected gradients.

    Args: as ``ZeroOrderOptimizer`` (``lr``, ``eps``, ``weight_decay``, ``seed``, ``chunk_numel``,
    ``on_nonfinite``, ``no_decay``, ``stochastic_rounding``), and
        window: W, the steps the moments are rebuilt from (the code's ``hw``; 10 in its README);
        beta1, beta2: the moments' decays (0.7, 0.9: ``run.py``'s defaults and the README's);
            beta2 = 0 drops the second moment (v = 1), as the code does;
        adam_eps: added to sqrt(v) (the code's 1e-5);
        gain: the step's factor (the code's 100).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-3,
        *,
        window: int = 10,
        beta1: float = 0.7,
        beta2: float = 0.9,
        adam_eps: float = 1e-5,
        gain: float = 100.0,
        **kw: Any,
    ):
        check(
            isinstance(window, int) and not isinstance(window, bool) and window >= 2,
            "window",
            window,
            "an integer >= 2 (the code runs plain MeZO for a window under 2: use MeZO)",
        )
        check(0 <= beta1 <= 1, "beta1", beta1, "a number in [0, 1]")
        check(0 <= beta2 <= 1, "beta2", beta2, "a number in [0, 1]")
        check(adam_eps > 0, "adam_eps", adam_eps, "a number > 0")
        check(gain > 0, "gain", gain, "a number > 0")
        super().__init__(params, lr=lr, eps=eps, **kw)
        self.window = window
        self.beta1 = beta1
        self.beta2 = beta2
        self.adam_eps = adam_eps
        self.gain = gain
        self._window: list[tuple[int, float]] = []  # (seed, g) of the last `window` updates, oldest first

    @property
    def state_multiple(self) -> int:
        return 0

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one AdaMeZO step; returns the loss at theta + eps z, as MeZO does (nan if skipped). A
        closure that raises leaves the weights at theta (to rounding), and the next step starts afresh."""
        if closure is None:
            raise ValueError("AdaMeZO.step needs a closure that returns the loss")
        indexed = takes_index(closure)
        seed = mix_seed(self.seed, self.step_count, 0)
        loss_plus, loss_minus = self.two_point(self.sweeps.perturb, seed, closure, indexed)
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            return self._skip((seed,), (loss_plus, loss_minus))
        grad = (loss_plus - loss_minus) / (2 * self.eps)
        self._commit(StepRecord(self.step_count, (seed,), (grad,), self._lrs()))
        return loss_plus

    def _redo_sweeps(self, record: StepRecord) -> None:
        self.two_point(self.sweeps.perturb, record.seeds[0], None, False)

    def _passes_of(self, record: StepRecord) -> int:
        return 2

    # ------------------------------------------------------------------------------------------------
    def _update(self, record: StepRecord) -> None:
        """MeZO's update for the first W + 1 updates, then the rebuilt moments' step: one sweep, W draws
        of z per chunk."""
        (seed,), (grad,) = record.seeds, record.projected_grads
        window = [*self._window, (seed, grad)][-self.window :]
        adam = self.update_count > self.window  # updates before this one; the code's total_steps > hw
        self.update_count += 1
        # newest first: (seed, beta1^j g, beta2^j g^2), j steps back
        terms = [(s, g * self.beta1**j, g * g * self.beta2**j) for j, (s, g) in enumerate(reversed(window))]
        lr_of = self._group_lrs(record)
        active = self.sweeps.active()
        entries = {id(s): (p, group) for s, p, group in active}

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            p, group = entries[id(s)]
            lr = lr_of[id(group)]
            wd = self._weight_decay(p, group)
            theta = s.local[c.p_lo : c.p_hi]
            step = self._moment_step(s, c, terms) if adam else None
            work = self.sweeps.working_copy(theta)
            if wd:
                work.mul_(1 - lr * wd)
            if step is None:
                add_scaled_(work, draw(s, c, seed), -lr * grad)
            else:
                add_scaled_(work, step, -lr * self.gain)
            self.sweeps.round_into(p, theta, work, s, c, seed)

        self.sweeps.for_chunks(update_chunk, [s for s, _, _ in active])
        self._window = window

    def _moment_step(self, s: NoiseSlice, c: Chunk, terms: list[tuple[int, float, float]]) -> torch.Tensor:
        """m / (sqrt(v) + adam_eps) for one chunk (scratch slot 1), m and v summed over the window in
        float32 (float64 for float64 weights)."""
        like = s.local[c.p_lo : c.p_hi]
        m = scratch_like(like, slot=1).zero_()
        v = scratch_like(like, slot=2)
        if self.beta2 == 0:
            v.fill_(1.0)
        else:
            v.zero_()
        for seed, a, b in terms:
            z = draw(s, c, seed)
            add_scaled_(m, z, a)
            if self.beta2 != 0:  # z^2 in v's dtype: float64 weights square z in float64
                square = z if z.dtype == v.dtype else scratch_like(like, slot=3).copy_(z)
                add_scaled_(v, square.mul_(square), b)
        torch.sqrt(v, out=v).add_(self.adam_eps)
        return m.div_(v)

    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["mezo"][WINDOW_KEY] = [[s, g] for s, g in self._window]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        extra = state_dict["mezo"]
        self.check_compatible(extra)  # the settings (estimator, window, betas, ...) first
        if WINDOW_KEY not in extra:
            raise ValueError(
                f"AdaMeZO: the state dict has no {WINDOW_KEY!r} (the last steps' seeds and projected "
                "gradients the moments are rebuilt from); it was not saved by AdaMeZO"
            )
        super().load_state_dict(state_dict)
        self._window = [(int(s), float(g)) for s, g in extra[WINDOW_KEY]]

    def _trajectory_settings(self) -> dict[str, Any]:
        settings = {**self._common_settings("adamezo"), "window": self.window}
        return {
            **settings,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "adam_eps": self.adam_eps,
            "gain": self.gain,
        }
