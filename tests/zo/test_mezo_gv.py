"""MeZO-GV against its equations written out (materialised z, out-of-place, float64), its seed-log
replay, its resume from a (JSON) state dict, and its refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mezo_ray.zo import MeZO, NonFiniteLossError, full_noise, mix_seed, replay
from mezo_ray.zo.mezo_gv import MeZOGV

LR, EPS = 1e-2, 1e-3


def tiny(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)


def batch(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(1)).to(dtype)


@torch.no_grad()
def reference(model: nn.Module, loss, steps: int, m: int, alpha: float, wd: float, mistake: str = "") -> None:
    """arXiv 2601.04710 (GV-ZO of v1; stan-anony/MeZO-GV trainer_fwa_mem_eff.py): l_i = loss(theta +
    eps z_i) for a pool of M; the int(alpha M) lowest are the elite E, the rest B; v = mean_E z -
    mean_B z; g = (loss(theta + eps v) - loss(theta - eps v)) / (2 eps); theta -= lr (g v + wd theta),
    no weight decay for biases. ``mistake``: a wrong reference, ``flip`` (the elite are the highest
    losses) or ``no_contrast`` (v = mean_E z, without the high-loss group)."""
    named = list(model.named_parameters())
    k = int(m * alpha)
    for t in range(steps):
        theta = {n: p.detach().clone() for n, p in named}
        zs = [{n: full_noise(p, n, mix_seed(0, t, i), 7).double() for n, p in named} for i in range(m)]

        def at(direction: dict[str, torch.Tensor], a: float, theta=theta) -> float:
            for n, p in named:
                p.data = theta[n] + a * direction[n]
            return float(loss())

        losses = [at(z, EPS) for z in zs]
        order = sorted(range(m), key=lambda i: losses[i], reverse=mistake == "flip")
        elite, rest = order[:k], order[k:]
        away = 0.0 if mistake == "no_contrast" else 1.0
        v = {
            n: sum(zs[i][n] for i in elite) / len(elite) - away * sum(zs[i][n] for i in rest) / len(rest)
            for n, _ in named
        }
        g = (at(v, EPS) - at(v, -EPS)) / (2 * EPS)
        for n, p in named:
            decay = 0.0 if "bias" in n else wd
            p.data = theta[n] - LR * (g * v[n] + decay * theta[n])


@pytest.mark.parametrize(("m", "alpha", "wd"), [(2, 0.5, 0.0), (5, 0.4, 0.1), (6, 0.5, 0.0)])
def test_mezo_gv_steps_match_the_equations_and_replay(m: int, alpha: float, wd: float):
    x = batch()
    ours, ref = tiny(), tiny()
    start = [p.detach().clone() for p in ours.parameters()]
    settings = {"pool_size": m, "elite_ratio": alpha, "weight_decay": wd, "chunk_numel": 7}
    opt = MeZOGV(ours.named_parameters(), lr=LR, eps=EPS, **settings)
    steps = 4
    for _ in range(steps):
        opt.step(lambda: (ours(x) ** 2).mean())
    reference(ref, lambda: (ref(x) ** 2).mean(), steps, m, alpha, wd)
    for (name, p), q, s in zip(ours.named_parameters(), ref.parameters(), start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        assert not torch.equal(p, s)
    # the comparison can fail: a v without the high-loss group, or (when the groups differ in size)
    # pointed at the high losses, gives other weights. With K = M - K, g v is the same for v and -v, so
    # the ranking's direction does not matter, and with M = 2 (K = 1) neither do the pool's losses.
    for mistake in ("no_contrast", "flip") if 2 * int(m * alpha) != m else ("no_contrast",):
        wrong = tiny()
        reference(wrong, lambda wrong=wrong: (wrong(x) ** 2).mean(), steps, m, alpha, wd, mistake)
        assert not all(
            torch.allclose(p, q, rtol=1e-6, atol=1e-9)
            for p, q in zip(ours.parameters(), wrong.parameters(), strict=True)
        ), mistake
    assert opt.forward_passes == steps * (m + 2) and opt.state_multiple == 0
    record = opt.trajectory[-1]
    k = int(m * alpha)
    assert len(record.seeds) == m and len(record.projected_grads) == m + 1
    assert sorted(record.projected_grads[:m]) == sorted([1 / k] * k + [-1 / (m - k)] * (m - k))
    again = tiny()
    fresh = MeZOGV(again.named_parameters(), lr=LR, eps=EPS, **settings)
    replay(fresh, opt.trajectory, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))
    assert fresh.forward_passes == opt.forward_passes and fresh.update_count == steps


def run(
    model: nn.Module, opt: MeZOGV, x: torch.Tensor, steps: int, nan_at: dict[int, int] | None = None
) -> None:
    """``steps`` steps; ``nan_at``: step -> the probe index whose loss is nan there."""
    nan_at = nan_at or {}
    for _ in range(steps):
        t = opt.step_count

        def loss(k: int, t: int = t) -> float:
            return math.nan if nan_at.get(t) == k else float((model(x).float() ** 2).mean())

        opt.step(loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mezo_gv_replays_its_seed_log_bit_for_bit(dtype: torch.dtype):
    ours, x = tiny(dtype), batch(dtype)
    kw = {"lr": 1e-3, "eps": EPS, "weight_decay": 0.1, "pool_size": 4, "elite_ratio": 0.25, "chunk_numel": 7}
    opt = MeZOGV(ours.named_parameters(), **kw)
    run(ours, opt, x, 8, nan_at={2: 1, 5: 5})  # step 2: nan in the pool; step 5: at theta - eps v
    skipped = [r for r in opt.trajectory if r.skipped]
    assert [r.step for r in skipped] == [2, 5] and opt.nonfinite_steps == 2 and opt.update_count == 6
    assert skipped[0].projected_grads == () and len(skipped[1].projected_grads) == 4
    assert opt.forward_passes == 6 * 6 + 4 + 6
    again = tiny(dtype)
    fresh = MeZOGV(again.named_parameters(), **kw)
    replay(fresh, opt.trajectory, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))
    assert fresh.nonfinite_steps == 2 and fresh.forward_passes == opt.forward_passes
    # the seed log written as JSON replays as well
    logged = [type(r).from_dict(json.loads(json.dumps(r.to_dict()))) for r in opt.trajectory]
    again = tiny(dtype)
    replay(MeZOGV(again.named_parameters(), **kw), logged)
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))


def test_mezo_gv_resumes_from_a_json_state_dict_bit_for_bit():
    x = batch(torch.float32)
    kw = {"lr": 1e-3, "eps": EPS, "pool_size": 3, "elite_ratio": 0.5, "chunk_numel": 7}
    whole = tiny(torch.float32)
    opt = MeZOGV(whole.named_parameters(), **kw)
    run(whole, opt, x, 7)

    first = tiny(torch.float32)
    before = MeZOGV(first.named_parameters(), **kw)
    run(first, before, x, 4)
    saved = json.loads(json.dumps(before.state_dict()))  # the checkpoint keeps it as JSON
    model = tiny(torch.float32)
    with torch.no_grad():
        for p, q in zip(model.parameters(), first.parameters(), strict=True):
            p.copy_(q)
    after = MeZOGV(model.named_parameters(), **kw)
    after.load_state_dict(saved)
    run(model, after, x, 3)
    assert after.step_count == 7 and after.forward_passes == opt.forward_passes == 7 * 5
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), whole.parameters(), strict=True))

    with pytest.raises(ValueError, match="pool_size=3"):
        MeZOGV(tiny().named_parameters(), **{**kw, "pool_size": 4}).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"elite_ratio=0\.5"):
        MeZOGV(tiny().named_parameters(), **{**kw, "elite_ratio": 0.4}).load_state_dict(saved)


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ({"pool_size": 1}, "pool_size=1"),
        ({"pool_size": 0}, "pool_size=0"),
        ({"pool_size": 2.5}, "pool_size=2.5"),
        ({"pool_size": True}, "pool_size=True"),
        ({"elite_ratio": 0.0}, "elite_ratio=0.0"),
        ({"elite_ratio": 1.0}, "elite_ratio=1.0"),
        ({"elite_ratio": 0.4}, "elite_ratio=0.4"),  # int(0.4 * 2) = 0: no elite group
        ({"pool_size": 8, "elite_ratio": 0.1}, "elite_ratio=0.1"),
        ({"elite_ratio": True}, "elite_ratio=True"),
        ({"eps": 0.0}, "eps=0.0"),
    ],
)
def test_mezo_gv_refuses_bad_settings_by_value(setting: dict, shown: str):
    with pytest.raises(ValueError, match=shown):
        MeZOGV(tiny().named_parameters(), lr=1e-3, **setting)


def test_mezo_gv_refuses_a_mezo_log_the_forward_placement_and_no_closure():
    mezo = MeZO(tiny().named_parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="estimator"):
        MeZOGV(tiny().named_parameters(), lr=1e-3).check_compatible(mezo.state_dict()["mezo"])
    model = tiny()
    with pytest.raises(ValueError, match="perturb_in_forward"):
        MeZOGV(model.named_parameters(), lr=1e-3).perturb_in_forward(model)
    with pytest.raises(ValueError, match="closure"):
        MeZOGV(model.named_parameters(), lr=1e-3).step()


def test_mezo_gv_raises_on_a_nonfinite_loss_with_the_weights_restored():
    model, x = tiny(), batch()
    start = [p.detach().clone() for p in model.parameters()]
    opt = MeZOGV(model.named_parameters(), lr=1e-3, pool_size=3, on_nonfinite="raise", chunk_numel=7)
    with pytest.raises(NonFiniteLossError):
        run(model, opt, x, 1, nan_at={0: 3})  # at theta + eps v
    for p, s in zip(model.parameters(), start, strict=True):
        torch.testing.assert_close(p, s, rtol=0, atol=1e-15)
    assert opt.trajectory[0].skipped and len(opt.trajectory[0].projected_grads) == 3
