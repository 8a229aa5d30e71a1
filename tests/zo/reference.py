"""A plain, obviously correct MeZO step: materialised z, out-of-place sweeps, torch's own optimizers.

Independent of the optimizer under test except for the noise it must share (``full_noise``) and
the seed derivation (``mix_seed``): the update rules come from ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mezo_ray.zo import DEFAULT_NO_DECAY, full_noise, mix_seed


def decays(name: str) -> bool:
    return not any(s in name.lower() for s in DEFAULT_NO_DECAY)


class ReferenceMeZO:
    """Keeps its own torch optimizer and applies ``g_hat`` as a gradient, one step at a time."""

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        eps: float,
        weight_decay: float,
        variant: str,
        n_perturbations: int = 1,
        seed: int = 0,
        chunk_numel: int = 1 << 20,
        num_layers: int | None = None,
    ) -> None:
        self.model, self.lr, self.eps, self.variant = model, lr, eps, variant
        self.num_layers = num_layers  # layer-wise: the paper code's should_optim, f".{t % L}." in name
        self.k, self.seed, self.chunk_numel, self.t = n_perturbations, seed, chunk_numel, 0
        named = list(model.named_parameters())
        groups = [
            {"params": [p for n, p in named if decays(n)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
        ]
        self.names = {p: n for n, p in named}
        self.wd_of = {p: g["weight_decay"] for g in groups for p in g["params"]}
        if variant in ("sgd", "sign"):
            self.opt = torch.optim.SGD(groups, lr=lr)
        elif variant == "momentum":
            self.opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
        else:
            self.opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)

    def step(self, loss_fn: Callable[[], torch.Tensor]) -> None:
        self.opt.zero_grad(set_to_none=True)  # parameters left out of this step keep no old gradient
        params = list(self.names)
        if self.num_layers:
            params = [p for p in params if f".{self.t % self.num_layers}." in self.names[p]]
        theta0 = [p.detach().clone() for p in params]
        g_hat = [torch.zeros_like(p) for p in params]
        for k in range(self.k):
            seed = mix_seed(self.seed, self.t, k)
            zs = [full_noise(p, self.names[p], seed, self.chunk_numel).to(p.dtype) for p in params]
            losses = []
            for sign in (1.0, -1.0):  # out-of-place: theta = theta0 + sign * eps * z
                for p, t0, z in zip(params, theta0, zs, strict=True):
                    p.data = t0 + sign * self.eps * z
                with torch.no_grad():
                    losses.append(float(loss_fn()))
            g = (losses[0] - losses[1]) / (2 * self.eps)
            for acc, z in zip(g_hat, zs, strict=True):
                acc += g * z / self.k
        for p, t0, acc in zip(params, theta0, g_hat, strict=True):
            p.data = t0.clone()
            p.grad = acc
        if self.variant == "sign":
            with torch.no_grad():
                for p in params:
                    p.mul_(1 - self.lr * self.wd_of[p]).sub_(self.lr * torch.sign(p.grad))
        else:
            self.opt.step()
        self.t += 1


# --------------------------------------------------------------------------------------------------
# The noise generator written from its definition (noise.py's docstring), independently of the kernels


def philox4x32_10(counter: tuple[int, ...], key: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Philox4x32-10 in Python integers (Salmon et al. 2011, Random123's philox4x32)."""
    mask = 0xFFFFFFFF
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & mask, (p0 >> 32) ^ c3 ^ k1, p0 & mask
    return c0, c1, c2, c3


def box_muller32(wa: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float32 Box-Muller of noise.py on uint32 word arrays, in numpy float32 operations: the
    radius sqrt(-2 ln u) with u = (wa >> 8 + 1) 2^-24, ln u = e ln 2 + 2 atanh(s), s = (m - 1) / (m + 1)
    for u = m 2^e, m in [sqrt(1/2), sqrt(2)); the angle (wb >> 8) 2 pi / 2^24 as the nearest quarter
    turn q and a rest x, |x| <= pi/4, whose sine and cosine are Taylor series to x^9 and x^10."""
    f32 = np.float32
    u = ((wa >> 8).astype(np.int32) + 1).astype(f32) * f32(2.0**-24)
    bits = u.view(np.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).astype(np.int32).view(f32)
    big = m > f32(np.sqrt(2))
    m = np.where(big, m * f32(0.5), m)
    e = np.where(big, e + 1, e).astype(f32)
    f = m - f32(1)
    s = f / (f + f32(2))
    s2 = s * s
    series = f32(1 / 11)
    for n in (9, 7, 5, 3):
        series = f32(1 / n) + s2 * series
    ln2_hi, ln2_lo = f32(0.693145751953125), f32(np.log(2) - 0.693145751953125)
    ln_u = e * ln2_hi + (e * ln2_lo + (s + s * (s2 * series)) * f32(2))
    radius = np.sqrt(ln_u * f32(-2))
    k = (wb >> 8).astype(np.int32)
    q = (k + (1 << 21)) >> 22
    x = (k - (q << 22)).astype(f32) * f32(2 * np.pi / 2**24)
    x2 = x * x
    sin_series = f32(1 / 362880)
    for c in (-1 / 5040, 1 / 120, -1 / 6):
        sin_series = f32(c) + x2 * sin_series
    cos_series = f32(-1 / 3628800)
    for c in (1 / 40320, -1 / 720, 1 / 24, -1 / 2):
        cos_series = f32(c) + x2 * cos_series
    sin_x, cos_x = x + x * (x2 * sin_series), f32(1) + x2 * cos_series
    q = q & 3
    cos_a = np.select([q == 0, q == 1, q == 2], [cos_x, -sin_x, -cos_x], sin_x)
    sin_a = np.select([q == 0, q == 1, q == 2], [sin_x, cos_x, -sin_x], -cos_x)
    return radius * cos_a, radius * sin_a
