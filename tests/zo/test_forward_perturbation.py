"""Perturbing inside the forward (``MeZO.perturb_in_forward``): restores exact by construction in every
dtype, the same algorithm as the in-place sweeps, an unbiased estimate, and refusals that name the cause."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mezo_ray.zo import FZOO, MeZO, full_noise, mix_seed, replay
from tests.zo.test_optimizer import data, loss_fn, tiny_model, weights

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def forward_mezo(model: nn.Module, **kwargs) -> MeZO:
    opt = MeZO(model.named_parameters(), **kwargs)
    opt.perturb_in_forward(model)
    return opt


def bits(model: nn.Module) -> list[torch.Tensor]:
    return [
        p.detach().clone().view(torch.int16 if p.element_size() == 2 else torch.int32)
        for p in model.parameters()
    ]


def same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_twenty_thousand_steps_at_lr_zero_leave_the_weights_bit_identical(dtype):
    """The weights are never written but by the update: at lr 0, 20,000 steps (40,000 perturbed
    forwards) give back the starting bits in float32, bfloat16 and float16. The in-place sweeps
    do not (checked for contrast after 200 steps)."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3).to(dtype)  # one module: 20,000 steps in seconds
    x, y = data(dtype, n=8)
    start = bits(model)
    opt = forward_mezo(model, lr=0.0, eps=1e-3)
    for _ in range(20_000):
        opt.step(loss_fn(model, x, y))
    assert same_bits(bits(model), start) and opt.forward_passes == 40_000
    in_place = MeZO(model.named_parameters(), lr=0.0, eps=1e-3)
    for _ in range(200):
        in_place.step(loss_fn(model, x, y))
    assert not same_bits(bits(model), start)


def test_a_module_sees_theta_plus_and_minus_eps_z_the_plus_side_as_the_in_place_sweep_makes_it():
    model = tiny_model()
    x, y = data()
    theta = weights(model)
    seen = []
    opt = forward_mezo(model, lr=0.0, eps=1e-3, seed=5)
    model.fc1.register_forward_pre_hook(lambda module, args: seen.append(module.weight.detach().clone()))
    opt.step(loss_fn(model, x, y))
    z = full_noise(theta[0], "fc1.weight", mix_seed(5, 0, 0))
    assert torch.equal(seen[0], theta[0] + z * 1e-3)  # the in-place sweep's arithmetic
    assert torch.equal(seen[1], theta[0] + z * -1e-3)  # theta - eps z, not via theta + eps z
    assert torch.equal(model.fc1.weight, theta[0])


@pytest.mark.parametrize(
    ("variant", "k", "extra"),
    [("sgd", 1, {}), ("sgd", 3, {}), ("adam", 2, {}), ("momentum", 1, {"scale": "param_norm"})],
)
def test_forward_and_in_place_steps_are_the_same_algorithm(variant, k, extra):
    """In float64 the two differ only by the sweeps' rounding: the same trajectory to 1e-9."""
    x, y = data(torch.float64)
    ours, theirs = tiny_model(torch.float64), tiny_model(torch.float64)
    settings = {
        "lr": 1e-2 if variant != "adam" else 1e-3,
        "eps": 1e-3,
        "variant": variant,
        "n_perturbations": k,
    }
    forward, in_place = (
        forward_mezo(ours, **settings, **extra),
        MeZO(theirs.named_parameters(), **settings, **extra),
    )
    for _ in range(5):
        forward.step(loss_fn(ours, x, y))
        in_place.step(loss_fn(theirs, x, y))
    moved = 0.0
    for a, b, s in zip(
        ours.parameters(), theirs.parameters(), weights(tiny_model(torch.float64)), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        moved = max(moved, float((a.detach() - s).abs().max()))
    assert moved > 1e-4
    assert [g for r in forward.trajectory for g in r.projected_grads] == pytest.approx(
        [g for r in in_place.trajectory for g in r.projected_grads], rel=1e-6
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_step_retried_after_a_closure_error_is_the_uninterrupted_step_bit_for_bit(dtype):
    x, y = data(dtype)
    model, straight = tiny_model(dtype), tiny_model(dtype)
    opt, reference = forward_mezo(model, lr=1e-2, eps=1e-2), forward_mezo(straight, lr=1e-2, eps=1e-2)
    for _ in range(3):
        opt.step(loss_fn(model, x, y))
        reference.step(loss_fn(straight, x, y))
    before = bits(model)
    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 2:  # at theta - eps z
            raise RuntimeError("CUDA out of memory (simulated)")
        return nn.functional.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match="simulated"):
        opt.step(failing)
    assert same_bits(bits(model), before)  # not a bit moved, not even the layer that was running
    opt.step(failing)  # the retry: evaluates theta - eps z again, then updates
    reference.step(loss_fn(straight, x, y))
    assert same_bits(bits(model), bits(straight)) and len(calls) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_replay_and_resume_in_the_forward_are_bit_exact_and_need_the_same_placement(dtype):
    x, y = data(dtype)
    model = tiny_model(dtype)
    opt = forward_mezo(model, lr=1e-2, eps=1e-2, variant="adam")
    for _ in range(10):
        opt.step(loss_fn(model, x, y))
    state = copy.deepcopy(opt.state_dict())  # Adam's moments go on changing in place
    for _ in range(10):
        opt.step(loss_fn(model, x, y))
    resumed_model = tiny_model(dtype)
    replay(forward_mezo(resumed_model, lr=1e-2, eps=1e-2, variant="adam"), opt.trajectory[:10])
    resumed = forward_mezo(resumed_model, lr=1e-2, eps=1e-2, variant="adam")
    resumed.load_state_dict(state)
    for _ in range(10):
        resumed.step(loss_fn(resumed_model, x, y))
    assert same_bits(bits(resumed_model), bits(model))
    with pytest.raises(
        ValueError, match="perturbation='forward' but this optimizer has perturbation='in_place'"
    ):
        MeZO(tiny_model(dtype).named_parameters(), lr=1e-2, variant="adam").load_state_dict(state)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_estimate_is_unbiased_in_every_dtype(dtype):
    """E[g z] = grad over 1000 seeds, at weights held in each dtype (the loss computed in float64 from
    them, so only the perturbation's precision is under test): the low-precision perturbed copies are
    rounded stochastically, E[copy] = theta + eps z, where rounding to nearest would drop most of an
    eps z below half an ulp. lr 0: every step at the same theta."""
    torch.manual_seed(0)
    w = nn.Parameter((torch.randn(3, 6) * 0.5).to(dtype))
    x, y = data(torch.float64)

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self):
            return nn.functional.cross_entropy(x @ self.w.double().T, y)

    probe = Probe()
    true = torch.autograd.grad(probe(), [w])[0].double().flatten()
    opt = forward_mezo(probe, lr=0.0, eps=1e-3, seed=11)
    estimates = []
    for t in range(1000):
        opt.step(lambda: probe())
        z = full_noise(w.detach(), "w", mix_seed(11, t, 0)).double().flatten()
        estimates.append(opt.last_projected_grads[0] * z)
    mean = torch.stack(estimates).mean(0)
    se = torch.stack(estimates).std(0) / 1000**0.5
    assert bool(((mean - true).abs() <= 4 * se + 1e-3 * true.abs()).all()), (mean - true).abs() / se
    assert float(nn.functional.cosine_similarity(mean, true, dim=0)) > 0.95


def test_a_tied_weight_is_perturbed_alike_in_each_module_that_reads_it():
    """An embedding tied to the output layer (as OPT's and RoBERTa's are): both modules see the same
    theta + eps z and the same theta - eps z, each computed from theta, so the loss at theta + eps z is
    the in-place sweep's bit for bit. (Not the loss at theta - eps z: in place gets there as
    (theta + eps z) - 2 eps z, which rounds differently in some elements.)"""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.emb, self.out = nn.Embedding(11, 8), nn.Linear(8, 11, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids):
            return nn.functional.cross_entropy(self.out(torch.tanh(self.emb(ids))), ids)

    ids = torch.arange(11)
    losses, seen = {}, []
    for mode in ("forward", "in_place"):
        model = Tied()
        theta = model.emb.weight.detach().clone()
        opt = MeZO(model.named_parameters(), lr=0.0, eps=1e-2, seed=2)
        if mode == "forward":
            opt.perturb_in_forward(model)
        for module in (model.emb, model.out):  # after perturb_in_forward's hooks: what each runs on
            module.register_forward_pre_hook(lambda m, args: seen.append(m.weight.detach().clone()))
        losses[mode] = []
        opt.step(lambda model=model, mode=mode: losses[mode].append(float(model(ids))) or losses[mode][-1])
        if mode == "forward":
            z = full_noise(theta, "emb.weight", mix_seed(2, 0, 0))
            assert [torch.equal(w, theta + z * 1e-2) for w in seen[:2]] == [True, True]
            assert [torch.equal(w, theta + z * -1e-2) for w in seen[2:]] == [True, True]
            assert torch.equal(model.emb.weight, theta)
    assert losses["forward"][0] == losses["in_place"][0]


def test_a_parameter_read_outside_the_forward_of_its_module_is_refused_by_name():
    class Reaching(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.head = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.head(nn.functional.linear(x, self.inner.weight, self.inner.bias))  # not inner(x)

    model = Reaching()
    x, y = data()
    start = bits(model)
    opt = forward_mezo(model, lr=1e-2)
    with pytest.raises(ValueError, match=r"inner\.weight, inner\.bias never ran inside the forward"):
        opt.step(loss_fn(model, x, y))
    assert same_bits(bits(model), start)


def test_what_cannot_perturb_in_the_forward_is_refused_before_a_step():
    model = tiny_model()
    x, y = data()
    with pytest.raises(ValueError, match="FZOO keeps its own in-place sweeps"):
        FZOO(model.named_parameters(), lr=1e-3).perturb_in_forward(model)
    with pytest.raises(ValueError, match="scale='grad_norm' is not allowed"):
        MeZO(model.named_parameters(), lr=1e-3, scale="grad_norm").perturb_in_forward(model)
    stepped = MeZO(model.named_parameters(), lr=1e-3)
    stepped.step(loss_fn(model, x, y))
    with pytest.raises(ValueError, match="step_count=1 is not allowed"):
        stepped.perturb_in_forward(model)
    with pytest.raises(ValueError, match="parameters of the model given"):
        MeZO(model.named_parameters(), lr=1e-3).perturb_in_forward(tiny_model())
