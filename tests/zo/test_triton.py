"""The CUDA path's Triton noise and sweeps: on a GPU, or without one on CPU tensors under Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where there is no GPU), fewer steps there.

The kernels are checked against independent oracles: the CPU kernels (``cpu_noise``: the same z and
u, the same fused update, bit for bit), ``noise.stochastic_round_`` applied to torch's arithmetic on
the kernels' z and uniform draws, and ``ReferenceMeZO`` (materialised z, torch.optim). The kernels
launch without FMA contraction and round bfloat16 in integer operations, so on a GPU too they are the
CPU's arithmetic bit for bit.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from mezo_ray.zo import MeZO, cpu_noise, full_noise, mix_seed, noise, replay
from mezo_ray.zo.noise import NoiseSlice, materialise, name_key, stochastic_round_
from mezo_ray.zo.sweeps import PERTURBATION_ROUNDING_STREAM, ROUNDING_STREAM
from tests.zo.reference import ReferenceMeZO
from tests.zo.test_optimizer import assert_steps_match_the_reference, data, loss_fn, tiny_model, weights
from tests.zo.test_precision import fp16_update_is_rounded_on_its_own

cuda_noise = pytest.importorskip("mezo_ray.zo.cuda_noise", reason="needs Triton")
INTERPRETED = not torch.cuda.is_available()
if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU, and Triton's interpreter is off", allow_module_level=True)

LOW = [torch.bfloat16, torch.float16]
STEPS = 15 if INTERPRETED else 2000  # the interpreter takes tens of milliseconds a launch


@pytest.fixture
def device(monkeypatch):
    """Where the kernels run: the GPU, or the CPU with the Triton path serving CPU tensors (one
    thread: the interpreter is not thread-safe, and the chunked sweeps would run it in a pool)."""
    if not INTERPRETED:
        return torch.device("cuda")
    monkeypatch.setattr(noise, "TRITON_DEVICE_TYPES", frozenset({"cuda", "cpu"}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch.device("cpu")
    torch.set_num_threads(threads)


def uniform(n: int, seed: int, key: int, start: int, device: torch.device) -> torch.Tensor:
    out = torch.empty(n, device=device)
    cuda_noise.fill_uniform(out, seed, key, start)
    return out


def normal(n: int, seed: int, key: int, start: int, device: torch.device) -> torch.Tensor:
    out = torch.empty(n, device=device)
    cuda_noise.fill_normal(out, seed, key, start)
    return out


@pytest.mark.parametrize("start", [0, 3, 4 * 2**32 - 6])  # the last: the counter's high word changes
def test_z_and_u_are_the_cpu_kernels_bits(device, start):
    """One generator on every device: the Triton kernels draw what ``cpu_noise`` draws, bit for bit."""
    n, seed, key = 9000, mix_seed(3, 1), name_key("w")
    z, u = np.empty(n, np.float32), np.empty(n, np.float32)
    cpu_noise.normals_into(z, mix_seed(seed, key), start)
    cpu_noise.uniforms_into(u, mix_seed(seed, key), start)
    assert normal(n, seed, key, start, device).cpu().numpy().tobytes() == z.tobytes()
    assert uniform(n, seed, key, start, device).cpu().numpy().tobytes() == u.tobytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stochastic", [False, True])
def test_the_fused_update_is_the_cpu_fused_updates_arithmetic(device, dtype, stochastic):
    """Restore, decay, update and rounding: a GPU step writes the weights a CPU step writes (float16
    parameters against the CPU's chunked path, which has the same arithmetic)."""
    torch.manual_seed(0)
    theta = (torch.randn(5003) * 0.1).to(dtype)
    out = {}
    for where in ("triton", "cpu"):
        p = theta.clone().to(device)
        if where == "cpu":
            p, types = theta.clone(), noise.TRITON_DEVICE_TYPES
            noise.TRITON_DEVICE_TYPES = frozenset({"cuda"})
        opt = MeZO(
            [("w", p)],
            lr=1e-3,
            eps=1e-2,
            weight_decay=0.1,
            no_decay=(),
            seed=4,
            stochastic_rounding=stochastic or None if dtype != torch.float32 else None,
        )
        opt.step(lambda p=p: float((p.double() ** 2).sum()))
        if where == "cpu":
            noise.TRITON_DEVICE_TYPES = types
        out[where] = p.cpu()
    assert torch.equal(out["triton"].view(torch.uint8), out["cpu"].view(torch.uint8))


@pytest.mark.parametrize("ways", [1, 2, 3])
def test_shards_draw_their_rows_of_the_whole(device, ways):
    whole = torch.zeros(1001, 7, device=device)
    z = full_noise(whole, "w", seed=5).view(-1)
    parts, start = [], 0
    for piece in torch.chunk(whole, ways):
        s = NoiseSlice(piece.contiguous().view(-1), start * 7, whole.numel(), name_key("w"))
        parts.append(materialise(s, 5))
        start += piece.shape[0]
    assert torch.equal(torch.cat(parts), z)
    n = z.numel()  # N(0, 1): the mean and std are within 5 standard errors (1/sqrt(n), 1/sqrt(2n))
    assert abs(float(z.mean())) < 5 / n**0.5 and abs(float(z.std()) - 1) < 5 / (2 * n) ** 0.5


def test_fused_sweep_adds_the_same_z_as_the_chunked_path(device):
    p = torch.zeros(300_001, device=device)
    opt = MeZO([("w", p)], lr=0.0)
    opt.perturb(seed=11, scale=1.0)  # fused: theta = 1 * theta + 1 * z
    assert opt.sweeps._fused is not None
    torch.testing.assert_close(p, full_noise(p, "w", seed=11), rtol=0, atol=0)


def test_float64_parameters_take_the_chunked_path_in_float64(device):
    p = torch.zeros(10_001, dtype=torch.float64, device=device)
    opt = MeZO([("w", p)], lr=0.0)
    opt.perturb(seed=7, scale=1e-3)  # the float32 fused kernel would round 1e-3 * z to float32
    assert opt.sweeps._fused is None
    assert torch.equal(p, 1e-3 * full_noise(p, "w", seed=7).double())
    assert opt.noise_backend == noise.NOISE_TAG


@pytest.mark.parametrize(
    ("variant", "weight_decay", "k"), [("sgd", 0.1, 1), ("adam", 0.1, 1), ("sgd", 0.0, 2)]
)
def test_float64_steps_match_the_reference(device, variant, weight_decay, k):
    assert_steps_match_the_reference(variant, weight_decay, k, device)  # the chunked path, Triton's z


@pytest.mark.parametrize("perturbation", ["in_place", "forward"])
def test_bfloat16_steps_move_the_weights_and_replay_bit_exactly(device, perturbation):
    x, y = (t.to(device) for t in data())
    trained, fresh = (tiny_model().to(device, torch.bfloat16) for _ in range(2))
    start = [p.detach().clone() for p in trained.parameters()]
    opts = [MeZO(m.named_parameters(), lr=1e-2) for m in (trained, fresh)]
    if perturbation == "forward":
        for opt, m in zip(opts, (trained, fresh), strict=True):
            opt.perturb_in_forward(m)
    for _ in range(5):
        opts[0].step(lambda: nn.functional.cross_entropy(trained(x.bfloat16()).float(), y))
    replay(opts[1], opts[0].trajectory)
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), fresh.parameters(), strict=True))
    assert not all(torch.equal(p, s) for p, s in zip(trained.parameters(), start, strict=True))


def test_uniform_draws_are_uniform_independent_of_z_and_shard_alike(device):
    n = 100_003
    seed = mix_seed(3, ROUNDING_STREAM)
    u = uniform(n, seed, 11, 0, device)  # a step's rounding draws ...
    assert float(u.min()) >= 0 and float(u.max()) < 1
    # U[0, 1): mean 1/2 (sd 1/sqrt(12 n)), variance 1/12 (sd sqrt(1/180 / n)), within 5 of them
    assert abs(float(u.mean()) - 0.5) < 5 / (12 * n) ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 5 * (1 / 180 / n) ** 0.5
    z = normal(n, 3, 11, 0, device)  # ... and its z (with one seed they would share Philox words)
    assert abs(float(torch.corrcoef(torch.stack([u, z]))[0, 1])) < 5 / n**0.5
    parts = [uniform(hi - lo, seed, 11, lo, device) for lo, hi in [(0, 4097), (4097, 50_001), (50_001, n)]]
    assert torch.equal(torch.cat(parts), u)


@pytest.mark.parametrize("offset", [0, 4099])  # a whole parameter, and a shard starting mid-block
def test_fused_sweep_rounds_as_the_cpu_paths_stochastic_rounding(device, offset):
    torch.manual_seed(0)
    thetas = {dtype: torch.randn(6_000).to(device, dtype) for dtype in [*LOW, torch.float32]}
    thetas["fp16 to nearest"] = torch.randn(6_000).to(device, torch.float16)
    thetas["fp16 around zero"] = torch.zeros(6_000, device=device, dtype=torch.float16)  # y by a subnormal
    starts = [t.clone() for t in thetas.values()]
    slices = [NoiseSlice(t, offset, offset + t.numel(), key=k) for k, t in enumerate(thetas.values())]
    rounded = [True, True, False, False, True]  # float32 is never rounded stochastically; the 4th opts out
    a, b = [0.5, 1.0, 0.9, 1.0, 1.0], [1e-3, 2e-4, 0.1, 1e-3, 2e-8]
    cuda_noise.FusedSweep(slices, rounded)(seed=42, a=a, b=b, round_seed=99)
    for k, (theta, start) in enumerate(zip(thetas.values(), starts, strict=True)):
        n = theta.numel()
        y = a[k] * start.float() + b[k] * normal(n, 42, k, offset, theta.device)
        if rounded[k]:
            expected = stochastic_round_(torch.empty_like(theta), y, uniform(n, 99, k, offset, theta.device))
        else:
            expected = y.to(theta.dtype)
        assert torch.equal(theta, expected), k
        assert not torch.equal(theta, start)


@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
def test_forward_copies_are_the_in_place_sweeps_values_and_leave_theta(device, dtype):
    torch.manual_seed(0)
    theta = torch.randn(9_000, device=device).to(dtype)
    start = theta.clone()
    rounding = 7 if dtype in LOW else None
    copy = torch.empty_like(theta)
    cuda_noise.axpbz_into(NoiseSlice(theta, 100, 9_100, key=5), copy, 3, 1.0, 1e-3, rounding)
    assert torch.equal(theta, start)
    in_place = NoiseSlice(theta.clone(), 100, 9_100, key=5)
    cuda_noise.FusedSweep([in_place], [rounding is not None])(3, [1.0], [1e-3], rounding)
    assert torch.equal(copy, in_place.local)  # the + side is the in-place sweep's, bit for bit
    y = start.float() + 1e-3 * normal(9_000, 3, 5, 100, device)
    if rounding is not None:
        y = stochastic_round_(torch.empty_like(theta), y, uniform(9_000, 7, 5, 100, device))
    assert torch.equal(copy, y)
    assert not torch.equal(copy, start)


def test_steps_on_the_triton_path_match_the_reference(device):
    """The fused sweeps' coefficients (restore, decay, update; in place and in the forward) against
    materialised z and torch.optim.SGD, in float32."""
    x, y = (t.to(device) for t in data())
    for perturbation in ["in_place", "forward"]:
        ours, ref = tiny_model().to(device), tiny_model().to(device)
        opt = MeZO(ours.named_parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1)
        if perturbation == "forward":
            opt.perturb_in_forward(ours)
        reference = ReferenceMeZO(ref, 1e-2, 1e-3, 0.1, "sgd")
        for _ in range(3):
            opt.step(loss_fn(ours, x, y))
            reference.step(loss_fn(ref, x, y))
        assert isinstance(opt.sweeps._fused, cuda_noise.FusedSweep) and opt.noise_backend == noise.NOISE_TAG
        # In float32 each loss is rounded to ~1e-7 of itself, so g = (l+ - l-) / 2 eps carries an error of
        # ~1e-7 / eps = 1e-4 of the loss: the displacements agree to that, not to the bit.
        start = weights(tiny_model().to(device))
        for p, q, s in zip(ours.parameters(), ref.parameters(), start, strict=True):
            moved, expected = (p - s).detach(), (q - s).detach()
            assert float((moved - expected).norm()) <= 1e-3 * float(expected.norm()) + 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
def test_forward_perturbation_on_the_triton_path_leaves_the_weights_bit_identical(device, dtype):
    """lr 0: the weights are only ever written by the update (a x + 0 z, rounded: x itself), while
    the in-place sweeps' +eps z, -2 eps z, +eps z move them."""
    x, y = (t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in data())
    moved = {}
    # the contrast: in place, low precision moves the weights within a step or two
    steps = {"forward": STEPS, "in_place": 3} if dtype in LOW else {"forward": STEPS}
    for perturbation, n in steps.items():
        model = tiny_model().to(device, dtype)
        start = [p.detach().clone() for p in model.parameters()]
        opt = MeZO(model.named_parameters(), lr=0.0, eps=1e-3)
        if perturbation == "forward":
            opt.perturb_in_forward(model)
        for _ in range(n):
            opt.step(lambda m=model: nn.functional.cross_entropy(m(x).float(), y))
        assert all(g != 0 for r in opt.trajectory for g in r.projected_grads)  # the forwards were perturbed
        moved[perturbation] = sum(int((p != q).sum()) for p, q in zip(model.parameters(), start, strict=True))
    assert moved["forward"] == 0
    if dtype in LOW:
        assert moved["in_place"] > 0


class Linear(nn.Module):
    """loss = c . w: the projected gradient is c . z, known before the step."""

    def __init__(self, w: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.w, self.c = nn.Parameter(w, requires_grad=False), c
        self.seen: list[torch.Tensor] = []

    def forward(self) -> torch.Tensor:
        self.seen.append(self.w.detach().clone())  # what the forward ran on
        return (self.w.float() * self.c).sum()


@pytest.mark.parametrize("dtype", LOW)
def test_fused_updates_below_half_an_ulp_survive_on_average(device, dtype):
    """One step at an lr that moves each weight by ~0.05 ulp: to nearest, none would move;
    stochastically rounded, the sum of the moves is the float32 update's within 5 standard errors
    (each move is 0 or one grid step, at most eps, so its variance is at most eps^2 / 4). In the
    forward, so that the weights see the update alone (the in-place sweeps' restores would add
    errors of an ulp, the size of what is measured)."""
    n = 20_000
    model = Linear(torch.ones(n, device=device, dtype=dtype), torch.linspace(-1, 1, n, device=device))
    z = full_noise(model.w, "w", seed=mix_seed(0, 0, 0))  # the first step's z (seed 0, step 0, k 0)
    ulp = float(torch.finfo(dtype).eps)
    lr = 0.05 * ulp / float((torch.dot(model.c, z) * z).abs().mean())
    opt = MeZO([("w", model.w)], lr=lr, eps=1e-2)
    opt.perturb_in_forward(model)
    opt.step(lambda: model())
    expected = -lr * opt.trajectory[-1].projected_grads[0] * z
    moved = model.w.float() - 1.0
    assert int((moved != 0).sum()) > 0.02 * n
    assert abs(float(moved.sum()) - float(expected.sum())) < 5 * (n * ulp**2 / 4) ** 0.5


@pytest.mark.parametrize("dtype", LOW)
def test_the_forward_runs_on_stochastically_rounded_copies_of_the_rounding_stream(device, dtype):
    n = 9_000
    model = Linear(torch.randn(n, device=device).to(dtype), torch.linspace(-1, 1, n, device=device))
    theta = model.w.detach().clone()
    opt = MeZO([("w", model.w)], lr=0.0, eps=1e-3)
    opt.perturb_in_forward(model)
    opt.step(lambda: model())
    seed, key = mix_seed(0, 0, 0), name_key("w")
    z = normal(n, seed, key, 0, device)
    for sign, seen in zip([1, -1], model.seen, strict=True):
        u = uniform(n, mix_seed(seed, PERTURBATION_ROUNDING_STREAM, int(sign > 0)), key, 0, device)
        expected = stochastic_round_(torch.empty_like(theta), theta.float() + sign * 1e-3 * z, u)
        assert torch.equal(seen, expected), sign
    assert torch.equal(model.w, theta)


def test_an_fp16_update_under_half_an_ulp_is_dropped_as_on_the_cpu(device):
    """The fused Triton sweep restores, rounds, then updates: the paper's two fp16 roundings."""
    fp16_update_is_rounded_on_its_own(device)
