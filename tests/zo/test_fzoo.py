"""FZOO against its equations written out (materialised Rademacher probes, out-of-place, float64)."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from mezo_ray.zo import FZOO, full_noise, mix_seed, replay


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def reference_step(model: nn.Module, loss, t: int, lr: float, eps: float, n: int) -> None:
    """arXiv 2506.09034 / DKmiyan/FZOO zo_step + zo_update: l_k at theta + eps u_k, l_0 at theta,
    theta -= lr sum_k (l_k - l_0) / (N std(l)) u_k, std the population one; u_k = sign(z_k)."""
    named = list(model.named_parameters())
    theta = {name: p.detach().clone() for name, p in named}
    us = [
        {name: full_noise(p, name, mix_seed(0, t, k), 7).double().sign() for name, p in named}
        for k in range(n)
    ]
    losses = []
    for u in us:
        for name, p in named:
            p.data = theta[name] + eps * u[name]
        losses.append(float(loss()))
    for name, p in named:
        p.data = theta[name].clone()
    loss_0 = float(loss())
    sigma = statistics.pstdev(losses)
    for name, p in named:
        p.data = theta[name] - lr * sum(
            (v - loss_0) / (n * sigma) * u[name] for v, u in zip(losses, us, strict=True)
        )


def test_fzoo_steps_match_the_papers_equations_and_replay():
    ours, ref = tiny(), tiny()
    x = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    start = [p.detach().clone() for p in ours.parameters()]
    opt = FZOO(ours.named_parameters(), lr=1e-2, eps=1e-3, n_probes=4, chunk_numel=7)
    for t in range(3):
        opt.step(lambda: (ours(x) ** 2).mean())
        reference_step(ref, lambda: (ref(x) ** 2).mean(), t, 1e-2, 1e-3, 4)
    for (name, p), q, s in zip(ours.named_parameters(), ref.parameters(), start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        assert not torch.equal(p, s)
    assert opt.forward_passes == 3 * (4 + 1) and opt.state_multiple == 0
    again = tiny()
    replay(FZOO(again.named_parameters(), lr=1e-2, eps=1e-3, n_probes=4, chunk_numel=7), opt.trajectory)
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))


def test_fzoo_refuses_a_single_probe_and_a_mezo_log():
    with pytest.raises(ValueError, match="n_probes=1"):
        FZOO(tiny().named_parameters(), lr=1e-3, n_probes=1)
    from mezo_ray.zo import MeZO

    mezo = MeZO(tiny().named_parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="estimator"):
        FZOO(tiny().named_parameters(), lr=1e-3).check_compatible(mezo.state_dict()["mezo"])
