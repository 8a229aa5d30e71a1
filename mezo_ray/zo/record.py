"""What every zeroth-order step leaves behind, and the small helpers every estimator shares.

``StepRecord``: the seeds, coefficients and learning rates of one step, enough to redo it without data
(the seed log). ``takes_index``: whether a closure wants the probe's index. ``check``: one way to refuse
a bad setting, naming the value and what is allowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

Closure = Callable[[], Any] | Callable[[int], Any]


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


def takes_index(closure: Callable[..., Any]) -> bool:
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


def check(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Refuse a setting: ``ValueError("MeZO: eps=0 is not allowed; expected a number > 0")``."""
    if not ok:
        raise ValueError(f"MeZO: {field}={value!r} is not allowed; expected {allowed}")
