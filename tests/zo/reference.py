"""A plain, obviously correct MeZO step: materialised z, out-of-place sweeps, torch's own optimizers.

Independent of the optimizer under test except for the noise it must share (``full_noise``) and
the seed derivation (``mix_seed``): the update rules come from ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Callable

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
