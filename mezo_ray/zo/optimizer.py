"""MeZO: zeroth-order fine-tuning at inference memory (Malladi et al. 2023, Algorithm 1).

One step, for each of K perturbations with its own seed s_k:

    theta += eps * z_k;  l+ = loss(theta)          sweep 1
    theta -= 2 eps * z_k; l- = loss(theta)          sweep 2
    g_k = (l+ - l-) / (2 eps)                       the projected gradient, a scalar

then one fused sweep restores theta (+eps * z_K) and applies the update with the estimate
g_hat = mean_k(g_k z_k) through the chosen rule (SGD, momentum, Adam, sign). z is regenerated from the
seed in every sweep (see ``noise.py``), so scratch memory is one chunk per thread, whatever the model
size. With K = 1 that is 3 sweeps over the weights and 2 forward passes per step.

Optimizer state: SGD and sign keep none; momentum keeps 1x the trainable parameters, Adam 2x
(in the parameters' dtype, as ``torch.optim`` does). The seed log and replay: ``base.py``.

The sweeps come back to theta only to rounding (a few ulps per step in float32, more in bfloat16).
``perturb_in_forward(model)`` moves the perturbation into the model's forward instead
(``forward_perturbation.py``): the weights stay at theta through the step, restores are exact by
construction in every dtype, and a replay is one sweep a step (the update) instead of three.
On CUDA the sweeps, the stochastically rounded updates and the forward copies are Triton kernels
(``cuda_noise.py``) wherever they can be: plain SGD, float32 / bfloat16 / float16 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

from mezo_ray.zo.base import DEFAULT_NO_DECAY, ZeroOrderOptimizer
from mezo_ray.zo.noise import DEFAULT_CHUNK_NUMEL, Chunk, NoiseSlice, add_scaled_, draw, mix_seed
from mezo_ray.zo.noise import scratch as scratch_like
from mezo_ray.zo.record import Closure, StepRecord, check, takes_index
from mezo_ray.zo.resume import StepRun, interrupt, resume
from mezo_ray.zo.rules import UPDATE_RULES, VARIANTS, RuleSettings, Variant
from mezo_ray.zo.scales import SCALES, GroupScales
from mezo_ray.zo.sweeps import ROUNDING_STREAM

PERTURBATION_SCHEDULES: tuple[str, ...] = ("constant", "linear")


class MeZO(ZeroOrderOptimizer):
    """Zeroth-order optimizer: ``step(closure)`` runs two forwards per perturbation, no backward.

    Args: as ``ZeroOrderOptimizer`` (``params``, ``lr``, ``eps``, ``weight_decay``, ``seed``,
    ``chunk_numel``, ``on_nonfinite``, ``no_decay``, ``stochastic_rounding``), and:
        variant: ``sgd`` (the paper), ``momentum`` (torch SGD semantics), ``adam`` (AdamW
            semantics, as the paper's MeZO-Adam) or ``sign`` (ZO-SGD-Sign): ``rules.UPDATE_RULES``.
        n_perturbations: K, the number of perturbations averaged per step (n-SPSA).
        perturbation_schedule: ``constant`` K, or ``linear``: K_t = max(1, int(t / max_steps * K)).
        layer_wise: perturb and update one block per step, block ``step mod num_blocks``, where a
            parameter's block is the first ``.<i>.`` in its name (the paper code's
            ``--layer_wise_optim``); parameters without one stay put. Takes the chunked path on CUDA.
        scale: the paper code's ``--zo_variant`` (``scales.py``): each group of parameters
            (embeddings, LM head, each layer) is perturbed by z / c; the estimate is g z c
            (``estimate='variance'``, unbiased) or g z (``'expectation'``). ``param_norm``: c is the
            group's weight norm; ``grad_norm``: two forwards per group estimate its gradient norm. c is
            computed at the first step and every ``rescale_every`` steps, recorded, and saved.
        stochastic_rounding: also takes the chunked path on CUDA.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        variant: Variant = "sgd",
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        n_perturbations: int = 1,
        perturbation_schedule: Literal["constant", "linear"] = "constant",
        max_steps: int | None = None,
        no_decay: Sequence[str] = DEFAULT_NO_DECAY,
        seed: int = 0,
        chunk_numel: int = DEFAULT_CHUNK_NUMEL,
        on_nonfinite: Literal["skip", "raise"] = "skip",
        layer_wise: bool = False,
        scale: Literal["none", "param_norm"] = "none",
        estimate: Literal["variance", "expectation"] = "variance",
        rescale_every: int | None = None,
        stochastic_rounding: bool | None = None,
    ) -> None:
        _check_settings(
            variant,
            momentum,
            betas,
            n_perturbations,
            perturbation_schedule,
            max_steps,
            scale,
            estimate,
            rescale_every,
        )
        super().__init__(
            params,
            lr,
            eps,
            weight_decay,
            seed=seed,
            chunk_numel=chunk_numel,
            on_nonfinite=on_nonfinite,
            no_decay=no_decay,
            stochastic_rounding=stochastic_rounding,
        )
        self.sweeps.layer_wise = layer_wise
        self.variant = variant
        self.momentum = momentum
        self.betas = betas
        self.adam_eps = adam_eps
        self.n_perturbations = n_perturbations
        self.perturbation_schedule = perturbation_schedule
        self.max_steps = max_steps
        self.scale = scale
        self._scales = GroupScales(self.sweeps, scale, estimate, rescale_every)
        self._interrupted: StepRun | None = None  # a step whose closure raised (see ``step``)
        check(
            not (layer_wise and variant == "adam"),
            "layer_wise",
            layer_wise,
            "False with variant='adam' (its bias correction would need a step count per block)",
        )
        check(
            not layer_wise or self.sweeps.num_blocks > 0,
            "layer_wise",
            layer_wise,
            "False for parameters whose names carry no layer index ('.3.'); True needs some",
        )

    # ------------------------------------------------------------------------------------------------
    # The step
    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one MeZO step; ``closure()`` (or ``closure(k)``, k = perturbation index) returns the
        loss as a tensor or float. Returns the mean loss at theta + eps*z (nan if the step was skipped).

        If the closure raises (e.g. out of memory), the weights are moved back to theta (to rounding)
        and the exception propagates. The next ``step`` resumes the interrupted step: it returns to the
        exact weights the closure failed at and evaluates there again, so a retry takes the step an
        uninterrupted run takes, bit for bit (``resume.py``). If the weights or the optimizer changed
        in between, the step starts afresh from them.
        """
        if closure is None:
            raise ValueError(
                "MeZO.step needs a closure that returns the loss, e.g. opt.step(lambda: loss_fn(batch))"
            )
        indexed = takes_index(closure)
        run, self._interrupted = resume(self.sweeps, self._interrupted, self.step_count), None
        run = run or StepRun()
        if not run.seeds:
            run.scales = self._scales.rescale(self, closure, indexed)
        k_total = self.perturbations_at(self.step_count)
        while len(run.grads) < k_total:
            k = len(run.grads)
            seed = mix_seed(self.seed, self.step_count, k)
            if run.at is None:  # a new perturbation: theta -> theta + eps z
                run.seeds.append(seed)
                self.perturb(seed, self.eps)
                run.at = self.eps
            if run.at > 0:
                run.loss_plus = self._evaluate(closure, k, indexed, run)
                self.perturb(seed, -2 * self.eps)
                run.at = -self.eps
            loss_minus = self._evaluate(closure, k, indexed, run)
            run.at = None
            if not (math.isfinite(run.loss_plus) and math.isfinite(loss_minus)):
                self.perturb(seed, self.eps)
                losses = (f"loss(theta+eps*z)={run.loss_plus}", f"loss(theta-eps*z)={loss_minus}")
                return self._skip(tuple(run.seeds), losses, run.scales)
            run.grads.append((run.loss_plus - loss_minus) / (2 * self.eps))
            run.plus_losses.append(run.loss_plus)
            if k < k_total - 1:
                self.perturb(seed, self.eps)
        record = StepRecord(
            self.step_count, tuple(run.seeds), tuple(run.grads), self._lrs(), scales=run.scales
        )
        self._commit(record)
        return sum(run.plus_losses) / len(run.plus_losses)

    def perturbations_at(self, step: int) -> int:
        """K for step ``step`` (0-based) under the perturbation schedule."""
        if self.perturbation_schedule == "linear":
            return max(1, int(step / self.max_steps * self.n_perturbations))
        return self.n_perturbations

    def perturb(self, seed: int, scale: float) -> None:
        """theta += scale * z(seed), in place: one sweep over the weights. After ``perturb_in_forward``
        no sweep: the weights stay, and the model's forward sees theta + (the scales so far) * z."""
        self.sweeps.perturb(seed, scale)

    def perturb_in_forward(self, model: torch.nn.Module) -> None:
        """Apply the perturbations inside ``model``'s forward instead of in place (see the module
        docstring and ``forward_perturbation.py``): each module holding parameters of this optimizer
        runs on theta + a z of them, the weights stay at theta until the update, so restores are exact
        by construction in every dtype. A low-precision copy is rounded stochastically where the
        updates are (``stochastic_rounding``), so on average it is theta + a z. Call it before the
        first step; the run's state dict records it (a replay or resume needs the same).

        Under FSDP2 (``fully_shard``) each module's gathered parameters are perturbed whole, each rank
        drawing the same z (so the trajectory is one process's), and the update writes the shards.

        Raises ValueError for ``scale='grad_norm'`` (its probes sweep in place), parameters ``model``
        does not hold, or after a step."""
        check(self.scale != "grad_norm", "scale", self.scale, "'none' or 'param_norm' in the forward")
        check(
            not self.trajectory and self.sweeps.forward is None,
            "step_count",
            self.step_count,
            "0 (call first)",
        )
        self.sweeps.perturb_in_forward(model)

    def _redo_sweeps(self, record: StepRecord) -> None:
        self._scales.rescale(self, record=record)
        for k, seed in enumerate(record.seeds):
            self.perturb(seed, self.eps)
            self.perturb(seed, -2 * self.eps)
            if record.skipped or k < len(record.seeds) - 1:
                self.perturb(seed, self.eps)

    def _passes_of(self, record: StepRecord) -> int:
        return 2 * len(record.seeds) + 2 * len(record.scales)

    def _before_replay(self) -> None:
        self._interrupted = None

    # ------------------------------------------------------------------------------------------------
    # The update
    def _update(self, record: StepRecord) -> None:
        """Restore the last perturbation and apply the update rule, in one sweep."""
        self.update_count += 1
        seeds, grads = record.seeds, record.projected_grads
        k_total = len(seeds)
        lr_of = self._group_lrs(record)
        plain_sgd = self.variant == "sgd" and k_total == 1
        beta1, beta2 = self.betas
        bias1, bias2 = 1 - beta1**self.update_count, 1 - beta2**self.update_count
        sweeps = self.sweeps
        params: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}
        slices = []
        active = sweeps.active()
        for s, p, group in active:
            params[id(s)] = (p, group)
            slices.append(s)
            self._init_state(p, s)
        in_place = sweeps.forward is None
        sweeps.set_offset(None)  # perturb_in_forward: the weights are at theta already
        fused = sweeps.fused_sweep(active) if plain_sgd else None
        if fused is not None:
            # theta <- (1 - lr wd) x - lr g z, x = theta + eps z rounded to theta's dtype (in the
            # forward: x = theta), rounded as the chunked sweep rounds, from the same seed: its arithmetic
            decay, coefs = [], []
            for s in slices:
                p, group = params[id(s)]
                lr = lr_of[id(group)]
                decay.append(1 - lr * self._weight_decay(p, group))
                coefs.append(-lr * grads[0] * self._scales.factor(p))
            restore = [self.eps / sweeps.scale_of(params[id(s)][0]) for s in slices] if in_place else None
            fused(seeds[0], decay, coefs, mix_seed(seeds[0], ROUNDING_STREAM), restore)
            return

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            p, group = params[id(s)]
            lr = lr_of[id(group)]
            wd = self._weight_decay(p, group)
            theta = s.local[c.p_lo : c.p_hi]
            z = draw(s, c, seeds[-1])
            if in_place:
                add_scaled_(theta, z, self.eps / sweeps.scale_of(p))  # restore
            factor = self._scales.factor(p)  # 1, or c under scale='param_norm'
            work = sweeps.working_copy(theta)
            if plain_sgd:  # the paper's hot path: theta <- theta - lr (g z + wd theta)
                if wd:
                    work.mul_(1 - lr * wd)
                add_scaled_(work, z, -lr * grads[0] * factor)
            else:
                g_hat = scratch_like(theta, slot=1)  # mean_k(g_k z_k), one chunk of scratch
                g_hat.copy_(z).mul_(grads[-1] / k_total * factor)
                for k in range(k_total - 1):
                    add_scaled_(g_hat, draw(s, c, seeds[k]), grads[k] / k_total * factor)
                state = {key: t.view(-1)[c.p_lo : c.p_hi] for key, t in self.state[p].items()}
                rule.apply(work, g_hat, state, lr, wd, settings)
            sweeps.round_into(p, theta, work, s, c, seeds[-1])

        rule = UPDATE_RULES[self.variant]
        settings = RuleSettings(self.momentum, beta1, beta2, bias1, bias2, self.adam_eps)
        sweeps.for_chunks(update_chunk, slices)

    def _init_state(self, p: torch.Tensor, s: NoiseSlice) -> None:
        state = self.state[p]
        if not state:
            state.update({key: torch.zeros_like(s.local) for key in UPDATE_RULES[self.variant].state})

    @property
    def state_multiple(self) -> int:
        """Optimizer state in multiples of the trainable parameters (sgd, sign 0; momentum 1; adam 2)."""
        return len(UPDATE_RULES[self.variant].state)

    # ------------------------------------------------------------------------------------------------
    # Evaluating, and resuming after a closure raised (resume.py)
    def _evaluate(self, closure: Closure, k: int, indexed: bool, run: StepRun) -> float:
        """The loss at the weights theta + run.at * z; if the closure raises, move back to theta
        first (so a caught error, an OOM or a KeyboardInterrupt, leaves the weights usable) and keep
        what it takes to return to these exact weights on the next step."""
        forward = self.sweeps.forward
        try:
            if forward is not None:
                forward.begin()
            loss = closure(k) if indexed else closure()  # type: ignore[call-arg]
            value = float(loss)  # a CUDA error may only surface here, at the sync
            if forward is not None:
                self.sweeps.check_forward()
        except BaseException:
            self._interrupted = interrupt(self.sweeps, run, self.step_count)
            raise
        self.forward_passes += 1
        return value

    def _trajectory_settings(self) -> dict[str, Any]:
        """What, besides the counters and the groups' lr and weight decay, decides the trajectory."""
        settings = {
            **self._common_settings("mezo"),
            "variant": self.variant,
            "n_perturbations": self.n_perturbations,
            "perturbation_schedule": self.perturbation_schedule,
            "scale": self.scale,
        }
        if self.scale != "none":
            settings["estimate"] = self._scales.estimate
            settings["rescale_every"] = self._scales.rescale_every
        if self.perturbation_schedule == "linear":
            settings["max_steps"] = self.max_steps
        if self.variant == "momentum":
            settings["momentum"] = self.momentum
        if self.variant == "adam":
            settings["betas"] = [float(b) for b in self.betas]  # a list: what JSON gives back
            settings["adam_eps"] = self.adam_eps
        return settings


def _check_settings(
    variant: str,
    momentum: float,
    betas: tuple[float, float],
    n_perturbations: int,
    perturbation_schedule: str,
    max_steps: int | None,
    scale: str,
    estimate: str,
    rescale_every: int | None,
) -> None:
    """Refuse MeZO's own settings by name, before anything is built."""
    check(variant in VARIANTS, "variant", variant, f"one of {VARIANTS}")
    check(0 <= momentum < 1, "momentum", momentum, "a number in [0, 1)")
    check(all(0 <= b < 1 for b in betas), "betas", betas, "two numbers in [0, 1)")
    check(n_perturbations >= 1, "n_perturbations", n_perturbations, "an integer >= 1")
    check(
        perturbation_schedule in PERTURBATION_SCHEDULES,
        "perturbation_schedule",
        perturbation_schedule,
        f"one of {PERTURBATION_SCHEDULES}",
    )
    check(
        perturbation_schedule == "constant" or (max_steps or 0) > 0,
        "max_steps",
        max_steps,
        "a positive step count when perturbation_schedule='linear'",
    )
    check(scale in SCALES, "scale", scale, f"one of {SCALES}")
    check(estimate in ("variance", "expectation"), "estimate", estimate, "'variance' or 'expectation'")
    check(rescale_every is None or rescale_every > 0, "rescale_every", rescale_every, "None or > 0")
