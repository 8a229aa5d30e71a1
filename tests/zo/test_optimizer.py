"""The MeZO optimizer against independent oracles: autograd, torch.optim and closed forms."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mezo_ray.zo import (
    MeZO,
    NonFiniteLossError,
    StepRecord,
    full_noise,
    mix_seed,
    replay,
    saved_setting,
)
from mezo_ray.zo.scales import GRAD_NORM_STREAM
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
    assert_steps_match_the_reference(variant, weight_decay, k, torch.device("cpu"), chunk_numel=40)


def assert_steps_match_the_reference(
    variant: str, weight_decay: float, k: int, device: torch.device, chunk_numel: int = 1 << 20
) -> None:
    """Three steps of ours and of ReferenceMeZO from the same float64 weights (in float32 the losses'
    rounding, ~1e-7 / eps, would swamp the comparison) end at the same weights, which moved."""
    ours, ref = tiny_model(torch.float64).to(device), tiny_model(torch.float64).to(device)
    x, y = (t.to(device) for t in data(torch.float64))
    lr = 1e-3 if variant in ("adam", "sign") else 1e-2
    opt = MeZO(
        ours.named_parameters(),
        lr=lr,
        eps=1e-3,
        weight_decay=weight_decay,
        variant=variant,
        n_perturbations=k,
        chunk_numel=chunk_numel,  # 40: several chunks per weight matrix
    )
    reference = ReferenceMeZO(
        ref, lr, 1e-3, weight_decay, variant, n_perturbations=k, chunk_numel=chunk_numel
    )
    for _ in range(3):
        opt.step(loss_fn(ours, x, y))
        reference.step(loss_fn(ref, x, y))
    moved = 0.0
    start = [w.to(device) for w in weights(tiny_model(torch.float64))]
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


def test_state_dict_records_the_noise_backend_and_the_trajectory_settings():
    kwargs = {"lr": 1e-3, "variant": "adam", "n_perturbations": 2, "chunk_numel": 40}
    extra = MeZO(tiny_model().named_parameters(), **kwargs).state_dict()["mezo"]
    expected = {
        "noise_backend": "philox4x32-10-bm32-v3",
        "n_perturbations": 2,
        "perturbation_schedule": "constant",
        "chunk_numel": 40,
        "betas": [0.9, 0.999],
        "adam_eps": 1e-8,
    }
    assert {k: extra[k] for k in expected} == expected
    # through JSON, as checkpoints store it: the same settings are still accepted
    MeZO(tiny_model().named_parameters(), **kwargs).check_compatible(json.loads(json.dumps(extra)))


def test_a_state_dict_from_another_noise_backend_is_refused():
    saved = run(tiny_model(), steps=2)
    state = saved.state_dict()
    state["mezo"]["noise_backend"] = "cpu-mt19937"  # a seed log of the generator before v3
    model = tiny_model()
    start = weights(model)
    fresh = MeZO(model.named_parameters(), lr=1e-2, eps=1e-3)
    message = (
        r"noise_backend='cpu-mt19937' but this optimizer has noise_backend='philox4x32-10-bm32-v3'"
        r".*older generator of z"
    )
    for attempt in (
        lambda: fresh.load_state_dict(state),
        lambda: fresh.check_compatible(state["mezo"]),
        lambda: replay(fresh, saved.trajectory, state=state),
    ):
        with pytest.raises(ValueError, match=message):
            attempt()
    assert fresh.step_count == 0 and not fresh.trajectory  # nothing was loaded or replayed
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))
    replay(fresh, saved.trajectory, state=saved.state_dict())  # the matching state is accepted
    assert fresh.step_count == 2


@pytest.mark.parametrize(
    ("saved", "loading", "message"),
    [
        ({"n_perturbations": 2}, {}, r"n_perturbations=2 but .* n_perturbations=1"),
        (
            {"perturbation_schedule": "linear", "max_steps": 9},
            {},
            r"='linear' but .* has perturbation_schedule='constant'",
        ),
        (
            {"perturbation_schedule": "linear", "max_steps": 9},
            {"perturbation_schedule": "linear", "max_steps": 10},
            r"max_steps=9 but .* max_steps=10",
        ),
        ({"chunk_numel": 40}, {}, r"chunk_numel=40 but .* chunk_numel=1048576"),
        ({"variant": "momentum"}, {"variant": "momentum", "momentum": 0.5}, r"=0.9 but .* momentum=0.5"),
        (
            {"variant": "adam", "betas": (0.9, 0.99)},
            {"variant": "adam"},
            r"0.99\] but .* betas=\[0.9, 0.999\]",
        ),
    ],
)
def test_a_state_dict_from_other_trajectory_settings_is_refused(saved, loading, message):
    state = MeZO(tiny_model().named_parameters(), lr=1e-3, **saved).state_dict()
    other = MeZO(tiny_model().named_parameters(), lr=1e-3, **loading)
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(state)
    MeZO(tiny_model().named_parameters(), lr=1e-3, **saved).load_state_dict(state)  # the same: accepted


def test_a_step_is_replayed_with_its_own_eps_so_a_run_may_change_eps():
    """PBT changes eps mid-run: the records keep each step's eps, a replay under another eps rebuilds
    the same weights bit for bit, and the steps after it use the new eps."""
    model, start = tiny_model(), tiny_model()
    opt = run(model, steps=3)  # eps 1e-3
    assert [r.eps for r in opt.trajectory] == [1e-3] * 3
    other = MeZO(start.named_parameters(), lr=1e-2, eps=1e-2)
    other.load_state_dict(MeZO(tiny_model().named_parameters(), lr=1e-2, eps=1e-3).state_dict())
    records = [StepRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in opt.trajectory]
    replay(other, records)
    assert all(torch.equal(p, q) for p, q in zip(start.parameters(), model.parameters(), strict=True))
    x, y = data()
    other.step(loss_fn(start, x, y))
    assert other.trajectory[-1].eps == 1e-2 and other.eps == 1e-2


def test_a_state_dict_saved_before_the_backend_was_recorded_still_loads():
    state = run(tiny_model(), steps=3).state_dict()
    old_keys = ("seed", "step_count", "update_count", "forward_passes", "nonfinite_steps", "variant")
    state["mezo"] = {"eps": 1e-3, **{k: state["mezo"][k] for k in (*old_keys, "chunk_numel")}}
    fresh = MeZO(tiny_model().named_parameters(), lr=1e-2, eps=1e-3)
    fresh.load_state_dict(state)
    assert fresh.step_count == 3
    del state["mezo"]["chunk_numel"]  # but the settings that were always saved stay required
    with pytest.raises(KeyError, match="chunk_numel"):
        MeZO(tiny_model().named_parameters(), lr=1e-2, eps=1e-3).load_state_dict(state)


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


def test_closure_default_arguments_are_not_given_the_perturbation_index():
    model = tiny_model()
    x, y = data()
    batch = (x, y)
    received: list[object] = []

    def loss_of(b):
        received.append(b)
        return nn.functional.cross_entropy(model(b[0]), b[1])

    opt = MeZO(model.named_parameters(), lr=1e-2, n_perturbations=2)
    opt.step(lambda b=batch: loss_of(b))
    assert len(received) == 4 and all(b is batch for b in received)
    seen: list[tuple[int, float]] = []

    def indexed(k, scale=1.0):  # a required k still gets the index, the default keeps its value
        seen.append((k, scale))
        return 0.0

    opt.step(indexed)
    assert seen == [(0, 1.0), (0, 1.0), (1, 1.0), (1, 1.0)]


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
        opt_micro.step(lambda: sum(float(micro_loss(b)) for b in batches) / len(batches))
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])  # calls: +z_0, -z_0, +z_1, -z_1
def test_a_closure_error_restores_the_weights_and_the_retry_takes_the_uninterrupted_step(fail_at, dtype):
    model = tiny_model(dtype)
    start = weights(model)
    x, y = data(dtype)
    opt = MeZO(model.named_parameters(), lr=1e-2, n_perturbations=2)
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise RuntimeError("CUDA out of memory (simulated)")
        return nn.functional.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match="simulated"):
        opt.step(closure)
    # back at theta to a few roundings (+eps z, -eps z, ...) of the weights' dtype; a missed undo is
    # ~1e4 fp32 ulps
    tolerance = 4 * torch.finfo(dtype).eps / torch.finfo(torch.float32).eps
    assert max(ulps(p, s, 4e-3) for p, s in zip(model.parameters(), start, strict=True)) <= tolerance
    assert opt.step_count == 0 and not opt.trajectory and opt.forward_passes == fail_at - 1
    opt.step(loss_fn(model, x, y))  # the retry takes the step an uninterrupted run takes
    clean = tiny_model(dtype)
    clean_opt = MeZO(clean.named_parameters(), lr=1e-2, n_perturbations=2)
    clean_opt.step(loss_fn(clean, x, y))
    assert opt.trajectory == clean_opt.trajectory  # the same seeds and projected gradients, exactly
    assert opt.forward_passes == clean_opt.forward_passes == 4
    for p, q in zip(model.parameters(), clean.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fail_at", [1, 2])
def test_the_retry_evaluates_at_the_exact_weights_the_closure_failed_at(fail_at, dtype):
    """A loss that moves with any one ulp of any weight: the retry must see the failed call's weights
    exactly (after -2 eps z, a few percent of the elements do not come back by adding eps z)."""
    g = torch.Generator().manual_seed(0)
    readout = torch.randn(4096, generator=g, dtype=torch.float64)

    def run(fail: int) -> tuple[MeZO, nn.Parameter]:
        w = nn.Parameter((torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 1e-3).to(dtype))
        opt = MeZO([w], lr=1e-2, eps=1e-3)
        calls = 0

        def closure() -> float:
            nonlocal calls
            calls += 1
            if calls == fail:
                raise RuntimeError("simulated")
            return float(w.double() @ readout)

        if fail:
            with pytest.raises(RuntimeError):
                opt.step(closure)
        opt.step(closure)
        return opt, w

    (retried, w), (clean, w_clean) = run(fail_at), run(0)
    assert retried.trajectory == clean.trajectory
    assert torch.equal(w, w_clean)


def test_after_a_closure_error_changed_weights_start_the_step_afresh():
    model = tiny_model()
    x, y = data()
    opt = MeZO(model.named_parameters(), lr=1e-2)

    def failing():
        raise RuntimeError("simulated")

    with pytest.raises(RuntimeError):
        opt.step(failing)
    with torch.no_grad():
        model.fc1.weight[0, 0] += 0.5  # e.g. the caller loaded other weights before going on
    moved = weights(model)
    opt.step(loss_fn(model, x, y))
    clean = tiny_model()
    with torch.no_grad():
        for p, w in zip(clean.parameters(), moved, strict=True):
            p.copy_(w)
    clean_opt = MeZO(clean.named_parameters(), lr=1e-2)
    clean_opt.step(loss_fn(clean, x, y))  # a fresh step 0 from the changed weights
    for p, q in zip(model.parameters(), clean.parameters(), strict=True):
        assert torch.equal(p, q)


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


@pytest.mark.parametrize(("variant", "multiple"), [("sgd", 0), ("sign", 0), ("momentum", 1), ("adam", 2)])
def test_the_reported_state_is_what_the_optimizer_holds(variant, multiple):
    """state_multiple, reported with every evaluation, counted against the tensors actually kept."""
    params = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(3))]
    opt = MeZO(params, lr=1e-3, variant=variant, n_perturbations=2)
    opt.step(lambda: sum((p**2).sum() for p in params))
    held = sum(t.numel() for state in opt.state.values() for t in state.values())
    assert opt.state_multiple == multiple and held == multiple * sum(p.numel() for p in params)


class _Layered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(4, 4, dtype=torch.float64) for _ in range(3)])
        self.head = nn.Linear(4, 1, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


@pytest.mark.parametrize("variant", ["sgd", "momentum"])
def test_layer_wise_steps_match_the_papers_should_optim(variant):
    """One block per step, block step mod L (the paper code's --layer_wise_optim: f".{t % L}." in the
    name); the head, without a layer index, never moves. A resumed run replays to the same weights."""
    ours, ref = _Layered(), _Layered()
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(model: nn.Module):
        return lambda: (model(x) ** 2).mean()

    opt = MeZO(ours.named_parameters(), lr=1e-2, eps=1e-3, variant=variant, layer_wise=True, chunk_numel=7)
    reference = ReferenceMeZO(ref, 1e-2, 1e-3, 0.0, variant, chunk_numel=7, num_layers=3)
    head = ours.head.weight.detach().clone()
    for _ in range(4):
        opt.step(loss(ours))
        reference.step(loss(ref))
    assert opt.sweeps.num_blocks == 3 and torch.equal(ours.head.weight, head)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
    if variant == "sgd":  # stateless: the seed log rebuilds the weights from the start
        again = _Layered()
        replay(
            MeZO(again.named_parameters(), lr=1e-2, eps=1e-3, layer_wise=True, chunk_numel=7), opt.trajectory
        )
        assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ours.parameters(), strict=True))


def test_layer_wise_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match=r"layer_wise=True.*variant='adam'"):
        MeZO(_Layered().named_parameters(), lr=1e-3, variant="adam", layer_wise=True)
    with pytest.raises(ValueError, match=r"layer_wise=True.*no layer index"):
        MeZO([("w", nn.Parameter(torch.zeros(2)))], lr=1e-3, layer_wise=True)


class _Grouped(nn.Module):
    """Parameters in each of the paper's scale groups (embeddings, layers, LM head) and one outside."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 4, dtype=torch.float64)
        self.layers = nn.ModuleList([nn.Linear(4, 4, dtype=torch.float64) for _ in range(2)])
        self.lm_head = nn.Linear(4, 1, dtype=torch.float64)
        self.other = nn.Parameter(torch.full((1,), 0.5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.embed(x))
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.lm_head(x) * self.other


def _scaled_reference(
    model: nn.Module, loss, steps: int, lr: float, eps: float, every: int, scale: str, estimate: str
):
    """The paper code's --zo_variant, written out: every ``every`` steps, c per group (embed, lm_head,
    layers.i; 1 outside them) is the group's weight norm (param_norm), or (grad_norm, with
    --use_zo_grad_est) |l(theta + eps z_g) - l(theta - eps z_g)| / 2 eps with only group g perturbed by
    its own z_g; then theta +- eps z / c, g = (l+ - l-) / 2 eps, theta -= lr g z c (variance) or
    lr g z (expectation)."""
    named = list(model.named_parameters())
    group = {"embed": "embed", "lm_head": "lm_head", "layers.0": "l0", "layers.1": "l1"}
    of = {n: next((g for key, g in group.items() if key in n), None) for n, _ in named}
    order = list(dict.fromkeys(of[n] for n, _ in named if of[n]))  # the groups by first appearance
    for t in range(steps):
        if t % every == 0:
            norm: dict[str, float] = {}
            for i, g in enumerate(order):
                members = [(n, p) for n, p in named if of[n] == g]
                if scale == "param_norm":
                    norm[g] = math.sqrt(sum(float((p.detach() ** 2).sum()) for _, p in members))
                    continue
                seed = mix_seed(0, t, GRAD_NORM_STREAM, i)
                theta = {n: p.detach().clone() for n, p in members}
                probe = []
                for sign in (1.0, -1.0):
                    for n, p in members:
                        p.data = theta[n] + sign * eps * full_noise(p, n, seed, 7).to(torch.float64)
                    probe.append(float(loss()))
                for n, p in members:
                    p.data = theta[n]
                norm[g] = abs(probe[0] - probe[1]) / (2 * eps)
            c = {n: norm[of[n]] if of[n] else 1.0 for n, _ in named}
        seed = mix_seed(0, t, 0)
        zs = {n: full_noise(p, n, seed, 7).to(torch.float64) for n, p in named}
        theta = {n: p.detach().clone() for n, p in named}
        losses = []
        for sign in (1.0, -1.0):
            for n, p in named:
                p.data = theta[n] + sign * eps * zs[n] / c[n]
            losses.append(float(loss()))
        g = (losses[0] - losses[1]) / (2 * eps)
        for n, p in named:
            p.data = theta[n] - lr * g * zs[n] * (c[n] if estimate == "variance" else 1.0)


@pytest.mark.parametrize("scale", ["param_norm", "grad_norm"])
@pytest.mark.parametrize("estimate", ["variance", "expectation"])
def test_scaled_perturbations_match_the_papers_definition_replay_and_resume(scale, estimate):
    ours, ref = _Grouped(), _Grouped()
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    start = {n: w.clone() for n, w in ours.state_dict().items()}

    def make(model):
        return MeZO(
            model.named_parameters(),
            lr=1e-2,
            eps=1e-3,
            scale=scale,
            estimate=estimate,
            rescale_every=2,
            chunk_numel=7,
        )

    opt = make(ours)
    for _ in range(3):
        opt.step(lambda: (ours(x) ** 2).mean())
    saved, weights = opt.state_dict(), {n: p.detach().clone() for n, p in ours.named_parameters()}
    opt.step(lambda: (ours(x) ** 2).mean())  # step 3 uses the scales of step 2, saved with the state
    _scaled_reference(ref, lambda: (ref(x) ** 2).mean(), 4, 1e-2, 1e-3, 2, scale, estimate)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
    # grad_norm probes 4 groups with 2 forwards each at steps 0 and 2
    assert opt.forward_passes == 8 + (16 if scale == "grad_norm" else 0)
    resumed = _Grouped()
    resumed.load_state_dict({n: w for n, w in weights.items()})
    again = make(resumed)
    again.load_state_dict(saved)
    again.step(lambda: (resumed(x) ** 2).mean())
    assert all(torch.equal(p, q) for p, q in zip(resumed.parameters(), ours.parameters(), strict=True))
    replayed = _Grouped()
    replayed.load_state_dict(start)
    records = [StepRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in opt.trajectory]
    replay(make(replayed), records)
    assert all(torch.equal(p, q) for p, q in zip(replayed.parameters(), ours.parameters(), strict=True))


def test_a_state_dict_saved_before_a_setting_was_recorded_reads_as_those_runs_did():
    assert saved_setting({}, "perturbation") == "in_place"
    assert saved_setting({}, "stochastic_rounding") is False
    assert saved_setting({"perturbation": "forward"}, "perturbation") == "forward"
    assert saved_setting({}, "estimator") is None  # not known: the caller decides


@pytest.mark.parametrize(
    ("dtype", "settings"),
    [
        (torch.float32, {"weight_decay": 0.1}),
        (torch.bfloat16, {"weight_decay": 0.1}),  # stochastically rounded updates
        (torch.bfloat16, {"stochastic_rounding": False}),  # to nearest
    ],
)
@pytest.mark.parametrize("forward", [False, True])
def test_the_cpu_fused_sweeps_are_the_chunked_sweeps_arithmetic(monkeypatch, dtype, settings, forward):
    """The Numba kernels (z drawn in the loop, the restore and update in one pass) and the chunked
    torch path (z drawn into scratch, then multiply, add, round) write the same bits."""
    from mezo_ray.zo import cpu_noise

    x, y = data(dtype)
    ends = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(cpu_noise, "FUSED_DTYPES", ())  # every sweep and copy takes the chunks
        model = tiny_model(dtype)
        opt = MeZO(model.named_parameters(), lr=1e-2, eps=1e-2, seed=3, **settings)
        if forward:
            opt.perturb_in_forward(model)
        for _ in range(3):
            opt.step(loss_fn(model, x, y))
        assert (opt.sweeps._fused is not None) == fused
        ends.append(weights(model))
    assert all(torch.equal(a, b) for a, b in zip(*ends, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(ends[0], weights(tiny_model(dtype)), strict=True))
