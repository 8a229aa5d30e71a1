"""BSZO against its step written out (materialised z, out-of-place, a full k x k Kalman filter and
torch's eigh, float64), its seed-log replay, its resume from a (JSON) state dict, and its refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mezo_ray.zo import MeZO, full_noise, mix_seed, replay
from mezo_ray.zo.bszo import BSZO

LR, EPS = 1e-2, 1e-3


def tiny(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)


def batch(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(1)).to(dtype)


class ReferenceBSZO:
    """arXiv 2601.01452 as AeonianQuill/BSZO bszo_optimizer_v3.py computes it: l_0 at theta; for the
    first min(m, k) samples (m without adaptive sampling) a finite difference y along axis j mod k;
    from the prior N(0, sp^2 I) a Kalman update per sample (d = e_i; adaptive samples j >= k take the
    axis of argmax |top eigenvector of Sigma| with its cached y), the noise sn = max(0.1 sn_0,
    sqrt(EMA of squared residuals)), Sigma symmetrised plus 1e-10 I; then theta -= lr (sum_i mu_i z_i
    + wd theta), no weight decay for biases. The EMA carries over between steps."""

    def __init__(self, model: nn.Module, settings: dict):
        s = {**DEFAULTS, **settings}
        self.model, self.k, self.m, self.wd = model, s["subspace_dim"], s["n_samples"], s["weight_decay"]
        self.one_sided, self.adaptive = s["one_sided"], s["adaptive_sampling"]
        self.adaptive_noise, self.alpha = s["adaptive_noise"], s["noise_ema_alpha"]
        n = sum(p.numel() for p in model.parameters())
        self.sp = math.sqrt(n / 1e6) if s["sigma_prior"] is None else s["sigma_prior"]
        self.sn0 = math.sqrt(n / 1e6) if s["sigma_noise"] is None else s["sigma_noise"]
        self.ema = self.sn0**2
        self.t = 0

    @torch.no_grad()
    def step(self, loss) -> None:
        named = list(self.model.named_parameters())
        theta = {n: p.detach().clone() for n, p in named}
        zs = [
            {n: full_noise(p, n, mix_seed(0, self.t, i), 7).double() for n, p in named} for i in range(self.k)
        ]

        def loss_at(z, a: float) -> float:
            for n, p in named:
                p.data = theta[n] + a * z[n] if z is not None else theta[n].clone()
            return float(loss())

        f0 = loss_at(None, 0.0)
        mu = torch.zeros(self.k, dtype=torch.float64)
        sigma = self.sp**2 * torch.eye(self.k, dtype=torch.float64)
        cache = {}
        for j in range(self.m):
            d = torch.zeros(self.k, dtype=torch.float64)
            if self.adaptive and j >= self.k:
                top = torch.linalg.eigh(sigma).eigenvectors[:, -1]
                i = int(top.abs().argmax())
                y = cache[i]
            else:
                i = j % self.k
                if self.one_sided:
                    y = (loss_at(zs[i], EPS) - f0) / EPS
                else:
                    y = (loss_at(zs[i], EPS) - loss_at(zs[i], -EPS)) / (2 * EPS)
                cache[i] = y
            d[i] = 1.0
            residual = y - d @ mu
            sn = self.sn0
            if self.adaptive_noise:
                self.ema = (1 - self.alpha) * self.ema + self.alpha * float(residual / d.norm()) ** 2
                sn = max(0.1 * self.sn0, math.sqrt(self.ema))
            gain = sigma @ d / (d @ sigma @ d + sn**2 * d.norm() ** 2)
            mu = mu + gain * residual
            sigma = sigma - torch.outer(gain, d @ sigma)
            sigma = (sigma + sigma.T) / 2 + 1e-10 * torch.eye(self.k, dtype=torch.float64)
        for n, p in named:
            decay = 0.0 if "bias" in n else self.wd
            step = sum(float(mu[i]) * zs[i][n] for i in range(self.k) if abs(float(mu[i])) > 1e-10)
            p.data = theta[n] - LR * (step + decay * theta[n])
        self.mu = mu
        self.t += 1


DEFAULTS = {  # the README's command; sp, sn_0 "auto"
    "subspace_dim": 2,
    "n_samples": 3,
    "one_sided": True,
    "adaptive_sampling": True,
    "adaptive_noise": True,
    "noise_ema_alpha": 0.1,
    "sigma_prior": None,
    "sigma_noise": None,
    "weight_decay": 0.0,
}
CASES = [
    {"sigma_prior": 1.0, "sigma_noise": 0.5},  # the README's: one cached re-observation a step
    {},  # sp, sn_0 "auto" (sqrt(43 / 1e6)): a tight prior, small mu
    {  # four re-observations a step, the axis of most variance moving between them
        "subspace_dim": 3,
        "n_samples": 7,
        "sigma_prior": 0.3,
        "sigma_noise": 2.0,
        "weight_decay": 0.1,
    },
    {  # central differences; axis 0 observed twice
        "subspace_dim": 3,
        "n_samples": 4,
        "one_sided": False,
        "adaptive_sampling": False,
        "sigma_prior": 1.0,
        "sigma_noise": 0.5,
        "weight_decay": 0.05,
    },
    {"subspace_dim": 3, "n_samples": 2, "sigma_prior": 1.0, "sigma_noise": 0.5},  # m < k: axis 2 unobserved
    {"subspace_dim": 1, "n_samples": 4, "one_sided": False, "sigma_prior": 2.0, "sigma_noise": 0.1},
    {"sigma_prior": 1.0, "sigma_noise": 5.0, "noise_ema_alpha": 1.0},  # sn at its floor, 0.1 sn_0
    {"sigma_prior": 1.0, "sigma_noise": 0.3, "adaptive_noise": False},  # sn = sn_0 throughout
]


@pytest.mark.parametrize("settings", CASES)
def test_bszo_steps_match_the_codes_equations_and_replay(settings: dict):
    ours, ref, x = tiny(), tiny(), batch()
    start = [p.detach().clone() for p in ours.parameters()]
    opt = BSZO(ours.named_parameters(), lr=LR, eps=EPS, chunk_numel=7, **settings)
    reference = ReferenceBSZO(ref, settings)
    steps = 4
    for _ in range(steps):
        opt.step(lambda: (ours(x) ** 2).mean())
        reference.step(lambda: (ref(x) ** 2).mean())
        mu = torch.tensor(opt.last_posterior, dtype=torch.float64)
        torch.testing.assert_close(mu, reference.mu, rtol=1e-7, atol=1e-12)
    for (name, p), q, s in zip(ours.named_parameters(), ref.parameters(), start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        assert not torch.equal(p, s)
    assert math.isclose(opt._noise_ema, reference.ema, rel_tol=1e-7)
    k, m = reference.k, reference.m
    evaluations = min(m, k) if reference.adaptive else m
    passes = 1 + (1 if reference.one_sided else 2) * evaluations
    assert opt.forward_passes == steps * passes == steps * opt.passes_per_step
    assert opt.state_multiple == 0 and len(opt.trajectory[-1].projected_grads) == evaluations
    again = tiny()
    fresh = BSZO(again.named_parameters(), lr=LR, eps=EPS, chunk_numel=7, **settings)
    replay(fresh, opt.trajectory, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))
    assert fresh._noise_ema == opt._noise_ema and fresh.forward_passes == opt.forward_passes


def run(model: nn.Module, opt: BSZO, x: torch.Tensor, steps: int, nan_at: int = -1) -> None:
    for _ in range(steps):
        at = opt.step_count
        opt.step(lambda at=at: math.nan if at == nan_at else float((model(x).float() ** 2).mean()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bszo_replays_its_seed_log_bit_for_bit(dtype: torch.dtype):
    ours, x = tiny(dtype), batch(dtype)
    kw = {"lr": LR, "eps": EPS, "weight_decay": 0.1, "sigma_prior": 1.0, "sigma_noise": 0.5, "chunk_numel": 7}
    opt = BSZO(ours.named_parameters(), **kw)
    run(ours, opt, x, 8, nan_at=3)  # step 3 skipped: no update, the EMA untouched
    assert opt.nonfinite_steps == 1 and opt.update_count == 7 and opt.trajectory[3].skipped
    assert opt.forward_passes == 8 * 3
    again = tiny(dtype)
    fresh = BSZO(again.named_parameters(), **kw)
    replay(fresh, opt.trajectory, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))
    assert fresh.nonfinite_steps == 1 and fresh._noise_ema == opt._noise_ema
    assert fresh.forward_passes == opt.forward_passes


def test_bszo_resumes_from_a_json_state_dict_bit_for_bit():
    x = batch(torch.float32)
    kw = {"lr": LR, "eps": EPS, "sigma_prior": 1.0, "sigma_noise": 0.5, "chunk_numel": 7}
    whole = tiny(torch.float32)
    opt = BSZO(whole.named_parameters(), **kw)
    run(whole, opt, x, 8)

    first = tiny(torch.float32)
    before = BSZO(first.named_parameters(), **kw)
    run(first, before, x, 4)
    saved = json.loads(json.dumps(before.state_dict()))  # the checkpoint keeps it as JSON
    assert saved["mezo"]["bszo_noise_ema"] != 0.5**2  # the EMA has moved off its start

    def resumed(state: dict) -> nn.Module:
        model = tiny(torch.float32)
        with torch.no_grad():
            for p, q in zip(model.parameters(), first.parameters(), strict=True):
                p.copy_(q)
        after = BSZO(model.named_parameters(), **kw)
        after.load_state_dict(state)
        run(model, after, x, 4)
        assert after.step_count == 8 and after.forward_passes == opt.forward_passes
        return model

    model = resumed(saved)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), whole.parameters(), strict=True))
    # the saved EMA is what makes it exact: restarted at sn_0^2 the noise level and the weights differ
    forgotten = json.loads(json.dumps(saved))
    forgotten["mezo"]["bszo_noise_ema"] = 0.5**2
    model = resumed(forgotten)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), whole.parameters(), strict=True))

    with pytest.raises(ValueError, match="n_samples=3"):
        BSZO(tiny().named_parameters(), **{**kw, "n_samples": 4}).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"sigma_prior=1\.0"):
        BSZO(tiny().named_parameters(), **{**kw, "sigma_prior": None}).load_state_dict(saved)
    del saved["mezo"]["bszo_noise_ema"]
    with pytest.raises(ValueError, match="bszo_noise_ema"):
        BSZO(tiny().named_parameters(), **kw).load_state_dict(saved)


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ({"subspace_dim": 0}, "subspace_dim=0"),
        ({"subspace_dim": 1.5}, "subspace_dim=1.5"),
        ({"subspace_dim": True}, "subspace_dim=True"),
        ({"n_samples": 0}, "n_samples=0"),
        ({"one_sided": "yes"}, "one_sided='yes'"),
        ({"adaptive_sampling": 1}, "adaptive_sampling=1"),
        ({"adaptive_noise": None}, "adaptive_noise=None"),
        ({"noise_ema_alpha": 1.5}, "noise_ema_alpha=1.5"),
        ({"sigma_prior": 0.0}, "sigma_prior=0.0"),
        ({"sigma_noise": -1.0}, "sigma_noise=-1.0"),
        ({"sigma_noise": math.inf}, "sigma_noise=inf"),
    ],
)
def test_bszo_refuses_bad_settings_by_value(setting: dict, shown: str):
    with pytest.raises(ValueError, match=shown):
        BSZO(tiny().named_parameters(), lr=1e-3, **setting)


def test_bszo_refuses_a_mezo_log_the_forward_placement_and_no_closure():
    mezo = MeZO(tiny().named_parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="estimator"):
        BSZO(tiny().named_parameters(), lr=1e-3).check_compatible(mezo.state_dict()["mezo"])
    model = tiny()
    with pytest.raises(ValueError, match="perturb_in_forward"):
        BSZO(model.named_parameters(), lr=1e-3).perturb_in_forward(model)
    with pytest.raises(ValueError, match="closure"):
        BSZO(model.named_parameters(), lr=1e-3).step()
