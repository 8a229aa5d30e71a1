"""What every zeroth-order optimizer shares, and the contract an estimator fills in.

``ZeroOrderOptimizer`` is a ``torch.optim.Optimizer`` that owns the counters (steps, updates, forward
passes), the seed log (``trajectory``, one ``StepRecord`` a step), the state dict and the check that a
resumed or replayed run has the settings that wrote it, and the sweep engine (``sweeps.py``). An
estimator is a subclass that fills in the abstract methods:

- ``step(closure)``: the probes of a step (sweeps and forward passes) and how their losses become the
  per-seed coefficients its ``StepRecord`` keeps; it ends with ``_commit(record)``;
- ``_redo_sweeps(record)``: the same probe sweeps without a closure (a replay; in-place sweeps round,
  so a replay must redo them to give the same bits);
- ``_update(record)``: the update sweep from the recorded scalars;
- ``_passes_of(record)``, ``state_multiple`` and ``_trajectory_settings()``: forward passes per step,
  optimizer state in multiples of the parameters, and what decides the trajectory (checked on resume).

``replay(optimizer, records)`` then rebuilds the weights from the starting weights and the seed log, bit
for bit, for every estimator alike.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

from mezo_ray.zo.noise import DEFAULT_CHUNK_NUMEL, NOISE_TAG
from mezo_ray.zo.record import Closure, NonFiniteLossError, StepRecord, check
from mezo_ray.zo.sweeps import Sweeps

# The paper's OPT code: no weight decay for biases and LayerNorm weights (matched case-insensitively).
DEFAULT_NO_DECAY: tuple[str, ...] = ("bias", "layer_norm", "layernorm")
# The settings every MeZO state dict has held; those recorded since may be absent from older ones.
_ALWAYS_SAVED: tuple[str, ...] = ("variant", "chunk_numel")
# Settings recorded since, with what every state dict saved before them did: those runs rounded to nearest.
_BEFORE_RECORDED: dict[str, Any] = {"stochastic_rounding": False, "perturbation": "in_place"}


class ZeroOrderOptimizer(torch.optim.Optimizer, abc.ABC):
    """The shared part of every estimator; the abstract methods are the estimator's (the contract).

    Args:
        params: parameters, ``model.named_parameters()`` (names drive the noise streams and the
            no-decay rule; without names, ``param.<index>`` is used) or torch-style groups.
        lr: learning rate (per group; torch LR schedulers work on it).
        eps: perturbation scale epsilon.
        weight_decay: per group; not applied to parameters whose name contains any of ``no_decay``.
        seed: base seed; the seed of probe k at step t is ``mix_seed(seed, t, k)``.
        chunk_numel: elements per unit of the sweeps' work (and of their scratch memory); z does not
            depend on it, but a state dict records it and a resume checks it, as before.
        on_nonfinite: ``skip`` (restore, count, go on) or ``raise`` (restore, raise NonFiniteLossError).
        stochastic_rounding: round the updates of bfloat16 / float16 parameters stochastically (None,
            the default: on for them; float32 is never rounded): at the paper's OPT lr of 1e-7,
            lr g z is far below half an ulp of most low-precision weights and rounding to nearest
            drops it. False: the paper's fp16 arithmetic (round to nearest).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        seed: int = 0,
        chunk_numel: int = DEFAULT_CHUNK_NUMEL,
        on_nonfinite: Literal["skip", "raise"] = "skip",
        no_decay: Sequence[str] = DEFAULT_NO_DECAY,
        stochastic_rounding: bool | None = None,
    ) -> None:
        check(lr >= 0, "lr", lr, "a number >= 0")
        check(eps > 0, "eps", eps, "a number > 0")
        check(weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0")
        check(chunk_numel > 0, "chunk_numel", chunk_numel, "an integer > 0")
        check(on_nonfinite in ("skip", "raise"), "on_nonfinite", on_nonfinite, "'skip' or 'raise'")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.eps = eps
        self.seed = seed
        self.chunk_numel = chunk_numel
        self.on_nonfinite = on_nonfinite
        self.sweeps = Sweeps(self, chunk_numel, no_decay, stochastic_rounding)
        self.step_count = 0  # steps taken, skipped ones included: the index of the next step's seeds
        self.update_count = 0  # updates applied (Adam's bias-correction t)
        self.forward_passes = 0  # closure evaluations
        self.nonfinite_steps = 0
        self.trajectory: list[StepRecord] = []

    # ------------------------------------------------------------------------------------------------
    # The contract: what each estimator says
    @abc.abstractmethod
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Probe (sweeps and forward passes), turn the losses into the record's coefficients, then
        ``_commit(record)`` (or ``_skip`` on non-finite losses); returns the step's loss."""

    @abc.abstractmethod
    def _redo_sweeps(self, record: StepRecord) -> None:
        """The recorded step's probe sweeps, without forward passes (a replay rounds as the run did)."""

    @abc.abstractmethod
    def _update(self, record: StepRecord) -> None:
        """The update sweep from the recorded coefficients and learning rates."""

    @abc.abstractmethod
    def _passes_of(self, record: StepRecord) -> int:
        """Forward passes the recorded step took."""

    @property
    @abc.abstractmethod
    def state_multiple(self) -> float:
        """Optimizer state in multiples of the trainable parameters."""

    @abc.abstractmethod
    def _trajectory_settings(self) -> dict[str, Any]:
        """What, besides the counters and the groups' lr and weight decay, decides the trajectory."""

    # ------------------------------------------------------------------------------------------------
    # Replaying a step
    @property
    def last_projected_grads(self) -> tuple[float, ...]:
        return self.trajectory[-1].projected_grads if self.trajectory else ()

    def apply_record(self, record: StepRecord) -> None:
        """Redo a recorded step: the same sweeps in the same order, with the recorded scalars."""
        if record.step != self.step_count:
            raise ValueError(
                f"record is for step {record.step} but the optimizer is at step {self.step_count}"
            )
        self._before_replay()
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

    def _before_replay(self) -> None:
        """What a replayed step drops first (MeZO: a step interrupted before)."""

    # ------------------------------------------------------------------------------------------------
    # Evaluating
    def _loss_at(self, closure: Closure, k: int, takes_index: bool) -> float:
        """The closure's loss, counted as a forward pass, for estimators that restart a step whose
        closure raised instead of resuming it (every one but MeZO)."""
        value = float(closure(k) if takes_index else closure())  # type: ignore[call-arg]
        self.forward_passes += 1
        return value

    def two_point(
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

    def one_sided(
        self, sweep: Callable[[int, float], None], seeds: Sequence[int], closure: Closure, takes_index: bool
    ) -> list[float]:
        """[l(theta + eps d(seed)) for each seed], ``sweep`` as in ``two_point``: the weights back at
        theta (to rounding) after each probe, also when the closure raises."""
        losses = []
        for k, seed in enumerate(seeds):
            sweep(seed, self.eps)
            try:
                losses.append(self._loss_at(closure, k, takes_index))
            finally:
                sweep(seed, -self.eps)
        return losses

    def _commit(self, record: StepRecord) -> None:
        """Apply a step's update and log it."""
        self._update(record)
        self._finish(record)

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

    def _lrs(self) -> tuple[float, ...]:
        return tuple(float(g["lr"]) for g in self.param_groups)

    def _group_lrs(self, record: StepRecord) -> dict[int, float]:
        """id(parameter group) -> the lr a recorded step used for it."""
        return {id(g): lr for g, lr in zip(self.param_groups, record.lrs, strict=True)}

    def _weight_decay(self, p: torch.Tensor, group: Mapping[str, Any]) -> float:
        """The group's weight decay, or 0 for a parameter named in ``no_decay``."""
        return group["weight_decay"] if self.sweeps.decays[p] else 0.0

    def _finish(self, record: StepRecord) -> None:
        if record.eps is None:
            record = dataclasses.replace(record, eps=self.eps)
        self.trajectory.append(record)
        self.step_count = record.step + 1

    # ------------------------------------------------------------------------------------------------
    # State
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
        if self.sweeps.scales:  # the scales in force, in parameter order (recomputed only when due)
            sd["mezo"]["scales"] = [self.sweeps.scale_of(p) for p in self.sweeps.names]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("mezo")
        self.check_compatible(extra)
        super().load_state_dict(state_dict)
        self.sweeps.forget_slices()  # they hold the param groups that torch has just replaced
        self._before_replay()
        self.seed = extra["seed"]
        self.step_count = extra["step_count"]
        self.update_count = extra["update_count"]
        self.forward_passes = extra["forward_passes"]
        self.nonfinite_steps = extra["nonfinite_steps"]
        scales = extra.get("scales")
        self.sweeps.scales = {} if scales is None else dict(zip(self.sweeps.names, scales, strict=True))

    def check_compatible(self, extra: Mapping[str, Any]) -> None:
        """Refuse to resume or replay a run saved with settings that give another trajectory: another
        noise backend (another z for the same seeds), estimator, variant, chunk size, K schedule, or
        update-rule constant (eps, like lr, is kept per step in the records: it may change). ``extra``
        is ``state_dict()["mezo"]``. Settings that older state dicts did not record are not checked
        when absent."""
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

    def perturb_in_forward(self, model: torch.nn.Module) -> None:
        """Only MeZO's probes are sweeps the forward can apply in their place (``MeZO`` overrides it)."""
        raise ValueError(
            f"perturb_in_forward: {type(self).__name__} keeps its own in-place sweeps; only MeZO's "
            "estimate perturbs in the forward"
        )

    @property
    def perturbation(self) -> str:
        """Where perturbations are applied: ``in_place`` (the sweeps) or ``forward``."""
        return self.sweeps.placement

    def _common_settings(self, estimator: str) -> dict[str, Any]:
        """The trajectory settings every estimator has, in the order MeZO's state dicts hold them."""
        return {
            "estimator": estimator,  # absent from older state dicts: not checked there
            "variant": "sgd",
            "noise_backend": self.noise_backend,
            "chunk_numel": self.chunk_numel,
            "n_perturbations": 1,
            "perturbation_schedule": "constant",
            "layer_wise": self.sweeps.layer_wise,  # absent from older state dicts: not checked there
            "scale": "none",
            "stochastic_rounding": bool(self.sweeps.rounded),  # absent from older state dicts: none
            "perturbation": self.perturbation,  # absent from older state dicts: in place
        }


def replay(
    optimizer: ZeroOrderOptimizer,
    records: Iterable[StepRecord],
    state: Mapping[str, Any] | None = None,
    after_step: Callable[[StepRecord], None] | None = None,
) -> None:
    """Rebuild the weights from the starting weights (held by ``optimizer``'s parameters) and a
    trajectory, bit for bit: the same sweeps with the recorded seeds, gradients and learning rates.

    ``state``: the optimizer's ``state_dict()`` (or its ``"mezo"`` entry) saved with the records; if
    given, a replay under another noise backend or settings is refused (it would not reproduce them).
    ``after_step(record)``: called after each replayed step (what a trial does after each step).
    """
    if state is not None:
        optimizer.check_compatible(state.get("mezo", state))
    for record in records:
        optimizer.apply_record(record)
        if after_step is not None:
            after_step(record)


def saved_setting(extra: Mapping[str, Any], key: str) -> Any:
    """A trajectory setting as a state dict's ``mezo`` part has it: recorded, or for one recorded only
    since, what every run before did (None: not known)."""
    return extra[key] if key in extra else _BEFORE_RECORDED.get(key)
