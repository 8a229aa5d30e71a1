"""Population (EGGROLL-style batched antithetic low-rank members) against its equations written out:
separate forwards of the perturbed weights, and a float64 reference of the update."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from mezo_ray.zo import StepRecord, full_noise, mix_seed, replay
from mezo_ray.zo.noise import lowrank_factor
from mezo_ray.zo.population import (
    A_STREAM,
    B_STREAM,
    Population,
    draw_factors,
    population_forward,
    population_losses,
    repeat_batch,
)

LR, EPS, RANK, MEMBERS, WD = 1e-2, 1e-3, 2, 4, 0.1


def mlp(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)]
    return nn.Sequential(*layers).to(dtype)


def roberta() -> nn.Module:
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=24,
        type_vocab_size=1,
        pad_token_id=1,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return RobertaForMaskedLM(config).double().eval()


def inputs(name: str, b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        return {"input": torch.randn(b, 5, dtype=torch.float64, generator=g)}
    ids = torch.randint(3, 40, (b, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["input"]) if "input" in batch else model(**batch).logits


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear whose weight and bias no other module holds (the default of ``attach``)."""
    held: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            held[id(p)] = held.get(id(p), 0) + 1
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and held[id(m.weight)] == 1 and held[id(m.bias)] == 1
    }


@pytest.mark.parametrize("kind", ["mlp", "roberta"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_batched_forward_equals_separate_forwards_of_the_perturbed_weights(kind, grad):
    model = mlp() if kind == "mlp" else roberta()
    batch, eps, seeds = inputs(kind), 0.05, (11, 12)
    before = outputs(model, batch).detach()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    factors = {
        n: draw_factors(f"{n}.weight", m.weight.shape, RANK, seeds, f"{n}.bias").to(m.weight)
        for n, m in linears(model).items()
    }
    if kind == "roberta":  # the decoder is tied to the word embeddings: not wrapped
        assert "lm_head.decoder" not in factors and "lm_head.dense" in factors
    with torch.set_grad_enabled(grad), population_forward(model, MEMBERS, eps, factors):
        together = outputs(model, repeat_batch(batch, MEMBERS)).detach()
    b = before.shape[0]
    for i in range(MEMBERS):
        j, sign = i // 2, (1.0 if i % 2 == 0 else -1.0)
        member = copy.deepcopy(model)
        modules = dict(member.named_modules())
        with torch.no_grad():
            for n, f in factors.items():
                modules[n].weight += sign * eps * (f.b[j] @ f.a[j].T) / math.sqrt(RANK)
                modules[n].bias += sign * eps * f.z[j]
        alone = outputs(member, batch).detach()
        torch.testing.assert_close(together[i * b : (i + 1) * b], alone, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(alone, before, rtol=1e-6, atol=1e-9)  # the member is perturbed
    # no lasting change: the weights were never written, the hooks are gone
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(outputs(model, batch).detach(), before)


def reference(model: nn.Module, x: torch.Tensor, steps: int, coef_pairs: float) -> None:
    """The equations written out in float64: member 2j / 2j+1 at theta +- eps d_j (W: B_j A_j^T /
    sqrt(r), b: z_j), L_i the mean loss, c_j = (L_2j - L_2j+1) / (2 eps P), W <- W (1 - lr wd) -
    lr sum_j c_j d_j (biases: no decay); LayerNorm untouched. ``coef_pairs``: P (a mutant: other)."""
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("1.")]
    pairs = MEMBERS // 2
    for t in range(steps):
        seeds = [mix_seed(0, t, j) for j in range(pairs)]
        directions = []
        for seed in seeds:
            d = {}
            for n, p in named:
                if p.dim() == 2:
                    a = lowrank_factor(n, p.shape[1], RANK, seed, A_STREAM).double()
                    b = lowrank_factor(n, p.shape[0], RANK, seed, B_STREAM).double()
                    d[n] = b @ a.T / math.sqrt(RANK)
                else:
                    d[n] = full_noise(p, n, seed).double()
            directions.append(d)
        theta = {n: p.detach().clone() for n, p in named}
        losses = []
        for i in range(MEMBERS):
            for n, p in named:
                p.data = theta[n] + (1 if i % 2 == 0 else -1) * EPS * directions[i // 2][n]
            with torch.no_grad():
                losses.append(float((model(x) ** 2).sum(1).mean()))
        coefs = [(losses[2 * j] - losses[2 * j + 1]) / (2 * EPS * coef_pairs) for j in range(pairs)]
        for n, p in named:
            wd = 0.0 if "bias" in n else WD
            p.data = theta[n] * (1 - LR * wd) - LR * sum(
                c * d[n] for c, d in zip(coefs, directions, strict=True)
            )


def make(model: nn.Module, **kw) -> Population:
    settings = dict(lr=LR, eps=EPS, weight_decay=WD, members=MEMBERS, rank=RANK, chunk_numel=7)
    return Population(model.named_parameters(), model=model, **{**settings, **kw})


def closure_for(model: nn.Module, x: torch.Tensor, members: int = MEMBERS):
    return lambda: population_losses((model(repeat_batch(x, members)) ** 2).sum(1), members)


def test_update_matches_the_equations_in_float64_and_a_mutant_reference_fails():
    ours, ref, mutant = mlp(), mlp(), mlp()
    start = {n: p.detach().clone() for n, p in ours.named_parameters()}
    x = inputs("mlp", 8)["input"]
    opt = make(ours)
    for _ in range(3):
        opt.step(closure_for(ours, x))
    reference(ref, x, 3, MEMBERS // 2)
    reference(mutant, x, 3, MEMBERS)  # a plausible slip: c_j averaged over N instead of N / 2
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        assert torch.equal(p, start[name]) == name.startswith("1.")  # LayerNorm untouched, rest moved
    with pytest.raises(AssertionError):
        for p, q in zip(ours.parameters(), mutant.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    assert opt.untouched == ["1.weight", "1.bias"]
    assert opt.forward_passes == 3 * MEMBERS and opt.state_multiple == 0
    assert len(opt.trajectory[-1].seeds) == len(opt.last_projected_grads) == MEMBERS // 2
    assert len(opt.last_member_losses) == MEMBERS


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
def test_replay_from_the_seed_log_and_resume_from_a_state_dict_are_exact(dtype):
    ours = mlp(dtype)
    start = {n: w.clone() for n, w in ours.state_dict().items()}
    x = inputs("mlp", 8)["input"].to(dtype)
    opt = make(ours, lr=0.5 if dtype == torch.bfloat16 else LR)
    for _ in range(3):
        opt.step(closure_for(ours, x))
    saved = copy.deepcopy(opt.state_dict())
    weights = {n: w.clone() for n, w in ours.state_dict().items()}
    for _ in range(3):
        opt.step(closure_for(ours, x))
    assert not torch.equal(ours[0].weight, start["0.weight"])

    resumed = mlp(dtype)
    resumed.load_state_dict(weights)
    again = make(resumed, lr=opt.param_groups[0]["lr"])
    again.load_state_dict(saved)
    for _ in range(3):
        again.step(closure_for(resumed, x))
    assert all(torch.equal(p, q) for p, q in zip(resumed.parameters(), ours.parameters(), strict=True))

    replayed = mlp(dtype)
    replayed.load_state_dict(start)
    calls = []
    replayed.register_forward_hook(lambda *_: calls.append(1))
    records = [StepRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in opt.trajectory]
    replay(make(replayed, lr=opt.param_groups[0]["lr"]), records, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(replayed.parameters(), ours.parameters(), strict=True))
    assert not calls  # the factors come from the seeds: no forward


def test_refusals_by_name():
    with pytest.raises(ValueError, match=r"members=3"):
        make(mlp(), members=3)
    with pytest.raises(ValueError, match=r"members=0"):
        make(mlp(), members=0)
    with pytest.raises(ValueError, match=r"rank=0"):
        make(mlp(), rank=0)
    model = mlp()
    x = inputs("mlp", 2)["input"]
    opt = make(model)
    with pytest.raises(ValueError, match=r"members=4 losses"):
        opt.step(lambda: torch.zeros(3))
    with pytest.raises(ValueError, match=r"members=4 losses"):
        opt.step(lambda: (model(repeat_batch(x, MEMBERS)) ** 2).mean())  # one mean, not N
    with pytest.raises(ValueError, match=r"repeat its batch members=4"):
        opt.step(lambda: (model(x) ** 2).sum(1))  # the batch was not repeated
    assert opt.step_count == 0 and all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match=r"per_example"):
        population_losses(torch.zeros(7), MEMBERS)
    assert make(mlp(), modules=["0"]).untouched == [f"{i}.{w}" for i in (1, 3, 5) for w in ("weight", "bias")]
    with pytest.raises(ValueError, match=r"modules='1'"):
        make(mlp(), modules=["1"])  # a LayerNorm
    with pytest.raises(ValueError, match=r"modules='lm_head.decoder'"):
        tied = roberta()
        make(tied, modules=["lm_head.decoder"])  # tied to the word embeddings
    with pytest.raises(ValueError, match=r"attach"):
        Population(mlp().named_parameters(), lr=LR).step(lambda: torch.zeros(8))


def test_a_non_finite_member_skips_the_step_and_keeps_the_weights():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = make(model)
    assert math.isnan(opt.step(lambda: torch.tensor([0.0, float("nan"), 1.0, 2.0])))
    assert opt.trajectory[-1].skipped and opt.nonfinite_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_population_losses_weighted_means_per_member():
    per_example = torch.arange(8.0)
    torch.testing.assert_close(population_losses(per_example, 4), torch.tensor([0.5, 2.5, 4.5, 6.5]))
    weights = torch.tensor([1.0, 3.0] * 4)
    torch.testing.assert_close(
        population_losses(per_example, 2, weights), torch.tensor([(0 + 3 + 2 + 9) / 8, (4 + 15 + 6 + 21) / 8])
    )
