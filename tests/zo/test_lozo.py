"""LOZO / LOZO-M against their equations written out (materialised U V^T and z, out-of-place, float64)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from mezo_ray.zo import LOZO, StepRecord, full_noise, mix_seed, replay
from mezo_ray.zo.lozo import U_STREAM, V_STREAM, lowrank_factor

LR, EPS, RANK, INTERVAL, WD = 1e-2, 1e-3, 2, 2, 0.1


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 1)).double()


def reference(model: nn.Module, loss, steps: int, beta: float) -> None:
    """optsuite/LOZO LOZOtrainer.py: matrices perturbed by U V^T (U every step, V every ``INTERVAL``
    steps), vectors by z; g = (l+ - l-) / 2 eps; LOZO: W -= lr (g U V^T + wd W); LOZO-M (sgdm): N = g U
    at step 0, N = beta N V_old^T V / n + (1 - beta) g U at a new V, else beta N + (1 - beta) g U;
    W -= lr (N V^T + wd W); vectors likewise with z. Biases take no weight decay."""
    named = list(model.named_parameters())
    momentum: dict[str, torch.Tensor] = {}
    for t in range(steps):
        seed = mix_seed(0, t, 0)

        def v_of(n: str, p: torch.Tensor, interval: int) -> torch.Tensor:
            return lowrank_factor(n, p.shape[1], RANK, mix_seed(0, interval), V_STREAM).double()

        direction, factor = {}, {}
        for n, p in named:
            if p.dim() == 2:
                factor[n] = lowrank_factor(n, p.shape[0], RANK, seed, U_STREAM).double()
                direction[n] = factor[n] @ v_of(n, p, t // INTERVAL).T
            else:
                direction[n] = factor[n] = full_noise(p, n, seed, 7).double()
        theta = {n: p.detach().clone() for n, p in named}
        losses = []
        for sign in (1.0, -1.0):
            for n, p in named:
                p.data = theta[n] + sign * EPS * direction[n]
            losses.append(float(loss()))
        g = (losses[0] - losses[1]) / (2 * EPS)
        for n, p in named:
            wd = 0.0 if "bias" in n else WD
            if not beta:
                p.data = theta[n] - LR * (g * direction[n] + wd * theta[n])
                continue
            if t == 0:
                momentum[n] = g * factor[n]
            elif p.dim() == 2 and t % INTERVAL == 0:
                v_old, v = v_of(n, p, t // INTERVAL - 1), v_of(n, p, t // INTERVAL)
                momentum[n] = beta * momentum[n] @ v_old.T @ v / p.shape[1] + (1 - beta) * g * factor[n]
            else:
                momentum[n] = beta * momentum[n] + (1 - beta) * g * factor[n]
            step = momentum[n] @ v_of(n, p, t // INTERVAL).T if p.dim() == 2 else momentum[n]
            p.data = theta[n] - LR * (step + wd * theta[n])


def make(model: nn.Module, beta: float) -> LOZO:
    return LOZO(
        model.named_parameters(),
        lr=LR,
        eps=EPS,
        weight_decay=WD,
        rank=RANK,
        interval=INTERVAL,
        beta=beta,
        chunk_numel=7,
    )


@pytest.mark.parametrize("beta", [0.0, 0.9], ids=["LOZO", "LOZO-M"])
def test_lozo_steps_match_the_papers_code_replay_and_resume(beta):
    ours, ref = tiny(), tiny()
    start = {n: w.clone() for n, w in ours.state_dict().items()}
    x = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    opt = make(ours, beta)
    for _ in range(3):
        opt.step(lambda: (ours(x) ** 2).mean())
    saved, weights = copy.deepcopy(opt.state_dict()), {n: w.clone() for n, w in ours.state_dict().items()}
    for _ in range(3):  # steps 3..5: V changes at 4 (LOZO-M carries N over)
        opt.step(lambda: (ours(x) ** 2).mean())
    reference(ref, lambda: (ref(x) ** 2).mean(), 6, beta)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        assert not torch.equal(p.detach(), start[name])  # every parameter moved
    assert opt.forward_passes == 12

    resumed = tiny()
    resumed.load_state_dict(weights)
    again = make(resumed, beta)
    again.load_state_dict(saved)
    for _ in range(3):
        again.step(lambda: (resumed(x) ** 2).mean())
    assert all(torch.equal(p, q) for p, q in zip(resumed.parameters(), ours.parameters(), strict=True))

    replayed = tiny()
    replayed.load_state_dict(start)
    records = [StepRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in opt.trajectory]
    replay(make(replayed, beta), records, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(replayed.parameters(), ours.parameters(), strict=True))


def test_lozo_m_state_is_a_rank_sized_factor_per_matrix_and_a_buffer_per_vector():
    model = tiny()
    x = torch.randn(4, 5, dtype=torch.float64)
    opt = make(model, 0.9)
    opt.step(lambda: model(x).sum())
    held = sum(t.numel() for state in opt.state.values() for t in state.values())
    total = sum(p.numel() for p in model.parameters())
    assert held == (6 + 3 + 1) * RANK + (6 + 3 + 1)  # N: rows x r per matrix; biases: their size
    assert opt.state_multiple == pytest.approx(held / total)
    assert make(tiny(), 0.0).state_multiple == 0


def test_lozo_refuses_bad_settings_by_name():
    with pytest.raises(ValueError, match=r"rank=0"):
        LOZO(tiny().named_parameters(), lr=1e-3, rank=0)
    with pytest.raises(ValueError, match=r"beta=1\.0"):
        LOZO(tiny().named_parameters(), lr=1e-3, beta=1.0)
