"""The MeZO optimizer against independent oracles: autograd, torch.optim and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mezo_ray.zo import MeZO, NonFiniteLossError, StepRecord, full_noise, microbatch_mean, replay
from tests.zo.reference import ReferenceMeZO


class TinyNet(nn.Module):
    """Smooth (tanh) MLP with biases and a LayerNorm, so the no-decay rule has something to skip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.layer_norm, self.fc2 = nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.layer_norm(self.fc1(x))))


def tiny_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet().to(dtype)


def data(dtype: torch.dtype = torch.float32, n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=dtype)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # 3 separable classes
    return x, y


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda: nn.functional.cross_entropy(model(x), y)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def ulps(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """|a - b| in units of the fp32 ulp of (|b| + scale), the magnitude the sweeps round at."""
    return float(((a.detach() - b).abs() / (torch.finfo(torch.float32).eps * (b.abs() + scale))).max())


# --------------------------------------------------------------------------------------------------
# Restore and the estimator
def test_lr_zero_restores_weights_to_a_few_ulps():
    model = tiny_model()
    start = weights(model)
    opt = MeZO(model.named_parameters(), lr=0.0, eps=1e-3)
    x, y = data()
    for _ in range(10):
        opt.step(loss_fn(model, x, y))
    # three roundings per step (+eps z, -2 eps z, +eps z) at the magnitude |theta| + eps |z|
    assert max(ulps(p, s, 4e-3) for p, s in zip(model.parameters(), start, strict=True)) <= 8
    for _ in range(90):
        opt.step(loss_fn(model, x, y))
    # 100 steps: the rounding errors random-walk (~sqrt(steps)), they do not drift
    assert max(ulps(p, s, 4e-3) for p, s in zip(model.parameters(), start, strict=True)) <= 3 * math.sqrt(100)


def test_projected_grad_is_the_directional_derivative_to_second_order():
    model = tiny_model(torch.float64)
    x, y = data(torch.float64)
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    errors = []
    for eps in (1e-2, 1e-3, 1e-4):
        opt = MeZO(model.named_parameters(), lr=0.0, eps=eps)
        opt.step(loss_fn(model, x, y))
        (seed,), (g,) = opt.trajectory[0].seeds, opt.trajectory[0].projected_grads
        directional = sum(
            float((grad * full_noise(p, name, seed).double()).sum())
            for (name, p), grad in zip(model.named_parameters(), grads, strict=True)
        )
        errors.append(abs(g - directional))
    # central difference: the error is O(eps^2), so it falls ~100x per decade of eps
    assert errors[2] < 1e-6
    assert 0.005 <= errors[1] / errors[0] <= 0.02 and 0.005 <= errors[2] / errors[1] <= 0.02, errors


def one_step_updates(k: int, n_seeds: int) -> torch.Tensor:
    """-(theta_1 - theta_0) / lr for n_seeds independent one-step runs from the same start."""
    model = tiny_model(torch.float64)
    x, y = data(torch.float64)
    start = weights(model)
    rows = []
    for seed in range(n_seeds):
        with torch.no_grad():
            for p, s in zip(model.parameters(), start, strict=True):
                p.copy_(s)
        opt = MeZO(model.named_parameters(), lr=1e-4, eps=1e-4, n_perturbations=k, seed=seed)
        opt.step(loss_fn(model, x, y))
        rows.append(
            torch.cat([(s - p.detach()).flatten() for p, s in zip(model.parameters(), start, strict=True)])
        )
    return torch.stack(rows) / 1e-4


def autograd_gradient() -> torch.Tensor:
    model = tiny_model(torch.float64)
    x, y = data(torch.float64)
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


def test_update_is_unbiased_and_n_spsa_divides_its_variance():
    true = autograd_gradient()
    single, averaged = one_step_updates(k=1, n_seeds=1200), one_step_updates(k=4, n_seeds=1200)
    for updates in (single, averaged):
        assert torch.nn.functional.cosine_similarity(updates.mean(0), true, dim=0) >= 0.9
    # variance (trace of the covariance) falls ~K-fold; E[g z] = grad for any K
    ratio = float(single.var(0).sum() / averaged.var(0).sum())
    assert 3.0 <= ratio <= 5.3, ratio
    assert float((single.mean(0) - averaged.mean(0)).norm() / true.norm()) < 0.5


# --------------------------------------------------------------------------------------------------
# Parity with a plain reference (materialised z, out-of-place sweeps, torch.optim rules)
@pytest.mark.parametrize(
    ("variant", "weight_decay", "k"),
    [
        ("sgd", 0.0, 1),
        ("sgd", 0.1, 1),
        ("momentum", 0.1, 1),
        ("adam", 0.1, 1),
        ("sign", 0.1, 1),
        ("sgd", 0.0, 3),
        ("adam", 0.0, 2),
    ],
)
def test_steps_match_the_reference(variant, weight_decay, k):
    # float64: in fp32 the losses' rounding (~1e-7 / eps) would swamp the comparison
    ours, ref = tiny_model(torch.float64), tiny_model(torch.float64)
    x, y = data(torch.float64)
    lr = 1e-3 if variant in ("adam", "sign") else 1e-2
    opt = MeZO(
        ours.named_parameters(),
        lr=lr,
        eps=1e-3,
        weight_decay=weight_decay,
        variant=variant,
        n_perturbations=k,
        chunk_numel=40,  # several chunks per weight matrix
    )
    reference = ReferenceMeZO(ref, lr, 1e-3, weight_decay, variant, n_perturbations=k, chunk_numel=40)
    for _ in range(3):
        opt.step(loss_fn(ours, x, y))
        reference.step(loss_fn(ref, x, y))
    moved = 0.0
    start = weights(tiny_model(torch.float64))
    for (name, p), q, s in zip(ours.named_parameters(), ref.parameters(), start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        moved = max(moved, float((p.detach() - s).abs().max()))
    assert moved > 1e-4  # the steps did change the weights


def test_weight_decay_skips_biases_and_layernorm():
    model = tiny_model()
    start = dict((n, p.detach().clone()) for n, p in model.named_parameters())
    opt = MeZO(model.named_parameters(), lr=0.5, eps=1e-3, weight_decay=0.5)
    opt.step(lambda: 0.0)  # constant loss: g = 0, only weight decay moves the weights
    for name, p in model.named_parameters():
        expected = start[name] * (0.75 if name in ("fc1.weight", "fc2.weight") else 1.0)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6, msg=name)


# --------------------------------------------------------------------------------------------------
# Trajectory, replay and resume
def run(model: nn.Module, steps: int, nan_at: int | None = None, **kwargs) -> MeZO:
    x, y = data()
    opt = MeZO(model.named_parameters(), **{"lr": 1e-2, "eps": 1e-3, **kwargs})
    base = loss_fn(model, x, y)
    for t in range(steps):
        opt.step((lambda: math.nan) if t == nan_at else base)
    return opt


@pytest.mark.parametrize("kwargs", [{}, {"variant": "adam", "lr": 1e-3, "n_perturbations": 2}])
def test_replay_rebuilds_the_weights_bit_for_bit(kwargs):
    model = tiny_model()
    opt = run(model, steps=12, nan_at=5, **kwargs)
    assert opt.nonfinite_steps == 1 and opt.trajectory[5].skipped
    records = [StepRecord.from_dict(r.to_dict()) for r in opt.trajectory]  # through JSON-able dicts
    fresh = tiny_model()
    replay(MeZO(fresh.named_parameters(), **{"lr": 1e-2, "eps": 1e-3, **kwargs}), records)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("variant", ["sgd", "momentum", "adam"])
def test_resume_from_state_dict_continues_the_same_trajectory(variant):
    straight = tiny_model()
    uninterrupted = run(straight, steps=10, variant=variant, lr=1e-3)

    first = tiny_model()
    opt = run(first, steps=6, variant=variant, lr=1e-3)
    saved_weights, saved_state = first.state_dict(), opt.state_dict()
    resumed_model = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    resumed_model.load_state_dict(saved_weights)
    resumed = MeZO(resumed_model.named_parameters(), lr=1e-3, eps=1e-3, variant=variant)
    resumed.load_state_dict(saved_state)
    x, y = data()
    for _ in range(4):
        resumed.step(loss_fn(resumed_model, x, y))
    assert [r.seeds for r in resumed.trajectory] == [r.seeds for r in uninterrupted.trajectory[6:]]
    for p, q in zip(straight.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_load_state_dict_refuses_another_variant():
    opt = run(tiny_model(), steps=1)
    other = MeZO(tiny_model().parameters(), lr=1e-2, variant="adam")
    with pytest.raises(ValueError, match="variant='sgd'"):
        other.load_state_dict(opt.state_dict())


# --------------------------------------------------------------------------------------------------
# Learning, objectives, schedules, budgets
def test_zo_sgd_learns_a_separable_task():
    model = tiny_model()
    x, y = data(n=128)
    loss = loss_fn(model, x, y)
    before = float(loss())
    opt = MeZO(model.named_parameters(), lr=5e-2, eps=1e-3)
    for _ in range(400):
        opt.step(loss)
    after = float(loss())
    accuracy = float((model(x).argmax(-1) == y).float().mean())
    assert after < 0.5 * before and accuracy >= 0.9, (before, after, accuracy)


def test_non_differentiable_objective_negative_accuracy():
    model = tiny_model()
    x, y = data(n=128)

    def accuracy() -> float:
        return float((model(x).argmax(-1) == y).float().mean())

    before = accuracy()
    opt = MeZO(model.named_parameters(), lr=0.2, eps=0.05)
    for _ in range(300):
        opt.step(lambda: -accuracy())
    assert accuracy() >= before + 0.15, (before, accuracy())


def test_forward_pass_count_and_perturbation_index():
    model = tiny_model()
    seen: list[int] = []
    opt = MeZO(model.parameters(), lr=1e-2, n_perturbations=3)

    def closure(k: int) -> float:
        seen.append(k)
        return 0.0

    opt.step(closure)
    opt.step(closure)
    assert opt.forward_passes == 12
    assert seen == [0, 0, 1, 1, 2, 2] * 2


def test_linear_perturbation_schedule():
    opt = MeZO(
        tiny_model().parameters(), lr=1e-2, n_perturbations=8, perturbation_schedule="linear", max_steps=100
    )
    assert [opt.perturbations_at(t) for t in (0, 12, 13, 50, 99)] == [1, 1, 1, 4, 7]


def test_linear_lr_decay_with_torch_scheduler():
    model = tiny_model()
    x, y = data()
    opt = MeZO(model.named_parameters(), lr=0.1, eps=1e-3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=4)
    for _ in range(5):
        opt.step(loss_fn(model, x, y))
        sched.step()
    assert [r.lrs[0] for r in opt.trajectory] == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0])


def test_microbatches_give_the_full_batch_step():
    x, y = data(torch.float64, n=64)
    full, micro = tiny_model(torch.float64), tiny_model(torch.float64)
    opt_full = MeZO(full.named_parameters(), lr=1e-2)
    opt_micro = MeZO(micro.named_parameters(), lr=1e-2)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    def micro_loss(batch):
        return nn.functional.cross_entropy(micro(batch[0]), batch[1])

    for _ in range(3):
        opt_full.step(loss_fn(full, x, y))
        opt_micro.step(lambda: microbatch_mean(micro_loss, batches, sizes=[16] * 4))
    for p, q in zip(full.parameters(), micro.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Non-finite losses and bad arguments
def test_non_finite_loss_is_skipped_and_counted():
    model = tiny_model()
    start = weights(model)
    opt = MeZO(model.named_parameters(), lr=1.0)
    assert math.isnan(opt.step(lambda: math.inf))
    assert opt.nonfinite_steps == 1 and opt.step_count == 1
    for p, s in zip(model.parameters(), start, strict=True):
        assert ulps(p, s, 4e-3) <= 2


def test_non_finite_loss_can_raise_after_restoring():
    model = tiny_model()
    start = weights(model)
    opt = MeZO(model.named_parameters(), lr=1.0, on_nonfinite="raise")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 0"):
        opt.step(lambda: float("nan"))
    for p, s in zip(model.parameters(), start, strict=True):
        assert ulps(p, s, 4e-3) <= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0.0}, "eps=0.0"),
        ({"variant": "lion"}, "variant='lion'"),
        ({"n_perturbations": 0}, "n_perturbations=0"),
        ({"perturbation_schedule": "linear"}, "max_steps=None"),
        ({"lr": -1.0}, "lr=-1.0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MeZO(tiny_model().parameters(), **{"lr": 1e-3, **kwargs})


def test_step_without_closure_is_refused():
    with pytest.raises(ValueError, match="closure"):
        MeZO(tiny_model().parameters(), lr=1e-3).step()
