"""HiZOO against its equations written out (materialised z, out-of-place, float64)."""

from __future__ import annotations

import torch
from torch import nn

from mezo_ray.zo import HiZOO, full_noise, mix_seed, replay


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def reference(model: nn.Module, loss, steps: int, lr: float, eps: float, a: float) -> dict[str, torch.Tensor]:
    """arXiv 2402.15173 / Yanjun-Zhao/HiZOO zo_Hessian_step_update: l_0, l+- at theta +- eps z / sqrt(H),
    H <- (1 - a) H + a |l+ + l- - 2 l_0| H z^2 / (2 eps^2), theta -= lr (l+ - l-) / (2 eps) z / sqrt(H)."""
    named = list(model.named_parameters())
    hessian = {n: torch.ones_like(p) for n, p in named}
    for t in range(steps):
        zs = {n: full_noise(p, n, mix_seed(0, t, 0), 7).double() for n, p in named}
        theta = {n: p.detach().clone() for n, p in named}
        loss_0 = float(loss())
        losses = []
        for sign in (1.0, -1.0):
            for n, p in named:
                p.data = theta[n] + sign * eps * zs[n] / hessian[n].sqrt()
            losses.append(float(loss()))
        for n, p in named:
            hessian[n] = (1 - a) * hessian[n] + abs(losses[0] + losses[1] - 2 * loss_0) * hessian[n] * zs[
                n
            ] ** 2 * a / (2 * eps**2)
            p.data = theta[n] - lr * (losses[0] - losses[1]) / (2 * eps) * zs[n] / hessian[n].sqrt()
    return hessian


def test_hizoo_steps_match_the_papers_equations_and_replay():
    ours, ref = tiny(), tiny()
    x = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    opt = HiZOO(ours.named_parameters(), lr=1e-2, eps=1e-3, hessian_smooth=0.5, chunk_numel=7)
    for _ in range(3):
        opt.step(lambda: (ours(x) ** 2).mean())
    hessian = reference(ref, lambda: (ref(x) ** 2).mean(), 3, 1e-2, 1e-3, 0.5)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(
            opt.state[p]["hessian"].view_as(p), hessian[name], rtol=1e-9, atol=1e-12, msg=name
        )
        assert not torch.equal(opt.state[p]["hessian"].view_as(p), torch.ones_like(p))  # the estimate moved
    assert opt.forward_passes == 9 and opt.state_multiple == 1
    again = tiny()
    replay(
        HiZOO(again.named_parameters(), lr=1e-2, eps=1e-3, hessian_smooth=0.5, chunk_numel=7), opt.trajectory
    )
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))
