"""MeZO's update rules, as a table: how an estimate g of one chunk becomes a step on theta.

A rule reads the chunk of theta, the estimate (scratch it may overwrite), its own state (one buffer the
size of the parameters per name in ``UpdateRule.state``), the group's lr and weight decay, and the
constants in ``RuleSettings``. A new rule is one function and one entry in ``UPDATE_RULES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from mezo_ray.zo.noise import add_scaled_
from mezo_ray.zo.noise import scratch as scratch_like

Variant = Literal["sgd", "momentum", "adam", "sign"]
VARIANTS: tuple[str, ...] = ("sgd", "momentum", "adam", "sign")  # the keys of UPDATE_RULES


@dataclass(frozen=True)
class RuleSettings:
    """What update rules read besides the chunk: momentum, Adam's betas and bias corrections."""

    momentum: float
    beta1: float
    beta2: float
    bias1: float
    bias2: float
    adam_eps: float


def _sgd(theta: torch.Tensor, g: torch.Tensor, state: dict, lr: float, wd: float, h: RuleSettings) -> None:
    """theta <- theta (1 - lr wd) - lr g (the paper)."""
    if wd:
        theta.mul_(1 - lr * wd)
    theta.add_(g.mul_(-lr))


def _sign(theta: torch.Tensor, g: torch.Tensor, state: dict, lr: float, wd: float, h: RuleSettings) -> None:
    """ZO-SGD-Sign: theta <- theta (1 - lr wd) - lr sign(g)."""
    if wd:
        theta.mul_(1 - lr * wd)
    theta.add_(g.sign_().mul_(-lr))


def _momentum(
    theta: torch.Tensor, g: torch.Tensor, state: dict, lr: float, wd: float, h: RuleSettings
) -> None:
    """torch.optim.SGD: buf <- m buf + (g + wd theta); theta <- theta - lr buf."""
    if wd:
        add_scaled_(g, theta, wd)
    state["momentum_buffer"].mul_(h.momentum).add_(g)
    add_scaled_(theta, state["momentum_buffer"], -lr)


def _adam(theta: torch.Tensor, g: torch.Tensor, state: dict, lr: float, wd: float, h: RuleSettings) -> None:
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
    apply: Callable[[torch.Tensor, torch.Tensor, dict, float, float, RuleSettings], None]


UPDATE_RULES: dict[str, UpdateRule] = {
    "sgd": UpdateRule((), _sgd),
    "sign": UpdateRule((), _sign),
    "momentum": UpdateRule(("momentum_buffer",), _momentum),
    "adam": UpdateRule(("exp_avg", "exp_avg_sq"), _adam),
}
