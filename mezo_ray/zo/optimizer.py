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
(in the parameters' dtype, as ``torch.optim`` does).

Every step is appended to ``trajectory`` as a ``StepRecord`` (seeds, projected gradients, learning
rates, eps); ``replay`` redoes the same sweeps from the starting weights and gives the same weights bit for
bit, so a trial's state is (start weights, trajectory, scalars).

The sweeps come back to theta only to rounding (a few ulps per step in float32, more in bfloat16).
``perturb_in_forward(model)`` moves the perturbation into the model's forward instead
(``forward_perturbation.py``): the weights stay at theta through the step, restores are exact by
construction in every dtype, and a replay is one sweep a step (the update) instead of three.
On CUDA the sweeps, the stochastically rounded updates and the forward copies are Triton kernels
(``cuda_noise.py``) wherever they can be: plain SGD, float32 / bfloat16 / float16 parameters.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from mezo_ray.zo.cpu_noise import sum_of_products
from mezo_ray.zo.forward_perturbation import ForwardPerturbation
from mezo_ray.zo.noise import (
    DEFAULT_CHUNK_NUMEL,
    NOISE_TAG,
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

Variant = Literal["sgd", "momentum", "adam", "sign"]
VARIANTS: tuple[str, ...] = ("sgd", "momentum", "adam", "sign")  # the keys of UPDATE_RULES
PERTURBATION_SCHEDULES: tuple[str, ...] = ("constant", "linear")
SCALES: tuple[str, ...] = ("none", "param_norm", "grad_norm")
# The seed stream of scale='grad_norm''s per-group probes: mix_seed(seed, step, GRAD_NORM_STREAM, group).
GRAD_NORM_STREAM = 0x6E0F
# The settings every MeZO state dict has held; those recorded since may be absent from older ones.
_ALWAYS_SAVED: tuple[str, ...] = ("variant", "chunk_numel")
# Settings recorded since, with what every state dict saved before them did: those runs rounded to nearest.
_BEFORE_RECORDED: dict[str, Any] = {"stochastic_rounding": False, "perturbation": "in_place"}
# The paper's OPT code: no weight decay for biases and LayerNorm weights (matched case-insensitively).
DEFAULT_NO_DECAY: tuple[str, ...] = ("bias", "layer_norm", "layernorm")
# The seed stream of stochastic rounding's uniform draws: mix_seed(step seed, ROUNDING_STREAM).
ROUNDING_STREAM = 0x5200
# perturb_in_forward: the uniform draws that round a perturbed copy, mix_seed(seed, this, sign of a).
PERTURBATION_ROUNDING_STREAM = 0x5201
LOW_PRECISION: frozenset[torch.dtype] = frozenset({torch.bfloat16, torch.float16})

Closure = Callable[[], Any] | Callable[[int], Any]


@dataclass(frozen=True)
class _RuleSettings:
    """What update rules read besides the chunk: momentum, Adam's betas and bias corrections."""

    momentum: float
    beta1: float
    beta2: float
    bias1: float
    bias2: float
    adam_eps: float


def _sgd(theta: torch.Tensor, g: torch.Tensor, state: dict, lr: float, wd: float, h: _RuleSettings) -> None:
    """theta <- theta (1 - lr wd) - lr g (the paper)."""
    if wd:
        theta.mul_(1 - lr * wd)
    theta.add_(g.mul_(-lr))


def _sign(theta: torch.Tensor, g: torch.Tensor, state: dict, lr: float, wd: float, h: _RuleSettings) -> None:
    """ZO-SGD-Sign: theta <- theta (1 - lr wd) - lr sign(g)."""
    if wd:
        theta.mul_(1 - lr * wd)
    theta.add_(g.sign_().mul_(-lr))


def _momentum(
    theta: torch.Tensor, g: torch.Tensor, state: dict, lr: float, wd: float, h: _RuleSettings
) -> None:
    """torch.optim.SGD: buf <- m buf + (g + wd theta); theta <- theta - lr buf."""
    if wd:
        add_scaled_(g, theta, wd)
    state["momentum_buffer"].mul_(h.momentum).add_(g)
    add_scaled_(theta, state["momentum_buffer"], -lr)


def _adam(theta: torch.Tensor, g: torch.Tensor, state: dict, lr: float, wd: float, h: _RuleSettings) -> None:
    """torch.optim.AdamW semantics (decoupled weight decay), as the paper's MeZO-Adam."""
    if wd:
        theta.mul_(1 - lr * wd)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.mul_(h.beta1)
    add_scaled_(exp_avg, g, 1 - h.beta1)
    exp_avg_sq.mul_(h.beta2).add_(g.square_().mul_(1 - h.beta2))
    denom = scratch_like(theta, slot=2)
    torch.sqrt(exp_avg_sq, out=denom)
    denom.div_(math.sqrt(h.bias2)).add_(h.adam_eps)
    theta.add_(torch.div(exp_avg, denom, out=denom).mul_(-lr / h.bias1))


@dataclass(frozen=True)
class UpdateRule:
    """How an estimate g (one chunk) becomes a step on theta, and the state it keeps: one buffer the
    size of the parameters per name in ``state``."""

    state: tuple[str, ...]
    apply: Callable[[torch.Tensor, torch.Tensor, dict, float, float, _RuleSettings], None]


UPDATE_RULES: dict[str, UpdateRule] = {
    "sgd": UpdateRule((), _sgd),
    "sign": UpdateRule((), _sign),
    "momentum": UpdateRule(("momentum_buffer",), _momentum),
    "adam": UpdateRule(("exp_avg", "exp_avg_sq"), _adam),
}


class NonFiniteLossError(FloatingPointError):
    """A loss at theta +- eps*z was inf or nan (the weights were restored before raising)."""


@dataclass(frozen=True)
class StepRecord:
    """Everything one step did, enough to redo it without data: seeds, projected gradients, lrs, eps."""

    step: int
    seeds: tuple[int, ...]
    projected_grads: tuple[float, ...]  # empty when the step was skipped
    lrs: tuple[float, ...]  # one per parameter group
    skipped: bool = False
    # scale='grad_norm': the per-group scales measured at this step (empty where none were)
    scales: tuple[float, ...] = ()
    eps: float | None = None  # the step's perturbation scale (None in logs written before it was kept)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.scales:  # the seed log stays as it was for every other setting
            del d["scales"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        return cls(
            step=int(d["step"]),
            seeds=tuple(int(s) for s in d["seeds"]),
            projected_grads=tuple(float(g) for g in d["projected_grads"]),
            lrs=tuple(float(x) for x in d["lrs"]),
            skipped=bool(d.get("skipped", False)),
            scales=tuple(float(c) for c in d.get("scales", ())),
            eps=None if d.get("eps") is None else float(d["eps"]),
        )


@dataclass
class _StepRun:
    """A step in progress: the perturbations evaluated so far and where the weights stand
    (theta + at * z(seeds[-1]); None: at theta). Kept when a closure raises, to resume the step."""

    seeds: list[int] = dataclasses.field(default_factory=list)
    grads: list[float] = dataclasses.field(default_factory=list)
    plus_losses: list[float] = dataclasses.field(default_factory=list)
    at: float | None = None
    loss_plus: float = math.nan
    scales: tuple[float, ...] = ()  # scale='grad_norm': measured at the start of this step
    # Set by MeZO._interrupt: the exact weights the closure failed at are theta + at * z(seeds[-1]),
    # then these (parameter index, chunk start, element indices, values) written over them.
    patches: list[tuple[int, int, torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=list)
    fingerprint: tuple[Any, ...] = ()


class MeZO(torch.optim.Optimizer):
    """Zeroth-order optimizer: ``step(closure)`` runs two forwards per perturbation, no backward.

    Args:
        params: parameters, ``model.named_parameters()`` (names drive the noise streams and the
            no-decay rule; without names, ``param.<index>`` is used) or torch-style groups.
        lr: learning rate (per group; torch LR schedulers work on it).
        eps: perturbation scale epsilon.
        weight_decay: per group; not applied to parameters whose name contains any of ``no_decay``.
        variant: ``sgd`` (the paper), ``momentum`` (torch SGD semantics), ``adam`` (AdamW
            semantics, as the paper's MeZO-Adam) or ``sign`` (ZO-SGD-Sign).
        n_perturbations: K, the number of perturbations averaged per step (n-SPSA).
        perturbation_schedule: ``constant`` K, or ``linear``: K_t = max(1, int(t / max_steps * K)).
        seed: base seed; the seed of perturbation k at step t is ``mix_seed(seed, t, k)``.
        chunk_numel: elements per unit of the sweeps' work (and of their scratch memory); z does not
            depend on it, but a state dict records it and a resume checks it, as before.
        on_nonfinite: ``skip`` (restore, count, go on) or ``raise`` (restore, raise NonFiniteLossError).
        layer_wise: perturb and update one block per step, block ``step mod num_blocks``, where a
            parameter's block is the first ``.<i>.`` in its name (the paper code's
            ``--layer_wise_optim``); parameters without one stay put. Takes the chunked path on CUDA.
        scale: the paper code's ``--zo_variant``: each group of parameters (embeddings, LM head, each
            layer) is perturbed by z / c; the estimate is g z c (``estimate='variance'``, unbiased) or
            g z (``'expectation'``, its ``--change_grad_estimate``). ``param_norm``: c is the group's
            weight norm. ``grad_norm``: c estimates the group's gradient norm with two forwards per
            group, |l(theta + eps z_g) - l(theta - eps z_g)| / (2 eps), only that group perturbed
            (``--use_zo_grad_est``; the code's default takes one backward pass instead, which costs
            training memory). c is computed at the first step and every ``rescale_every`` steps
            (the paper: each epoch, ``--recompute_norms``), recorded, and saved with the state.
        stochastic_rounding: round the updates of bfloat16 / float16 parameters stochastically (None,
            the default: on for them; float32 is never rounded): at the paper's OPT lr of 1e-7,
            lr g z is far below half an ulp of most low-precision weights and rounding to nearest
            drops it. False: the paper's fp16 arithmetic (round to nearest). Takes the chunked path
            on CUDA.
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
        _check(lr >= 0, "lr", lr, "a number >= 0")
        _check(eps > 0, "eps", eps, "a number > 0")
        _check(weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0")
        _check(variant in VARIANTS, "variant", variant, f"one of {VARIANTS}")
        _check(0 <= momentum < 1, "momentum", momentum, "a number in [0, 1)")
        _check(all(0 <= b < 1 for b in betas), "betas", betas, "two numbers in [0, 1)")
        _check(n_perturbations >= 1, "n_perturbations", n_perturbations, "an integer >= 1")
        _check(
            perturbation_schedule in PERTURBATION_SCHEDULES,
            "perturbation_schedule",
            perturbation_schedule,
            f"one of {PERTURBATION_SCHEDULES}",
        )
        _check(
            perturbation_schedule == "constant" or (max_steps or 0) > 0,
            "max_steps",
            max_steps,
            "a positive step count when perturbation_schedule='linear'",
        )
        _check(chunk_numel > 0, "chunk_numel", chunk_numel, "an integer > 0")
        _check(scale in SCALES, "scale", scale, f"one of {SCALES}")
        _check(estimate in ("variance", "expectation"), "estimate", estimate, "'variance' or 'expectation'")
        _check(rescale_every is None or rescale_every > 0, "rescale_every", rescale_every, "None or > 0")
        _check(on_nonfinite in ("skip", "raise"), "on_nonfinite", on_nonfinite, "'skip' or 'raise'")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

        self.eps = eps
        self.variant = variant
        self.momentum = momentum
        self.betas = betas
        self.adam_eps = adam_eps
        self.n_perturbations = n_perturbations
        self.perturbation_schedule = perturbation_schedule
        self.max_steps = max_steps
        self.seed = seed
        self.chunk_numel = chunk_numel
        self.on_nonfinite = on_nonfinite
        self.layer_wise = layer_wise
        self.scale = scale
        self.estimate = estimate
        self.rescale_every = rescale_every
        self._c: dict[torch.Tensor, float] = {}  # per-parameter perturbation scale c (1 if absent)
        # parameters whose updates are stochastically rounded (default: the bfloat16 / float16 ones)
        self._rounded = {
            p
            for g in self.param_groups
            for p in g["params"]
            if p.dtype in LOW_PRECISION and stochastic_rounding is not False
        }

        self.step_count = 0  # steps taken, skipped ones included: the index of the next step's seeds
        self.update_count = 0  # updates applied (Adam's bias-correction t)
        self.forward_passes = 0  # closure evaluations
        self.nonfinite_steps = 0
        self.trajectory: list[StepRecord] = []
        self._interrupted: _StepRun | None = None  # a step whose closure raised (see ``step``)
        # perturb_in_forward: the hooks, and the perturbation they apply, theta + at * z(seed), as
        # (seed, at) with each active parameter's noise slice and scale (None: none, the forward sees theta)
        self._forward: ForwardPerturbation | None = None
        self._offset: tuple[int, float] | None = None
        self._plan: dict[torch.Tensor, tuple[NoiseSlice, float]] = {}
        self._fused: Any = None  # CUDA: one-launch sweeps, built on first use
        self._slice_cache: (
            tuple[tuple[int, ...], list[tuple[NoiseSlice, torch.Tensor, dict[str, Any]]]] | None
        ) = None

        lowered = tuple(s.lower() for s in no_decay)
        self._names: dict[torch.Tensor, str] = {}
        self._decays: dict[torch.Tensor, bool] = {}
        index = 0
        for group in self.param_groups:
            names = group.get("param_names") or [f"param.{index + i}" for i in range(len(group["params"]))]
            index += len(group["params"])
            for p, name in zip(group["params"], names, strict=True):
                self._names[p] = name
                self._decays[p] = not any(s in name.lower() for s in lowered)
        self._blocks = {p: _block_of(name) for p, name in self._names.items()}
        self._norm_groups = {p: _norm_group(name) for p, name in self._names.items()}
        self.num_blocks = 1 + max((b for b in self._blocks.values() if b is not None), default=-1)
        _check(
            not (layer_wise and variant == "adam"),
            "layer_wise",
            layer_wise,
            "False with variant='adam' (its bias correction would need a step count per block)",
        )
        _check(
            not layer_wise or self.num_blocks > 0,
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
        uninterrupted run takes, bit for bit. If the weights or the optimizer changed in between, the
        step starts afresh from them.
        """
        if closure is None:
            raise ValueError(
                "MeZO.step needs a closure that returns the loss, e.g. opt.step(lambda: loss_fn(batch))"
            )
        takes_index = _takes_index(closure)
        run = self._resume_interrupted() or _StepRun()
        if not run.seeds:
            run.scales = self._rescale(closure, takes_index)
        k_total = self.perturbations_at(self.step_count)
        while len(run.grads) < k_total:
            k = len(run.grads)
            seed = mix_seed(self.seed, self.step_count, k)
            if run.at is None:  # a new perturbation: theta -> theta + eps z
                run.seeds.append(seed)
                self.perturb(seed, self.eps)
                run.at = self.eps
            if run.at > 0:
                run.loss_plus = self._evaluate(closure, k, takes_index, run)
                self.perturb(seed, -2 * self.eps)
                run.at = -self.eps
            loss_minus = self._evaluate(closure, k, takes_index, run)
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
        self._update(record)
        self._finish(record)
        return sum(run.plus_losses) / len(run.plus_losses)

    def perturbations_at(self, step: int) -> int:
        """K for step ``step`` (0-based) under the perturbation schedule."""
        if self.perturbation_schedule == "linear":
            return max(1, int(step / self.max_steps * self.n_perturbations))
        return self.n_perturbations

    @property
    def last_projected_grads(self) -> tuple[float, ...]:
        return self.trajectory[-1].projected_grads if self.trajectory else ()

    def apply_record(self, record: StepRecord) -> None:
        """Redo a recorded step: the same sweeps in the same order, with the recorded scalars."""
        if record.step != self.step_count:
            raise ValueError(
                f"record is for step {record.step} but the optimizer is at step {self.step_count}"
            )
        self._interrupted = None
        eps = self.eps  # a step is redone with its own eps (a PBT exploit may have changed it since)
        self.eps = record.eps if record.eps is not None else eps
        try:
            with torch.no_grad():
                self._redo_sweeps(record)
                if record.skipped:
                    self.nonfinite_steps += 1
                else:
                    self._update(record)
        finally:
            self.eps = eps
        self.forward_passes += self._passes_of(record)  # the budget spent by the original step
        self._finish(record)

    def _redo_sweeps(self, record: StepRecord) -> None:
        """The perturbation sweeps of a recorded step, before its update (estimators override it)."""
        self._rescale(record=record)
        for k, seed in enumerate(record.seeds):
            self.perturb(seed, self.eps)
            self.perturb(seed, -2 * self.eps)
            if record.skipped or k < len(record.seeds) - 1:
                self.perturb(seed, self.eps)

    def _passes_of(self, record: StepRecord) -> int:
        """Forward passes the recorded step took."""
        return 2 * len(record.seeds) + 2 * len(record.scales)

    # ------------------------------------------------------------------------------------------------
    # Sweeps
    def _slices(self) -> list[tuple[NoiseSlice, torch.Tensor, dict[str, Any]]]:
        """(noise slice, parameter, group) for every parameter, rebuilt only when storage moves
        (per-sweep Python work must stay small next to a GPU sweep of a few hundred microseconds)."""
        storage = tuple(local_tensor(p).data_ptr() for g in self.param_groups for p in g["params"])
        if self._slice_cache is None or self._slice_cache[0] != storage:
            slices = [(noise_slice(p, self._names[p]), p, g) for g in self.param_groups for p in g["params"]]
            self._slice_cache = (storage, slices)
            self._fused = None
        return self._slice_cache[1]

    def _active(self) -> list[tuple[NoiseSlice, torch.Tensor, dict[str, Any]]]:
        """The parameters this step perturbs and updates: all, or one block under ``layer_wise``."""
        if not self.layer_wise:
            return self._slices()
        block = self.step_count % self.num_blocks
        return [entry for entry in self._slices() if self._blocks[entry[1]] == block]

    def perturb(self, seed: int, scale: float) -> None:
        """theta += scale * z(seed), in place: one sweep over the weights. After ``perturb_in_forward``
        no sweep: the weights stay, and the model's forward sees theta + (the scales so far) * z."""
        if self._forward is not None:
            at = scale + (self._offset[1] if self._offset is not None else 0.0)
            assert self._offset is None or self._offset[0] == seed, "a perturbation was left pending"
            self._set_offset(None if at == 0 else (seed, at))
            return
        active = self._active()
        slices = [s for s, _, _ in active]
        # z / c under scale='param_norm'; a plain scale otherwise (no per-sweep dict on the hot path)
        alpha = {id(s): scale / self._c.get(p, 1.0) for s, p, _ in active} if self._c else None
        fused = self._fused_sweep(active)
        if fused is not None:
            fused(seed, [1.0] * len(slices), [alpha[id(s)] if alpha else scale for s in slices])
            return

        def perturb_chunk(s: NoiseSlice, c: Chunk) -> None:
            add_scaled_(s.local[c.p_lo : c.p_hi], draw(s, c, seed), alpha[id(s)] if alpha else scale)

        for_each_chunk(slices, self.chunk_numel, perturb_chunk)

    def perturb_in_forward(self, model: torch.nn.Module) -> None:
        """Apply the perturbations inside ``model``'s forward instead of in place (see the module
        docstring and ``forward_perturbation.py``): each module holding parameters of this optimizer
        runs on theta + a z of them, the weights stay at theta until the update, so restores are exact
        by construction in every dtype. A low-precision copy is rounded stochastically where the
        updates are (``stochastic_rounding``), so on average it is theta + a z. Call it before the
        first step; the run's state dict records it (a replay or resume needs the same).

        Under FSDP2 (``fully_shard``) each module's gathered parameters are perturbed whole, each rank
        drawing the same z (so the trajectory is one process's), and the update writes the shards.

        Raises ValueError for the estimators that keep their own sweeps (FZOO, HiZOO, LOZO),
        ``scale='grad_norm'`` (its probes sweep in place), parameters ``model`` does not hold, or
        after a step."""
        if type(self).step is not MeZO.step:
            raise ValueError(
                f"perturb_in_forward: {type(self).__name__} keeps its own in-place sweeps; only MeZO's "
                "estimate perturbs in the forward"
            )
        _check(self.scale != "grad_norm", "scale", self.scale, "'none' or 'param_norm' in the forward")
        _check(not self.trajectory and self._forward is None, "step_count", self.step_count, "0 (call first)")
        held = set(model.parameters())
        missing = [name for p, name in self._names.items() if p not in held]
        _check(not missing, "parameters", missing[:3], "parameters of the model given")
        self._forward = ForwardPerturbation(model, self._names, self._perturbed_copy)

    @property
    def perturbation(self) -> str:
        """Where perturbations are applied: ``in_place`` (the sweeps) or ``forward``."""
        return "in_place" if self._forward is None else "forward"

    def _set_offset(self, offset: tuple[int, float] | None) -> None:
        """perturb_in_forward: the perturbation the forward applies, and the parameters it touches."""
        self._offset = offset
        if offset is None:
            self._plan = {}
            return
        at = offset[1]
        self._plan = {p: (s, at / self._c.get(p, 1.0)) for s, p, _ in self._active()}

    def _perturbed_copy(self, p: torch.Tensor, held: torch.Tensor, out: torch.Tensor) -> bool:
        """Write theta + a z(seed) of ``held`` (``p``, or under FSDP the whole parameter gathered from
        ``p``'s shards) into ``out`` with the in-place sweep's arithmetic (stochastically rounded for a
        rounded dtype), its chunks on the sweeps' thread pool; False when no perturbation applies."""
        plan = self._plan.get(p)
        if plan is None or self._offset is None:
            return False
        s, alpha = plan
        whole = local_tensor(held) is held  # a DTensor not gathered by FSDP has no whole to perturb
        _check(whole, "parameter", self._names[p], "a plain tensor, or FSDP2-gathered, in its forward")
        if held is not p:  # FSDP2: all of it, drawn as one process holding it would draw it
            s = NoiseSlice(held.detach().view(-1), 0, s.numel, s.key)
        seed = self._offset[0]
        flat = out.view(-1)
        rounded = p in self._rounded
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

    def _update(self, record: StepRecord) -> None:
        """Restore the last perturbation and apply the update rule, in one sweep."""
        self.update_count += 1
        seeds, grads = record.seeds, record.projected_grads
        k_total = len(seeds)
        lr_of = self._group_lrs(record)
        plain_sgd = self.variant == "sgd" and k_total == 1
        beta1, beta2 = self.betas
        bias1, bias2 = 1 - beta1**self.update_count, 1 - beta2**self.update_count
        params: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}
        slices = []
        active = self._active()
        for s, p, group in active:
            params[id(s)] = (p, group)
            slices.append(s)
            self._init_state(p, s)
        in_place = self._forward is None
        self._set_offset(None)  # perturb_in_forward: the weights are at theta already
        fused = self._fused_sweep(active) if plain_sgd else None
        if fused is not None:
            # theta <- (1 - lr wd) x - lr g z, x = theta + eps z rounded to theta's dtype (in the
            # forward: x = theta), rounded as the chunked sweep rounds, from the same seed: its arithmetic
            decay, coefs = [], []
            for s in slices:
                p, group = params[id(s)]
                lr = lr_of[id(group)]
                decay.append(1 - lr * (group["weight_decay"] if self._decays[p] else 0.0))
                coefs.append(-lr * grads[0] * self._factor(p))
            restore = [self.eps / self._c.get(params[id(s)][0], 1.0) for s in slices] if in_place else None
            fused(seeds[0], decay, coefs, mix_seed(seeds[0], ROUNDING_STREAM), restore)
            return

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            p, group = params[id(s)]
            lr = lr_of[id(group)]
            wd = group["weight_decay"] if self._decays[p] else 0.0
            theta = s.local[c.p_lo : c.p_hi]
            z = draw(s, c, seeds[-1])
            if in_place:
                add_scaled_(theta, z, self.eps / self._c.get(p, 1.0))  # restore
            factor = self._factor(p)  # 1, or c under scale='param_norm'
            work = self._working_copy(theta)
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
            self._round_into(p, theta, work, s, c, seeds[-1])

        rule = UPDATE_RULES[self.variant]
        settings = _RuleSettings(self.momentum, beta1, beta2, bias1, bias2, self.adam_eps)
        for_each_chunk(slices, self.chunk_numel, update_chunk)

    def _working_copy(self, theta: torch.Tensor) -> torch.Tensor:
        """Where an update is computed: ``theta`` itself (float32, float64), or for a bfloat16 /
        float16 one a float32 copy of it (scratch slot 5) that ``_round_into`` writes back, rounded
        once, as the fused sweeps compute."""
        if theta.dtype not in LOW_PRECISION:
            return theta
        return scratch_like(theta, 5, torch.float32).copy_(theta)

    def _round_into(
        self, p: torch.Tensor, theta: torch.Tensor, work: torch.Tensor, s: NoiseSlice, c: Chunk, seed: int
    ) -> None:
        """Store an update computed in ``work`` into ``theta``: stochastically rounded where ``p`` is,
        its random bits drawn from the step's seed and each element's index (replays and FSDP shards
        round alike), else to nearest."""
        if work is theta:
            return
        if p in self._rounded:
            stochastic_round_(theta, work, draw_uniform(s, c, mix_seed(seed, ROUNDING_STREAM)))
        else:
            theta.copy_(work)

    def _round_whole(self, p: torch.Tensor, s: NoiseSlice, work: torch.Tensor, seed: int) -> None:
        """``_round_into`` for an update computed for all of ``s``'s elements at once (chunk by chunk,
        so the random bits are those of the chunked sweeps)."""
        if work.data_ptr() == s.local.data_ptr():
            return
        flat = work.view(-1)
        for c in chunks(s, self.chunk_numel):
            self._round_into(p, s.local[c.p_lo : c.p_hi], flat[c.p_lo : c.p_hi], s, c, seed)

    def _fused_sweep(self, active: list[tuple[NoiseSlice, torch.Tensor, dict[str, Any]]]) -> Any:
        """The device's fused sweep (``cuda_noise`` on CUDA with Triton: float32, bfloat16, float16;
        ``cpu_noise`` on the CPU: float32, bfloat16) when every parameter is on one device in a dtype
        it takes; else None, and the chunked path (float64 ones keep float64 arithmetic there)."""
        if self._fused is not None:  # built for these parameters (reset by _slices when storage moves)
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
        self._fused = backend.FusedSweep(slices, [p in self._rounded for _, p, _ in active])
        return self._fused

    def _factor(self, p: torch.Tensor) -> float:
        """What the estimate multiplies z by: c (unbiased for perturbations z / c), or 1."""
        return self._c.get(p, 1.0) if self.estimate == "variance" else 1.0

    def _rescale(
        self, closure: Closure | None = None, takes_index: bool = False, record: StepRecord | None = None
    ) -> tuple[float, ...]:
        """Set the per-group scales c where due: at the first step and every ``rescale_every`` steps
        (a zero norm counts as 1, so the group still moves). Replaying a ``record``, grad_norm's
        scales and sweeps are the recorded ones. Returns grad_norm's measured scales (else ())."""
        due = not self._c or (self.rescale_every and self.step_count % self.rescale_every == 0)
        if self.scale == "none" or not due:
            return ()
        groups = list(dict.fromkeys(g for g in self._norm_groups.values() if g is not None))
        if self.scale == "param_norm":
            sums = dict.fromkeys(groups, 0.0)
            for p, group in self._norm_groups.items():
                if group is not None:
                    sums[group] += _squared_norm(p)
            norms = [math.sqrt(sums[group]) for group in groups]
        elif record is None:
            assert closure is not None
            norms = [self._probe_group(i, group, closure, takes_index) for i, group in enumerate(groups)]
        else:
            norms = list(record.scales)
            for i, group in enumerate(groups):
                self._probe_group(i, group)
        by_group = {
            group: norm if math.isfinite(norm) and norm > 0 else 1.0
            for group, norm in zip(groups, norms, strict=True)
        }
        self._c = {p: by_group[g] for p, g in self._norm_groups.items() if g is not None}
        return tuple(norms) if self.scale == "grad_norm" else ()

    def _probe_group(
        self, index: int, group: str, closure: Closure | None = None, takes_index: bool = False
    ) -> float:
        """grad_norm: |l(theta + eps z) - l(theta - eps z)| / (2 eps) with only ``group`` perturbed by
        plain z (the paper code's ``perturb_single_layer``); without a closure, the sweeps alone (replay)."""
        slices = [s for s, p, _ in self._slices() if self._norm_groups[p] == group]

        def sweep(seed: int, scale: float) -> None:
            def add(s: NoiseSlice, c: Chunk) -> None:
                add_scaled_(s.local[c.p_lo : c.p_hi], draw(s, c, seed), scale)

            for_each_chunk(slices, self.chunk_numel, add)

        seed = mix_seed(self.seed, self.step_count, GRAD_NORM_STREAM, index)
        plus, minus = self._two_point(sweep, seed, closure, takes_index)
        return abs(plus - minus) / (2 * self.eps)

    def _init_state(self, p: torch.Tensor, s: NoiseSlice) -> None:
        state = self.state[p]
        if not state:
            state.update({key: torch.zeros_like(s.local) for key in UPDATE_RULES[self.variant].state})

    @property
    def state_multiple(self) -> int:
        """Optimizer state in multiples of the trainable parameters (sgd, sign 0; momentum 1; adam 2)."""
        return len(UPDATE_RULES[self.variant].state)

    # ------------------------------------------------------------------------------------------------
    # Bookkeeping
    def _evaluate(self, closure: Closure, k: int, takes_index: bool, run: _StepRun) -> float:
        """The loss at the weights theta + run.at * z; if the closure raises, move back to theta
        first (so a caught error, an OOM or a KeyboardInterrupt, leaves the weights usable) and keep
        what it takes to return to these exact weights on the next step (``_interrupt``)."""
        try:
            if self._forward is not None:
                self._forward.begin()
            loss = closure(k) if takes_index else closure()  # type: ignore[call-arg]
            value = float(loss)  # a CUDA error may only surface here, at the sync
            if self._forward is not None:
                self._forward.check(self._plan, self._names)
        except BaseException:
            self._interrupt(run)
            raise
        self.forward_passes += 1
        return value

    def _loss_at(self, closure: Closure, k: int, takes_index: bool) -> float:
        """The closure's loss, counted as a forward pass, for estimators that restart a step whose
        closure raised (FZOO, HiZOO, LOZO) instead of resuming it as ``_evaluate`` does."""
        value = float(closure(k) if takes_index else closure())  # type: ignore[call-arg]
        self.forward_passes += 1
        return value

    def _two_point(
        self,
        sweep: Callable[[int, float], None],
        seed: int,
        closure: Closure | None,
        takes_index: bool,
        k: int = 0,
    ) -> tuple[float, float]:
        """(l(theta + eps d), l(theta - eps d)), ``sweep(seed, a)`` adding a * d(seed) to the weights:
        three sweeps, the weights back at theta (to rounding) at the end, also when the closure
        raises. Without a closure, the sweeps alone (a replay) and (nan, nan)."""
        sweep(seed, self.eps)
        if closure is None:
            sweep(seed, -2 * self.eps)
            sweep(seed, self.eps)
            return math.nan, math.nan
        try:
            plus = self._loss_at(closure, k, takes_index)
        except BaseException:
            sweep(seed, -self.eps)
            raise
        sweep(seed, -2 * self.eps)
        try:
            minus = self._loss_at(closure, k + 1, takes_index)
        finally:
            sweep(seed, self.eps)
        return plus, minus

    def _skip(self, seeds: tuple[int, ...], losses: Sequence[Any], scales: tuple[float, ...] = ()) -> float:
        """Record a step whose losses were not all finite as skipped (the weights are at theta);
        raise NonFiniteLossError under ``on_nonfinite='raise'``. Returns nan, the step's loss."""
        self._finish(StepRecord(self.step_count, seeds, (), self._lrs(), True, scales))
        self.nonfinite_steps += 1
        if self.on_nonfinite == "raise":
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step_count - 1}: {', '.join(map(str, losses))}; the weights "
                "were restored and not updated"
            )
        return math.nan

    def _interrupt(self, run: _StepRun) -> None:
        """Move from theta + at*z back to theta, noting the elements where adding at*z again would not
        give back the weights the closure failed at (a few percent, by rounding), so the step can
        resume there exactly. If even that note does not fit in memory, the weights are still
        restored and the next step starts afresh."""
        at, seed = run.at, run.seeds[-1]
        assert at is not None
        if self._forward is not None:  # the weights never moved: put back what stands in for them
            self._forward.restore()
            self._set_offset(None)
            run.fingerprint = self._fingerprint([s for s, _, _ in self._active()])
            self._interrupted = run
            return
        active = self._active()
        slices = [s for s, _, _ in active]
        index = {id(s): i for i, s in enumerate(slices)}
        at_of = {id(s): at / self._c.get(p, 1.0) for s, p, _ in active}
        patches: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        out_of_memory: list[BaseException] = []

        def back_to_theta(s: NoiseSlice, c: Chunk) -> None:
            seen = s.local[c.p_lo : c.p_hi]
            z = draw(s, c, seed)
            theta = add_scaled_(scratch_like(seen, 3, seen.dtype).copy_(seen), z, -at_of[id(s)])
            if not out_of_memory:
                again = add_scaled_(
                    scratch_like(seen, 4, seen.dtype).copy_(theta), z, at_of[id(s)]
                )  # resuming
                try:
                    differ = torch.nonzero(again != seen).view(-1)
                    patches.append((index[id(s)], c.p_lo, differ.int(), seen[differ]))
                except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
                    out_of_memory.append(err)
            seen.copy_(theta)

        for_each_chunk(slices, self.chunk_numel, back_to_theta)
        if out_of_memory:
            patches.clear()
            self._interrupted = None
            return
        run.patches = [p for p in patches if p[2].numel()]
        run.fingerprint = self._fingerprint(slices)
        self._interrupted = run

    def _resume_interrupted(self) -> _StepRun | None:
        """The interrupted step, with the weights returned to where its closure raised, or None if
        there is none or the weights, their storage or the step count changed since."""
        run, self._interrupted = self._interrupted, None
        if run is None:
            return None
        active = self._active()
        slices = [s for s, _, _ in active]
        if self._fingerprint(slices) != run.fingerprint:
            return None
        if self._forward is not None:
            self._set_offset((run.seeds[-1], run.at))
            return run
        at_of = {id(s): run.at / self._c.get(p, 1.0) for s, p, _ in active}

        def back_to_seen(s: NoiseSlice, c: Chunk) -> None:
            add_scaled_(s.local[c.p_lo : c.p_hi], draw(s, c, run.seeds[-1]), at_of[id(s)])

        for_each_chunk(slices, self.chunk_numel, back_to_seen)
        for i, lo, where, values in run.patches:
            slices[i].local[lo:].index_copy_(0, where.long(), values)
        run.patches = []
        return run

    def _fingerprint(self, slices: list[NoiseSlice]) -> tuple[Any, ...]:
        """The step count, where the weights live and their float64 sums: whether they changed."""
        sums = (float(torch.sum(s.local, dtype=torch.float64)) for s in slices)
        return (self.step_count, *(s.local.data_ptr() for s in slices), *sums)

    def _lrs(self) -> tuple[float, ...]:
        return tuple(float(g["lr"]) for g in self.param_groups)

    def _group_lrs(self, record: StepRecord) -> dict[int, float]:
        """id(parameter group) -> the lr a recorded step used for it."""
        return {id(g): lr for g, lr in zip(self.param_groups, record.lrs, strict=True)}

    def _finish(self, record: StepRecord) -> None:
        if record.eps is None:
            record = dataclasses.replace(record, eps=self.eps)
        self.trajectory.append(record)
        self.step_count = record.step + 1

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus the counters that continue the same random stream on resume."""
        sd = super().state_dict()
        sd["mezo"] = {
            "seed": self.seed,
            "step_count": self.step_count,
            "update_count": self.update_count,
            "forward_passes": self.forward_passes,
            "nonfinite_steps": self.nonfinite_steps,
            **self._trajectory_settings(),
        }
        if self._c:  # the scales in force, in parameter order (recomputed only every rescale_every)
            sd["mezo"]["scales"] = [self._c.get(p, 1.0) for p in self._names]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("mezo")
        self.check_compatible(extra)
        super().load_state_dict(state_dict)
        self._slice_cache = None  # it holds the param groups that torch has just replaced
        self._interrupted = None
        self.seed = extra["seed"]
        self.step_count = extra["step_count"]
        self.update_count = extra["update_count"]
        self.forward_passes = extra["forward_passes"]
        self.nonfinite_steps = extra["nonfinite_steps"]
        scales = extra.get("scales")
        self._c = {} if scales is None else dict(zip(self._names, scales, strict=True))

    def check_compatible(self, extra: Mapping[str, Any]) -> None:
        """Refuse to resume or replay a run saved with settings that give another trajectory: another
        noise backend (another z for the same seeds), variant, chunk size, K schedule, or update-rule
        constant (eps, like lr, is kept per step in the records: it may change). ``extra`` is
        ``state_dict()["mezo"]``. Settings that older state dicts did not record are not checked when
        absent."""
        for key, ours in self._trajectory_settings().items():
            if key not in extra and key not in _ALWAYS_SAVED and key not in _BEFORE_RECORDED:
                continue
            saved = extra[key] if key in extra or key in _ALWAYS_SAVED else _BEFORE_RECORDED[key]
            if saved == ours:
                continue
            hint = (
                "it was written by an older generator of z (a mezo_ray before the v3 generator, whose z "
                "depended on the device and the CPU): replay or resume it with the mezo_ray that wrote it"
                if key == "noise_backend"
                else "build the optimizer with the saved value"
            )
            raise ValueError(
                f"state dict was saved with {key}={saved!r} but this optimizer has {key}={ours!r}; {hint}"
            )

    @property
    def noise_backend(self) -> str:
        """The generator of z (``noise.NOISE_TAG``): the same on every device since v3."""
        return NOISE_TAG

    def _trajectory_settings(self) -> dict[str, Any]:
        """What, besides the counters and the groups' lr and weight decay, decides the trajectory."""
        settings: dict[str, Any] = {
            "estimator": "mezo",  # absent from older state dicts: not checked there
            "variant": self.variant,
            "noise_backend": self.noise_backend,
            "chunk_numel": self.chunk_numel,
            "n_perturbations": self.n_perturbations,
            "perturbation_schedule": self.perturbation_schedule,
            "layer_wise": self.layer_wise,  # absent from older state dicts: not checked there
            "scale": self.scale,
            "stochastic_rounding": bool(self._rounded),  # absent from older state dicts: they had none
            "perturbation": self.perturbation,  # absent from older state dicts: in place
        }
        if self.scale != "none":
            settings["estimate"] = self.estimate
            settings["rescale_every"] = self.rescale_every
        if self.perturbation_schedule == "linear":
            settings["max_steps"] = self.max_steps
        if self.variant == "momentum":
            settings["momentum"] = self.momentum
        if self.variant == "adam":
            settings["betas"] = [float(b) for b in self.betas]  # a list: what JSON gives back
            settings["adam_eps"] = self.adam_eps
        return settings


def replay(optimizer: MeZO, records: Iterable[StepRecord], state: Mapping[str, Any] | None = None) -> None:
    """Rebuild the weights from the starting weights (held by ``optimizer``'s parameters) and a
    trajectory, bit for bit: the same sweeps with the recorded seeds, gradients and learning rates.

    ``state``: the optimizer's ``state_dict()`` (or its ``"mezo"`` entry) saved with the records; if
    given, a replay under another noise backend or settings is refused (it would not reproduce them).
    """
    if state is not None:
        optimizer.check_compatible(state.get("mezo", state))
    for record in records:
        optimizer.apply_record(record)


def microbatch_mean(
    loss_fn: Callable[[Any], Any], microbatches: Sequence[Any], sizes: Sequence[int] | None = None
) -> float:
    """Size-weighted mean of ``loss_fn`` over micro-batches: the whole batch's (mean) loss at the
    memory of one micro-batch. Use it inside a closure: ``opt.step(lambda: microbatch_mean(f, mbs))``.

    Without ``sizes``, a micro-batch's example count is read from it: a tensor's first dimension; a
    tuple, or a list of tensors (a DataLoader's ``[x, y]``), or a dict of fields: the first dimension
    of its first (non-scalar) tensor; any other list: its length (one item per example). Anything
    else needs ``sizes``.
    """
    if not microbatches:
        raise ValueError("microbatch_mean needs at least one micro-batch")
    weights = [_example_count(mb) for mb in microbatches] if sizes is None else list(sizes)
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"microbatch_mean: the micro-batch sizes {weights} sum to {total}, not > 0")
    return sum(float(loss_fn(mb)) * w for mb, w in zip(microbatches, weights, strict=True)) / total


def _example_count(mb: Any) -> int:
    """Examples in one micro-batch (see ``microbatch_mean``); ``len`` of an (x, y) tuple would be 2."""
    if torch.is_tensor(mb):
        fields = [mb]
    elif isinstance(mb, Mapping):
        fields = list(mb.values())
    elif isinstance(mb, tuple) or (isinstance(mb, list) and mb and torch.is_tensor(mb[0])):
        fields = list(mb)
    elif isinstance(mb, list):
        return len(mb)
    else:
        fields = []
    for field in fields:
        if torch.is_tensor(field) and field.dim() > 0:
            return int(field.size(0))
    raise ValueError(
        f"microbatch_mean cannot tell how many examples a {type(mb).__name__} micro-batch holds (it "
        "reads a tensor's first dimension, the first tensor of a tuple/dict, or a list's length); "
        "pass sizes=[examples per micro-batch]"
    )


def _takes_index(closure: Callable[..., Any]) -> bool:
    """Whether to call ``closure(k)``: it has a positional parameter without a default. One with a
    default (``lambda b=batch: f(b)``) is bound by the caller and must not receive k."""
    try:
        params = inspect.signature(closure).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(
        p.kind == inspect.Parameter.VAR_POSITIONAL or (p.kind in positional and p.default is p.empty)
        for p in params
    )


def _block_of(name: str) -> int | None:
    """A parameter's layer index: the first ``.<i>.`` of its name (``encoder.layer.3.attention...``)."""
    found = re.search(r"\.(\d+)\.", name)
    return int(found[1]) if found else None


def _norm_group(name: str) -> str | None:
    """The paper code's groups for per-group scales (``retrieve_c``): the embeddings, the LM head,
    each layer; None: a parameter outside them (scale 1)."""
    for group in ("embed", "lm_head"):
        if group in name:
            return group
    block = _block_of(name)
    return None if block is None else f"layer.{block}"


def _squared_norm(p: torch.Tensor) -> float:
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


def saved_setting(extra: Mapping[str, Any], key: str) -> Any:
    """A trajectory setting as a state dict's ``mezo`` part has it: recorded, or for one recorded only
    since, what every run before did (None: not known)."""
    return extra[key] if key in extra else _BEFORE_RECORDED.get(key)


def _check(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"MeZO: {field}={value!r} is not allowed; expected {allowed}")
