"""Low-precision weights: stochastic rounding of the updates (unbiased, seeded like z, so replays and
FSDP shards stay bit-exact), and MeZO's updates at the paper's OPT lr surviving in bfloat16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mezo_ray.zo import FZOO, LOZO, HiZOO, MeZO, StepRecord, replay
from mezo_ray.zo.noise import chunks, draw_uniform, full_noise, mix_seed, stochastic_round_
from tests.zo.test_noise import shard_slices
from tests.zo.test_optimizer import data, loss_fn, tiny_model

LOW = [torch.bfloat16, torch.float16]
D = 16384  # weights in the paper-lr update test


@pytest.mark.parametrize("dtype", LOW)
def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, generator=g) * 10.0 ** torch.randint(-4, 2, (256,), generator=g)
    n = 4000
    u = torch.rand(n, x.numel(), generator=g)
    rounded = torch.stack(
        [stochastic_round_(torch.empty(256, dtype=dtype), x, u[i]) for i in range(n)]
    ).float()
    lower = torch.nextafter(x.to(dtype), torch.tensor(-torch.inf, dtype=dtype)).float()
    upper = torch.nextafter(x.to(dtype), torch.tensor(torch.inf, dtype=dtype)).float()
    near = x.to(dtype).float()
    assert bool(((rounded == near) | (rounded == lower) | (rounded == upper)).all())
    low, high = (
        torch.minimum(near, torch.where(near < x, upper, lower)),
        torch.maximum(near, torch.where(near < x, upper, lower)),
    )
    assert bool(((rounded >= low) & (rounded <= high)).all())  # the two neighbours of x, never further
    p = (x - low) / (high - low)
    se = (high - low) * torch.sqrt(p * (1 - p) / n)
    assert bool(((rounded.mean(0) - x).abs() <= 5 * se + 1e-12 * x.abs()).all())  # E[rounded] = x
    assert float((near - x).abs().max()) > 0  # and round-to-nearest is biased for these x


def _replayed(dtype: torch.dtype, records: list[StepRecord], **kwargs) -> torch.Tensor:
    w = nn.Parameter(torch.full((D,), 0.01).to(dtype))
    replay(MeZO([w], lr=1e-7, **kwargs), records)
    return w.detach().double()


def test_the_mean_bfloat16_update_at_the_papers_lr_is_the_float32_update():
    """Steps with the exact projected gradient g = a . z of l(w) = a . w at lr 1e-7 (the paper's OPT lr)
    and an eps too small to move a bfloat16 weight (the sweeps then restore it exactly): each update
    is ~0.02 ulp of w = 0.01. Round to nearest drops every one; stochastic rounding keeps them on
    average: over 5000 steps its weights are the float32 run's within their standard error."""
    a = torch.linspace(0.05, 0.15, D, dtype=torch.float64)
    probe = torch.zeros(D)
    records = []
    for t in range(5000):
        seed = mix_seed(7, t)
        g = float(a @ full_noise(probe, "param.0", seed).double())
        records.append(StepRecord(t, (seed,), (g,), (1e-7,), eps=1e-12))
    start = torch.tensor(0.01, dtype=torch.bfloat16).double()
    exact = _replayed(torch.float32, records)
    moved = float((exact - start).mean())
    assert moved < -4e-5  # -lr a per step: -5e-5 on average
    rounded = _replayed(torch.bfloat16, records) - exact
    se = float(rounded.std()) / D**0.5
    assert abs(float(rounded.mean())) <= 4 * se < abs(moved) / 3, (float(rounded.mean()), se, moved)
    nearest = _replayed(torch.bfloat16, records, stochastic_rounding=False)
    assert bool((nearest == start).all())  # round to nearest: not one update survives


@pytest.mark.parametrize(
    "make",
    [
        lambda p: MeZO(p, lr=1e-2, n_perturbations=2),
        lambda p: MeZO(p, lr=1e-3, variant="adam"),
        lambda p: FZOO(p, lr=1e-2, n_probes=3),
        lambda p: HiZOO(p, lr=1e-2),
        lambda p: LOZO(p, lr=1e-2, rank=2, interval=2, beta=0.9),
    ],
    ids=["mezo-k2", "mezo-adam", "fzoo", "hizoo", "lozo-m"],
)
def test_rounded_runs_replay_bit_for_bit(make):
    model = tiny_model(torch.bfloat16)
    x, y = data(torch.bfloat16)
    opt = make(model.named_parameters())
    for _ in range(6):
        opt.step(loss_fn(model, x, y))
    assert opt.state_dict()["mezo"]["stochastic_rounding"] is True
    fresh = tiny_model(torch.bfloat16)
    replay(make(fresh.named_parameters()), [StepRecord.from_dict(r.to_dict()) for r in opt.trajectory])
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    straight = tiny_model(torch.bfloat16)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), straight.parameters(), strict=True))


@pytest.mark.parametrize("ways", [2, 3])
def test_shards_draw_their_rows_of_the_rounding_bits(ways):
    whole = torch.zeros(10, 7)
    (full,) = shard_slices(whole, "w", 1)

    def bits(s):
        return torch.cat([draw_uniform(s, c, 99).clone() for c in chunks(s, 16)])

    assert torch.equal(torch.cat([bits(s) for s in shard_slices(whole, "w", ways)]), bits(full))


def test_a_bfloat16_run_saved_before_stochastic_rounding_resumes_only_rounding_to_nearest():
    model = tiny_model(torch.bfloat16)
    state = MeZO(model.named_parameters(), lr=1e-3).state_dict()
    del state["mezo"]["stochastic_rounding"]  # as saved before the setting existed: round to nearest
    with pytest.raises(ValueError, match=r"stochastic_rounding=False but .* stochastic_rounding=True"):
        MeZO(tiny_model(torch.bfloat16).named_parameters(), lr=1e-3).load_state_dict(state)
    MeZO(tiny_model(torch.bfloat16).named_parameters(), lr=1e-3, stochastic_rounding=False).load_state_dict(
        state
    )
    MeZO(tiny_model().named_parameters(), lr=1e-3).load_state_dict(state)  # float32: nothing is rounded


def fp16_update_is_rounded_on_its_own(device: torch.device) -> None:
    """The paper's fp16 step (`large_models/trainer.py`: the restore sweep rounded to fp16, then the
    update as its own fp16 operation) at eps 1e-3 and lr 1e-7: an update under half an ulp is dropped.
    Our z is float32 (the paper draws it in fp16), so the oracle is the paper's two roundings applied
    to our own restored weights and z; rounding restore and update once would keep some of those
    updates (the leftover of the +-eps z sweeps dithers them), and the test tells the two apart."""
    gen = torch.Generator().manual_seed(0)
    start = (torch.randn(D, generator=gen) * 0.05).half()
    seed, g, lr, eps = mix_seed(3, 0), 40.0, 1e-7, 1e-3  # lr g |z| ~ 4e-6; half an ulp at 0.05: 1.5e-5

    def replayed(lr: float) -> torch.Tensor:
        w = nn.Parameter(start.clone().to(device))
        replay(
            MeZO([w], lr=lr, eps=eps, stochastic_rounding=False),
            [StepRecord(0, (seed,), (g,), (lr,), eps=eps)],
        )
        return w.detach().cpu()

    restored, updated = replayed(0.0), replayed(lr)  # lr 0: the sweeps alone
    z = full_noise(torch.zeros(D), "param.0", seed)
    papers = (restored.float() + (-lr * g) * z).half()  # the update, rounded on its own
    assert torch.equal(updated, papers)
    kept = float((updated != restored).float().mean())
    assert 0.005 < kept < 0.5, kept  # the small weights take it; most updates are dropped
    sweeps = MeZO([w := nn.Parameter(start.clone().to(device))], lr=lr, eps=eps, stochastic_rounding=False)
    with torch.no_grad():
        sweeps.perturb(seed, eps)
        sweeps.perturb(seed, -2 * eps)
    once = (w.detach().cpu().float() + (eps - lr * g) * z).half()  # restore and update, rounded once
    assert float((once != papers).float().mean()) > 0.01  # what this test would catch


def test_an_fp16_update_under_half_an_ulp_is_dropped_as_the_papers_two_roundings_drop_it():
    fp16_update_is_rounded_on_its_own(torch.device("cpu"))
