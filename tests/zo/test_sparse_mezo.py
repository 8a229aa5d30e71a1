"""Sparse MeZO against its equations written out (materialised z, sorted magnitudes, out-of-place,
float64), its seed-log replay, its resume from a (JSON) state dict, the weights its mask leaves out
(which must never move), and its refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mezo_ray.zo import MeZO, full_noise, mix_seed, replay
from mezo_ray.zo.sparse_mezo import SparseMeZO, pack_bits, unpack_bits

LR, EPS = 1e-2, 1e-3


def tiny(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)


def batch(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(1)).to(dtype)


def kth_smallest_magnitude(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """h: the k-th smallest |w| of the whole tensor, k = max(1, round((1 - sparsity) n)), by sorting."""
    k = max(1, round((1 - sparsity) * w.numel()))
    return w.detach().abs().flatten().sort().values[k - 1]


@torch.no_grad()
def reference(model: nn.Module, loss, steps: int, sparsity: float, every, dense=(), wrong: str = "") -> None:
    """arXiv 2402.15751, Algorithm 1: h per tensor at step 0 (and every ``every`` steps), m = |theta_t|
    <= h, zhat = m z, g from l+- at theta +- eps zhat, theta -= lr g zhat. ``wrong``: a rule the paper
    does not have (``dense_update``: MeZO's update with the masked probes; ``mask_after``: the mask
    taken from the perturbed weights), to show the comparison can fail."""
    named = list(model.named_parameters())
    h: dict[str, torch.Tensor] = {}
    for t in range(steps):
        theta = {n: p.detach().clone() for n, p in named}
        if t == 0 or (every and t % every == 0):
            h = {
                n: kth_smallest_magnitude(w, sparsity)
                for n, w in theta.items()
                if not any(d in n for d in dense)
            }
        z = {n: full_noise(p, n, mix_seed(0, t, 0), 7).double() for n, p in named}
        m = {n: (theta[n].abs() <= h[n]).double() if n in h else torch.ones_like(theta[n]) for n in theta}
        zhat = {n: m[n] * z[n] for n in theta}
        losses = []
        for sign in (1.0, -1.0):
            for n, p in named:
                p.data = theta[n] + sign * EPS * zhat[n]
                if wrong == "mask_after" and n in h:
                    p.data = theta[n] + sign * EPS * z[n] * (p.data.abs() <= h[n])
            losses.append(float(loss()))
        g = (losses[0] - losses[1]) / (2 * EPS)
        for n, p in named:
            p.data = theta[n] - LR * g * (z[n] if wrong == "dense_update" else zhat[n])


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("sparsity", "every", "dense"), [(0.8, None, ()), (0.5, 2, ()), (0.6, None, ("bias",)), (0.0, 1, ())]
)
def test_sparse_mezo_steps_match_the_papers_equations_and_replay(sparsity, every, dense):
    ours, ref, x = tiny(), tiny(), batch()
    start = [p.detach().clone() for p in ours.parameters()]
    settings = {"sparsity": sparsity, "threshold_every": every, "dense": dense, "chunk_numel": 7}
    opt = SparseMeZO(ours.named_parameters(), lr=LR, eps=EPS, **settings)
    steps = 6
    for _ in range(steps):
        opt.step(lambda: (ours(x) ** 2).mean())
    reference(ref, lambda: (ref(x) ** 2).mean(), steps, sparsity, every, dense)
    for (name, p), q, s in zip(ours.named_parameters(), ref.parameters(), start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        assert not torch.equal(p, s), name
    assert opt.forward_passes == 2 * steps and opt.update_count == steps
    assert opt.state_multiple == pytest.approx((36 if dense else 43) / 8 / (43 * 8))
    again = tiny()
    fresh = SparseMeZO(again.named_parameters(), lr=LR, eps=EPS, **settings)
    replay(fresh, opt.trajectory, opt.state_dict())
    assert same(again, ours) and fresh.forward_passes == opt.forward_passes


@pytest.mark.parametrize("wrong", ["dense_update", "mask_after"])
def test_the_comparison_with_the_equations_fails_for_another_rule(wrong: str):
    ours, ref, x = tiny(), tiny(), batch()
    opt = SparseMeZO(ours.named_parameters(), lr=LR, eps=EPS, chunk_numel=7)
    for _ in range(6):
        opt.step(lambda: (ours(x) ** 2).mean())
    reference(ref, lambda: (ref(x) ** 2).mean(), 6, 0.8, None, wrong=wrong)
    with pytest.raises(AssertionError):
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def run(model: nn.Module, opt: SparseMeZO, x: torch.Tensor, steps: int, nan_at: int = -1) -> None:
    for _ in range(steps):
        at = opt.step_count
        opt.step(lambda at=at: math.nan if at == nan_at else float((model(x).float() ** 2).mean()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("every", [None, 3])
def test_sparse_mezo_replays_its_seed_log_bit_for_bit(dtype: torch.dtype, every):
    ours, x = tiny(dtype), batch(dtype)
    kw = {"lr": LR, "eps": EPS, "threshold_every": every, "chunk_numel": 7}
    opt = SparseMeZO(ours.named_parameters(), **kw)
    run(ours, opt, x, 10, nan_at=6)  # step 6 (a threshold step when every=3) skipped
    assert opt.nonfinite_steps == 1 and opt.update_count == 9 and opt.trajectory[6].skipped
    again = tiny(dtype)
    fresh = SparseMeZO(again.named_parameters(), **kw)
    replay(fresh, opt.trajectory, opt.state_dict())
    assert same(again, ours) and fresh.nonfinite_steps == 1
    assert (
        fresh.state_dict()["mezo"]["sparse_mezo_thresholds"]
        == opt.state_dict()["mezo"]["sparse_mezo_thresholds"]
    )
    assert not fresh._bits and not opt._bits  # the mask lives for one step


@pytest.mark.parametrize("every", [None, 4])
def test_sparse_mezo_resumes_from_a_json_state_dict_bit_for_bit(every):
    x = batch(torch.float32)
    kw = {"lr": LR, "eps": EPS, "threshold_every": every, "chunk_numel": 7}
    whole = tiny(torch.float32)
    opt = SparseMeZO(whole.named_parameters(), **kw)
    run(whole, opt, x, 10)

    first = tiny(torch.float32)
    before = SparseMeZO(first.named_parameters(), **kw)
    run(first, before, x, 6)
    saved = json.loads(json.dumps(before.state_dict()))  # the checkpoint keeps it as JSON
    assert len(saved["mezo"]["sparse_mezo_thresholds"]) == 4

    def resumed(state: dict) -> nn.Module:
        model = tiny(torch.float32)
        with torch.no_grad():
            for p, q in zip(model.parameters(), first.parameters(), strict=True):
                p.copy_(q)
        after = SparseMeZO(model.named_parameters(), **kw)
        after.load_state_dict(state)
        run(model, after, x, 4)
        assert after.step_count == 10 and after.forward_passes == opt.forward_passes
        return model

    assert same(resumed(saved), whole)
    # the saved thresholds are the ones in force: others (those of the weights now) give other weights
    retaken = json.loads(json.dumps(saved))
    retaken["mezo"]["sparse_mezo_thresholds"] = [
        float(kth_smallest_magnitude(p, 0.8)) for p in first.parameters()
    ]
    assert not same(resumed(retaken), whole)

    with pytest.raises(ValueError, match=r"sparsity=0\.8"):
        SparseMeZO(tiny().named_parameters(), **{**kw, "sparsity": 0.5}).load_state_dict(saved)
    del saved["mezo"]["sparse_mezo_thresholds"]
    with pytest.raises(ValueError, match="sparse_mezo_thresholds"):
        SparseMeZO(tiny().named_parameters(), **kw).load_state_dict(saved)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("every", [None, 1])
def test_the_weights_the_mask_leaves_out_never_move(dtype: torch.dtype, every):
    """The oracle is the definition: before each step, m = |theta| <= h with h the k-th smallest |theta|
    of each tensor at step 0 (every step when every=1), by sorting; a step moves no weight outside m
    (bit for bit) and some inside it."""
    model, x = tiny(dtype), batch(dtype)
    opt = SparseMeZO(model.named_parameters(), lr=LR, eps=EPS, threshold_every=every, chunk_numel=7)
    h = {}
    for t in range(8):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        if t == 0 or every:
            h = {n: kth_smallest_magnitude(w, 0.8) for n, w in before.items()}
        opt.step(lambda: float((model(x).float() ** 2).mean()))
        for n, p in model.named_parameters():
            m = before[n].abs() <= h[n]
            assert torch.equal(p[~m], before[n][~m]), (t, n)
            if t == 0 or every:  # thresholds just taken: at least k inside (ties), else exactly k
                k = max(1, round(0.2 * m.numel()))
                assert m.sum() >= k if dtype == torch.bfloat16 else m.sum() == k, (t, n)
        moved = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
        assert moved > 0, t


def test_the_mask_packs_into_bits_and_back():
    for n in (1, 7, 8, 9, 30):
        m = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
        packed = pack_bits(m)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 8)
        assert torch.equal(unpack_bits(packed, n).bool(), m)


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ({"sparsity": 1.0}, "sparsity=1.0"),
        ({"sparsity": -0.1}, "sparsity=-0.1"),
        ({"sparsity": True}, "sparsity=True"),
        ({"sparsity": "0.8"}, "sparsity='0.8'"),
        ({"threshold_every": 0}, "threshold_every=0"),
        ({"threshold_every": 2.5}, "threshold_every=2.5"),
        ({"threshold_every": True}, "threshold_every=True"),
        ({"dense": "bias"}, "dense='bias'"),
        ({"dense": ("",)}, "dense=\\(''"),
        ({"weight_decay": 0.1}, "weight_decay=\\[0.1\\]"),
    ],
)
def test_sparse_mezo_refuses_bad_settings_by_value(setting: dict, shown: str):
    with pytest.raises(ValueError, match=shown):
        SparseMeZO(tiny().named_parameters(), lr=1e-3, **setting)


def test_sparse_mezo_refuses_decay_in_a_group_a_mezo_log_the_forward_placement_and_no_closure():
    model = tiny()
    groups = [
        {"params": list(model[0].parameters()), "weight_decay": 0.01},
        {"params": list(model[2].parameters())},
    ]
    with pytest.raises(ValueError, match="weight_decay="):
        SparseMeZO(groups, lr=1e-3)
    mezo = MeZO(tiny().named_parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="estimator"):
        SparseMeZO(tiny().named_parameters(), lr=1e-3).check_compatible(mezo.state_dict()["mezo"])
    with pytest.raises(ValueError, match="perturb_in_forward"):
        SparseMeZO(model.named_parameters(), lr=1e-3).perturb_in_forward(model)
    with pytest.raises(ValueError, match="closure"):
        SparseMeZO(model.named_parameters(), lr=1e-3).step()


def test_sparse_mezo_refuses_fsdp_shards(tmp_path):
    """A threshold needs the whole tensor: a Shard(0) DTensor (one process, one rank) is refused."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        param = nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
        with pytest.raises(ValueError, match=r"parameters=\['w'\].*FSDP"):
            SparseMeZO([("w", param)], lr=1e-3)
    finally:
        dist.destroy_process_group()


_KERNEL_SET_RUN = """
import hashlib, json, math, torch
from torch import nn
from mezo_ray.zo.sparse_mezo import SparseMeZO
out = {"capability": torch.backends.cpu.get_cpu_capability()}
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    net = nn.Sequential(nn.Linear(33, 70), nn.Linear(70, 5))
    with torch.no_grad():  # weights from integer arithmetic: torch's randn differs between kernel sets
        for i, p in enumerate(net.parameters()):
            k = torch.arange(p.numel(), dtype=torch.float64) * (2654435761 + i)
            p.copy_((torch.remainder(k, 1000.0) / 1000.0 - 0.5).view_as(p))
    net = net.to(dtype)
    opt = SparseMeZO(net.named_parameters(), lr=1e-3, eps=1e-2, seed=5, threshold_every=2, chunk_numel=500)
    def loss():  # summed exactly: the losses are the same bits under every kernel set
        return math.fsum(x for p in net.parameters() for x in ((p.double() - 0.25) ** 2).view(-1).tolist())
    for _ in range(5):
        opt.step(loss)
    bits = b"".join(p.detach().contiguous().view(torch.uint8).numpy().tobytes() for p in net.parameters())
    out[str(dtype)] = hashlib.sha1(bits).hexdigest()
print(json.dumps(out))
"""


def test_the_masked_steps_are_the_same_under_every_cpu_kernel_set():
    """h, the mask and z are exact: the default kernels and the vector ones give the same bits."""
    import os
    import subprocess
    import sys

    def run_under(capability: str | None) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if capability is not None:
            env["ATEN_CPU_CAPABILITY"] = capability
        done = subprocess.run(
            [sys.executable, "-c", _KERNEL_SET_RUN], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    default, best = run_under("default"), run_under(None)
    if best["capability"] == "DEFAULT":
        pytest.skip("this CPU has no vector kernel set to compare with")
    assert default.pop("capability") == "DEFAULT"
    best.pop("capability")
    assert default == best
