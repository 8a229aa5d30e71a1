"""BSZO (Feng, Huang, arXiv 2601.01452; code: AeonianQuill/BSZO at 63d87bf5, ``bszo_optimizer_v3.py``
``BayesianSubspaceGradient`` and ``BSZOOptimizer._bayesian_gradient_estimation_efficient`` /
``optimize_on_batch``, the ``--trainer=bszo_v3`` that the README runs; its settings: ``run.py``'s
``bszo_*`` / ``bayesian_*`` arguments and the README's command).

A Kalman filter over the gradient's coefficients c in a random k-dim subspace span(z_0..z_{k-1}),
fed with finite differences along the subspace's axes. Step t, z_i = z(mix_seed(seed, t, i)):

    l_0 = loss(theta)                                                           one forward
    y_j = (loss(theta + eps z_i) - l_0) / eps,  i = j mod k,  j < J             one-sided: 1 forward
    y_j = (loss(theta + eps z_i) - loss(theta - eps z_i)) / (2 eps)             two-sided: 2 forwards
      J = min(m, k) with adaptive sampling (the later samples reuse y), else m

    prior, reset each step: c ~ N(mu = 0, Sigma = sp^2 I_k)
    for j = 0..m-1, an observation y of c_i (the axis d = e_i):
        i = j mod k, y = y_j                        while j < k (or without adaptive sampling)
        i = argmax_i Sigma_ii, y = the cached y_i   adaptive sampling, j >= k: the axis of most variance
        r = y - mu_i
        a <- (1 - alpha) a + alpha r^2;  sn = max(0.1 sn_0, sqrt(a))   adaptive noise (a kept across steps)
        K = Sigma_ii / (Sigma_ii + sn^2);  mu_i <- mu_i + K r;  Sigma_ii <- Sigma_ii - K Sigma_ii
        Sigma <- Sigma + 1e-10 I
    theta <- theta (1 - lr wd) - lr sum_i mu_i z_i          (a term with |mu_i| <= 1e-10 is dropped)

Forward passes: 1 + J (one-sided) or 1 + 2 J. Every observation is along an axis, so the code's full
k x k Kalman update never leaves the diagonal (its off-diagonal entries stay exact zeros): Sigma is
kept as its diagonal, with the code's arithmetic, and the filter is k scalar filters sharing sn.
sp and sn_0 default to the code's "auto", sqrt(n / 1e6), n the trained parameters' element count; a
starts at sn_0^2. The record keeps the step's seeds and observations (y_0..y_{J-1}); ``_update`` runs
the filter from them, so a seed log replays mu, a and the weights exactly. State between steps: a,
one float, in the state dict's ``"mezo"`` part (JSON); the posterior itself is reset every step.

Where we depart (the code is followed; the paper's text beyond its abstract was not reachable here):
- the axis of most variance: argmax of Sigma's diagonal, ties to the lowest index; the code takes
  argmax |v| of numpy's top eigenvector v of Sigma, the same axis when the maximum is unique;
- squares are products (r * r, sn * sn, sp * sp), correctly rounded everywhere; the code's ``** 2``
  calls libm's pow, which can differ in the last bit (otherwise the filter's floats are the code's);
- z: this package's noise (a pure function of seed, name, element), not torch.normal after
  torch.manual_seed per seed; seeds ``mix_seed(seed, step, i)``, not numpy draws;
- the update is one sweep computed in float32 (float64 for float64 weights) and rounded once into
  bfloat16 / float16 weights (stochastically by default); the code adds each mu_i z_i in the weights'
  dtype;
- weight decay (per group, none for biases and LayerNorm weights): the code has none (0, the default);
- a step with a non-finite loss is skipped and leaves a untouched (the code has no such steps);
- ``bszo_iter_per_step`` (several filter-and-update rounds on one batch, default 1) is not offered;
- k, m and one_sided default to the README's command (k = 2, m = 3, one-sided; its lr 1e-7, eps
  1e-4), not to ``run.py``'s (k = 1, m = 4, two-sided); eps keeps this package's 1e-3 (``run.py``'s
  ``zo_eps``). The code's ``bszo_optimizer_v4.py`` differs: its samples
  j >= k each take a new forward along Sigma's top eigenvector (1 + m forwards); the README runs v3,
  whose log line ``fwd/step`` = 1 + m over-counts its passes when m > k.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mezo_ray.zo.base import ZeroOrderOptimizer
from mezo_ray.zo.noise import Chunk, NoiseSlice, add_scaled_, draw, mix_seed
from mezo_ray.zo.record import Closure, StepRecord, check, takes_index

NOISE_EMA_KEY = "bszo_noise_ema"  # the state dict's "mezo" entry holding a, the residuals' EMA
JITTER = 1e-10  # the code's Sigma + 1e-10 I after each observation
NEGLIGIBLE = 1e-10  # the code skips the update of a z_i whose |mu_i| is at most this
NOISE_FLOOR = 0.1  # sn >= 0.1 sn_0


def _whole_number(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _positive_or_auto(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
    )


def kalman_posterior(
    observations: Sequence[float],
    k: int,
    m: int,
    *,
    adaptive_sampling: bool,
    adaptive_noise: bool,
    alpha: float,
    sigma_prior: float,
    sigma_noise: float,
    noise_ema: float,
) -> tuple[tuple[float, ...], float]:
    """(mu, a after the step): the code's m Kalman observations of c from a fresh prior, in float64
    (Python floats, the same bits on every machine), ``observations`` the step's y_j."""
    mu = [0.0] * k
    var = [sigma_prior * sigma_prior] * k  # Sigma's diagonal; the rest stays 0
    noise = sigma_noise
    cached: dict[int, float] = {}
    for j in range(m):
        if adaptive_sampling and j >= k:
            i = max(range(k), key=var.__getitem__)  # the first axis of largest variance
            y = cached[i]
        else:
            i, y = j % k, observations[j]
            cached[i] = y
        residual = y - mu[i]
        if adaptive_noise:
            noise_ema = (1 - alpha) * noise_ema + alpha * (residual * residual)
            noise = max(sigma_noise * NOISE_FLOOR, math.sqrt(noise_ema))
        gain = var[i] / (var[i] + noise * noise)
        mu[i] = mu[i] + gain * residual
        var[i] = var[i] - gain * var[i]
        var = [v + JITTER for v in var]
    return tuple(mu), noise_ema


class BSZO(ZeroOrderOptimizer):
    """BSZO: ``step(closure)`` runs 1 + J (one-sided) or 1 + 2 J forwards, J = min(m, k) with adaptive
    sampling, else m; no optimizer state but a, one float (the residuals' EMA).

    Args: as ``ZeroOrderOptimizer`` (``lr``, ``eps``, ``weight_decay``, ``seed``, ``chunk_numel``,
    ``on_nonfinite``, ``no_decay``, ``stochastic_rounding``), and
        subspace_dim: k, the directions a step draws (the code's ``bszo_fixed_subspace_dim``; 2 in
            the README, "2 recommended" in ``run.py``);
        n_samples: m, the Kalman observations a step makes (``bayesian_num_samples``; 3 in the README);
        one_sided: y from loss(theta + eps z) - loss(theta) (True, the README's), or the central
            difference (``bayesian_one_sided``);
        adaptive_sampling: samples j >= k re-observe the axis of most posterior variance with its
            cached y, no forward (``bayesian_adaptive_sampling``; True);
        adaptive_noise: sn from the residuals' EMA (``bayesian_adaptive_noise``; True);
        noise_ema_alpha: that EMA's coefficient (``bayesian_noise_ema_alpha``; 0.1);
        sigma_prior, sigma_noise: sp and sn_0 (``bayesian_sigma_prior`` / ``_noise``); None, the
            code's "auto": sqrt(n / 1e6), n the element count of the parameters given.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-3,
        *,
        subspace_dim: int = 2,
        n_samples: int = 3,
        one_sided: bool = True,
        adaptive_sampling: bool = True,
        adaptive_noise: bool = True,
        noise_ema_alpha: float = 0.1,
        sigma_prior: float | None = None,
        sigma_noise: float | None = None,
        **kw: Any,
    ):
        check(_whole_number(subspace_dim, 1), "subspace_dim", subspace_dim, "an integer >= 1")
        check(_whole_number(n_samples, 1), "n_samples", n_samples, "an integer >= 1")
        for field, flag in (
            ("one_sided", one_sided),
            ("adaptive_sampling", adaptive_sampling),
            ("adaptive_noise", adaptive_noise),
        ):
            check(isinstance(flag, bool), field, flag, "True or False")
        check(0 <= noise_ema_alpha <= 1, "noise_ema_alpha", noise_ema_alpha, "a number in [0, 1]")
        check(
            _positive_or_auto(sigma_prior), "sigma_prior", sigma_prior, "a finite number > 0, or None (auto)"
        )
        check(
            _positive_or_auto(sigma_noise), "sigma_noise", sigma_noise, "a finite number > 0, or None (auto)"
        )
        super().__init__(params, lr=lr, eps=eps, **kw)
        self.subspace_dim = subspace_dim
        self.n_samples = n_samples
        self.one_sided = one_sided
        self.adaptive_sampling = adaptive_sampling
        self.adaptive_noise = adaptive_noise
        self.noise_ema_alpha = float(noise_ema_alpha)
        auto = math.sqrt(sum(s.numel for s, _, _ in self.sweeps.slices()) / 1e6)
        self.sigma_prior = auto if sigma_prior is None else float(sigma_prior)
        self.sigma_noise = auto if sigma_noise is None else float(sigma_noise)
        check(self.sigma_prior > 0, "sigma_prior", sigma_prior, "parameters to train (auto: none given)")
        self._noise_ema = self.sigma_noise * self.sigma_noise  # a, the code's residual_sq_ema
        self.last_posterior: tuple[float, ...] = ()  # mu of the last update

    @property
    def evaluations(self) -> int:
        """J, the finite differences a step evaluates."""
        return min(self.n_samples, self.subspace_dim) if self.adaptive_sampling else self.n_samples

    @property
    def passes_per_step(self) -> int:
        return 1 + (1 if self.one_sided else 2) * self.evaluations

    @property
    def state_multiple(self) -> int:
        return 0

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one BSZO step; returns the loss at theta (nan if skipped). A closure that raises leaves
        the weights at theta (to rounding), and the next step starts afresh."""
        if closure is None:
            raise ValueError("BSZO.step needs a closure that returns the loss")
        indexed = takes_index(closure)
        seeds = tuple(mix_seed(self.seed, self.step_count, i) for i in range(self.subspace_dim))
        loss_0 = self._loss_at(closure, 0, indexed)
        losses, observations = [loss_0], []
        for j in range(self.evaluations):
            seed = seeds[j % self.subspace_dim]
            if self.one_sided:
                self.sweeps.perturb(seed, self.eps)
                try:
                    plus = self._loss_at(closure, 1 + j, indexed)
                finally:
                    self.sweeps.perturb(seed, -self.eps)
                losses.append(plus)
                observations.append((plus - loss_0) / self.eps)
            else:
                plus, minus = self.two_point(self.sweeps.perturb, seed, closure, indexed, k=1 + 2 * j)
                losses += [plus, minus]
                observations.append((plus - minus) / (2 * self.eps))
        if not all(math.isfinite(v) for v in (*losses, *observations)):
            return self._skip(seeds, losses)
        self._commit(StepRecord(self.step_count, seeds, tuple(observations), self._lrs()))
        return loss_0

    def _redo_sweeps(self, record: StepRecord) -> None:
        for j in range(self.evaluations):
            seed = record.seeds[j % self.subspace_dim]
            if self.one_sided:
                self.sweeps.perturb(seed, self.eps)
                self.sweeps.perturb(seed, -self.eps)
            else:
                self.two_point(self.sweeps.perturb, seed, None, False)

    def _passes_of(self, record: StepRecord) -> int:
        return self.passes_per_step

    # ------------------------------------------------------------------------------------------------
    def _update(self, record: StepRecord) -> None:
        """The filter from the recorded y (mu, and a for the next step), then theta <- theta (1 - lr wd)
        - lr sum_i mu_i z_i: one sweep, k draws per chunk."""
        mu, self._noise_ema = kalman_posterior(
            record.projected_grads,
            self.subspace_dim,
            self.n_samples,
            adaptive_sampling=self.adaptive_sampling,
            adaptive_noise=self.adaptive_noise,
            alpha=self.noise_ema_alpha,
            sigma_prior=self.sigma_prior,
            sigma_noise=self.sigma_noise,
            noise_ema=self._noise_ema,
        )
        self.last_posterior = mu
        self.update_count += 1
        terms = [(seed, c) for seed, c in zip(record.seeds, mu, strict=True) if abs(c) > NEGLIGIBLE]
        lr_of = self._group_lrs(record)
        active = self.sweeps.active()
        entries = {id(s): (p, group) for s, p, group in active}

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            p, group = entries[id(s)]
            lr = lr_of[id(group)]
            wd = self._weight_decay(p, group)
            theta = s.local[c.p_lo : c.p_hi]
            work = self.sweeps.working_copy(theta)
            if wd:
                work.mul_(1 - lr * wd)
            for seed, coef in terms:
                add_scaled_(work, draw(s, c, seed), -lr * coef)
            self.sweeps.round_into(p, theta, work, s, c, record.seeds[0])

        self.sweeps.for_chunks(update_chunk, [s for s, _, _ in active])

    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["mezo"][NOISE_EMA_KEY] = self._noise_ema
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        extra = state_dict["mezo"]
        self.check_compatible(extra)  # the settings (estimator, k, m, sigmas, ...) first
        if NOISE_EMA_KEY not in extra:
            raise ValueError(
                f"BSZO: the state dict has no {NOISE_EMA_KEY!r} (the residuals' EMA the noise level "
                "is estimated from); it was not saved by BSZO"
            )
        super().load_state_dict(state_dict)
        self._noise_ema = float(extra[NOISE_EMA_KEY])

    def _trajectory_settings(self) -> dict[str, Any]:
        return {
            **self._common_settings("bszo"),
            "subspace_dim": self.subspace_dim,
            "n_samples": self.n_samples,
            "one_sided": self.one_sided,
            "adaptive_sampling": self.adaptive_sampling,
            "adaptive_noise": self.adaptive_noise,
            "noise_ema_alpha": self.noise_ema_alpha,
            "sigma_prior": self.sigma_prior,
            "sigma_noise": self.sigma_noise,
        }
