"""AdaMeZO against its update written out (materialised z, out-of-place, float64), its seed-log replay,
its resume from a (JSON) state dict, and its refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mezo_ray.zo import MeZO, full_noise, mix_seed, replay
from mezo_ray.zo.adamezo import AdaMeZO

LR, EPS, WINDOW = 1e-4, 1e-3, 3


def tiny(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)


def batch(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(1)).to(dtype)


@torch.no_grad()
def reference(model: nn.Module, loss, steps: int, wd: float, beta1: float, beta2: float) -> None:
    """arXiv 2605.00650 as shawnnn3di/AdaMeZO trainer.py computes it (its hw branch): g_t from l+- at
    theta +- eps z_t; for the first W + 1 steps MeZO's theta -= lr (g_t z_t + wd theta); then
    m = sum_j beta1^j g_{t-j} z_{t-j}, v = sum_j beta2^j g_{t-j}^2 z_{t-j}^2 (v = 1 if beta2 = 0) over the
    last W steps, theta -= lr (100 m / (sqrt(v) + 1e-5) + wd theta); no weight decay for biases."""
    named = list(model.named_parameters())
    history: list[tuple[float, dict[str, torch.Tensor]]] = []
    for t in range(steps):
        z = {n: full_noise(p, n, mix_seed(0, t, 0), 7).double() for n, p in named}
        theta = {n: p.detach().clone() for n, p in named}
        losses = []
        for sign in (1.0, -1.0):
            for n, p in named:
                p.data = theta[n] + sign * EPS * z[n]
            losses.append(float(loss()))
        g = (losses[0] - losses[1]) / (2 * EPS)
        history.append((g, z))
        for n, p in named:
            if t <= WINDOW:
                step = g * z[n]
            else:
                recent = history[-WINDOW:]
                m = sum(beta1 ** (WINDOW - 1 - i) * gi * zi[n] for i, (gi, zi) in enumerate(recent))
                v = sum(beta2 ** (WINDOW - 1 - i) * gi**2 * zi[n] ** 2 for i, (gi, zi) in enumerate(recent))
                if beta2 == 0:
                    v = torch.ones_like(theta[n])
                step = 100 * m / (v.sqrt() + 1e-5)
            decay = 0.0 if "bias" in n else wd
            p.data = theta[n] - LR * (step + decay * theta[n])


@pytest.mark.parametrize(("wd", "beta1", "beta2"), [(0.1, 0.7, 0.9), (0.0, 0.7, 0.0), (0.05, 0.0, 0.5)])
def test_adamezo_steps_match_the_codes_equations_and_replay(wd: float, beta1: float, beta2: float):
    ours, ref, x = tiny(), tiny(), batch()
    start = [p.detach().clone() for p in ours.parameters()]
    settings = {"window": WINDOW, "beta1": beta1, "beta2": beta2, "chunk_numel": 7}
    opt = AdaMeZO(ours.named_parameters(), lr=LR, eps=EPS, weight_decay=wd, **settings)
    steps = 8  # 4 MeZO steps (t <= W), then 4 with the rebuilt moments
    for _ in range(steps):
        opt.step(lambda: (ours(x) ** 2).mean())
    reference(ref, lambda: (ref(x) ** 2).mean(), steps, wd, beta1, beta2)
    for (name, p), q, s in zip(ours.named_parameters(), ref.parameters(), start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        assert not torch.equal(p, s)
    assert opt.forward_passes == 2 * steps and opt.state_multiple == 0
    assert [s for s, _ in opt._window] == [r.seeds[0] for r in opt.trajectory[-WINDOW:]]
    again = tiny()
    fresh = AdaMeZO(again.named_parameters(), lr=LR, eps=EPS, weight_decay=wd, **settings)
    replay(fresh, opt.trajectory, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))
    assert fresh.update_count == opt.update_count and fresh.forward_passes == opt.forward_passes


def run(model: nn.Module, opt: AdaMeZO, x: torch.Tensor, steps: int, nan_at: int = -1) -> None:
    for _ in range(steps):
        at = opt.step_count
        opt.step(lambda at=at: math.nan if at == nan_at else float((model(x).float() ** 2).mean()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamezo_replays_its_seed_log_bit_for_bit(dtype: torch.dtype):
    ours, x = tiny(dtype), batch(dtype)
    opt = AdaMeZO(ours.named_parameters(), lr=LR, eps=EPS, weight_decay=0.1, window=WINDOW, chunk_numel=7)
    run(ours, opt, x, 10, nan_at=5)  # step 5 skipped: it neither enters the window nor counts
    assert opt.nonfinite_steps == 1 and opt.update_count == 9 and opt.trajectory[5].skipped
    assert 5 not in {r.step for r in opt.trajectory if r.seeds[0] in {s for s, _ in opt._window}}
    again = tiny(dtype)
    fresh = AdaMeZO(again.named_parameters(), lr=LR, eps=EPS, weight_decay=0.1, window=WINDOW, chunk_numel=7)
    replay(fresh, opt.trajectory, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))
    assert fresh.nonfinite_steps == 1 and fresh._window == opt._window


def test_adamezo_resumes_from_a_json_state_dict_bit_for_bit():
    x = batch(torch.float32)
    whole = tiny(torch.float32)
    kw = {"lr": LR, "eps": EPS, "window": WINDOW, "chunk_numel": 7}
    opt = AdaMeZO(whole.named_parameters(), **kw)
    run(whole, opt, x, 10)

    first = tiny(torch.float32)
    before = AdaMeZO(first.named_parameters(), **kw)
    run(first, before, x, 6)  # the moments are in use (6 > W) and the window is full
    saved = json.loads(json.dumps(before.state_dict()))  # the checkpoint keeps it as JSON
    assert len(saved["mezo"]["adamezo_window"]) == WINDOW

    def resumed(state: dict) -> nn.Module:
        model = tiny(torch.float32)
        with torch.no_grad():
            for p, q in zip(model.parameters(), first.parameters(), strict=True):
                p.copy_(q)
        after = AdaMeZO(model.named_parameters(), **kw)
        after.load_state_dict(state)
        run(model, after, x, 4)
        assert after.step_count == 10 and after.forward_passes == opt.forward_passes
        return model

    model = resumed(saved)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), whole.parameters(), strict=True))
    # the saved window is what makes it exact: without it the moments restart and the weights differ
    forgotten = json.loads(json.dumps(saved))
    forgotten["mezo"]["adamezo_window"] = []
    model = resumed(forgotten)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), whole.parameters(), strict=True))

    with pytest.raises(ValueError, match="window=3"):
        AdaMeZO(tiny().named_parameters(), **{**kw, "window": 4}).load_state_dict(saved)
    del saved["mezo"]["adamezo_window"]
    with pytest.raises(ValueError, match="adamezo_window"):
        AdaMeZO(tiny().named_parameters(), **kw).load_state_dict(saved)


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ({"window": 1}, "window=1"),
        ({"window": 0}, "window=0"),
        ({"window": 2.5}, "window=2.5"),
        ({"window": True}, "window=True"),
        ({"beta1": 1.5}, "beta1=1.5"),
        ({"beta2": -0.1}, "beta2=-0.1"),
        ({"adam_eps": 0.0}, "adam_eps=0.0"),
        ({"gain": 0}, "gain=0"),
    ],
)
def test_adamezo_refuses_bad_settings_by_value(setting: dict, shown: str):
    with pytest.raises(ValueError, match=shown):
        AdaMeZO(tiny().named_parameters(), lr=1e-3, **setting)


def test_adamezo_refuses_a_mezo_log_and_the_forward_placement():
    mezo = MeZO(tiny().named_parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="estimator"):
        AdaMeZO(tiny().named_parameters(), lr=1e-3).check_compatible(mezo.state_dict()["mezo"])
    model = tiny()
    with pytest.raises(ValueError, match="perturb_in_forward"):
        AdaMeZO(model.named_parameters(), lr=1e-3).perturb_in_forward(model)
    with pytest.raises(ValueError, match="closure"):
        AdaMeZO(model.named_parameters(), lr=1e-3).step()
