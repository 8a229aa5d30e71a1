"""The CUDA (Triton) noise and fused sweeps. Skipped without a GPU; run on a GPU machine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mezo_ray.zo import MeZO, full_noise, replay
from mezo_ray.zo.noise import NoiseSlice, materialise, name_key
from tests.zo.reference import ReferenceMeZO
from tests.zo.test_optimizer import data, loss_fn, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("ways", [1, 2, 3])
def test_cuda_shards_draw_their_rows_of_the_whole(ways):
    whole = torch.zeros(1001, 7, device="cuda")
    z = full_noise(whole, "w", seed=5).view(-1)
    parts, start = [], 0
    for piece in torch.chunk(whole, ways):
        s = NoiseSlice(piece.contiguous().view(-1), start * 7, whole.numel(), name_key("w"))
        parts.append(materialise(s, 5))
        start += piece.shape[0]
    assert torch.equal(torch.cat(parts), z)
    n = z.numel()  # N(0, 1): the mean and std are within 5 standard errors (1/sqrt(n), 1/sqrt(2n))
    assert abs(float(z.mean())) < 5 / n**0.5 and abs(float(z.std()) - 1) < 5 / (2 * n) ** 0.5


def test_fused_sweep_adds_the_same_z_as_the_chunked_path():
    p = torch.zeros(300_001, device="cuda")
    opt = MeZO([("w", p)], lr=0.0)
    opt.perturb(seed=11, scale=1.0)  # fused: theta = 1 * theta + 1 * z
    torch.testing.assert_close(p, full_noise(p, "w", seed=11), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("variant", "weight_decay", "k"), [("sgd", 0.1, 1), ("adam", 0.1, 1), ("sgd", 0.0, 2)]
)
def test_cuda_steps_match_the_reference(variant, weight_decay, k):
    ours, ref = tiny_model(torch.float64).cuda(), tiny_model(torch.float64).cuda()
    x, y = (t.cuda() for t in data(torch.float64))
    lr = 1e-3 if variant == "adam" else 1e-2
    opt = MeZO(
        ours.named_parameters(),
        lr=lr,
        eps=1e-3,
        weight_decay=weight_decay,
        variant=variant,
        n_perturbations=k,
    )
    reference = ReferenceMeZO(ref, lr, 1e-3, weight_decay, variant, n_perturbations=k)
    for _ in range(3):
        opt.step(loss_fn(ours, x, y))
        reference.step(loss_fn(ref, x, y))
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        # float64 parameters take the exact (chunked) path, not the float32 fused kernel
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_float64_sweeps_compute_in_float64():
    p = torch.zeros(10_001, dtype=torch.float64, device="cuda")
    opt = MeZO([("w", p)], lr=0.0)
    opt.perturb(seed=7, scale=1e-3)  # the float32 fused kernel would round 1e-3 * z to float32
    assert torch.equal(p, 1e-3 * full_noise(p, "w", seed=7).double())
    assert opt.noise_backend == "cuda-triton-philox"


def test_cuda_replay_is_bit_exact_and_bf16_steps_move_the_weights():
    model = tiny_model().cuda().to(torch.bfloat16)
    x, y = (t.cuda() for t in data())
    start = [p.detach().clone() for p in model.parameters()]
    opt = MeZO(model.named_parameters(), lr=1e-2)
    for _ in range(5):
        opt.step(lambda: nn.functional.cross_entropy(model(x.bfloat16()).float(), y))
    fresh = tiny_model().cuda().to(torch.bfloat16)
    replay(MeZO(fresh.named_parameters(), lr=1e-2), opt.trajectory)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_perturbing_in_the_forward_leaves_the_weights_bit_identical_and_replays(dtype):
    model = tiny_model().cuda().to(dtype)
    x, y = (t.cuda() for t in data())
    start = [p.detach().clone() for p in model.parameters()]
    opt = MeZO(model.named_parameters(), lr=0.0, eps=1e-3)
    opt.perturb_in_forward(model)
    for _ in range(2000):
        opt.step(lambda: nn.functional.cross_entropy(model(x.to(dtype)).float(), y))
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))
    trained, fresh = tiny_model().cuda().to(dtype), tiny_model().cuda().to(dtype)
    opt = MeZO(trained.named_parameters(), lr=1e-2)
    opt.perturb_in_forward(trained)
    for _ in range(5):
        opt.step(lambda: nn.functional.cross_entropy(trained(x.to(dtype)).float(), y))
    again = MeZO(fresh.named_parameters(), lr=1e-2)
    again.perturb_in_forward(fresh)
    replay(again, opt.trajectory)
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), fresh.parameters(), strict=True))
    assert not all(torch.equal(p, s) for p, s in zip(trained.parameters(), start, strict=True))
