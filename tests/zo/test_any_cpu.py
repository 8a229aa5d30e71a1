"""Same bits on any CPU: MeZO steps, and the replay of a seed log, under each of torch's CPU kernel
sets (``ATEN_CPU_CAPABILITY=default`` is scalar code, ``avx2``, ``avx512`` where the CPU has it).

Each run is a subprocess, as the capability is fixed when torch loads. The losses of the live runs are
exact functions of the weights (math.fsum of float64 squares): the test is of the optimizer's own
arithmetic, z and the sweeps, not of a model's forward, whose bits are the model's business. The
replay test records a real model's steps under one capability and replays them under another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, math, sys
    import torch
    from torch import nn
    from mezo_ray.zo import FZOO, HiZOO, LOZO, MeZO, StepRecord, replay

    CONFIGS = {  # name: (dtype, estimator, settings, perturb in the forward)
        "float32": (torch.float32, MeZO, {}, False),
        "float32-param-norm": (torch.float32, MeZO, {"weight_decay": 0.1, "scale": "param_norm"}, False),
        "bfloat16-forward-stochastic": (torch.bfloat16, MeZO, {}, True),
        "bfloat16-in-place-nearest": (torch.bfloat16, MeZO, {"stochastic_rounding": False}, False),
        "float16-adam-k2": (torch.float16, MeZO, {"variant": "adam", "n_perturbations": 2}, False),
        "float64-momentum": (torch.float64, MeZO, {"variant": "momentum"}, False),
        "float32-fzoo": (torch.float32, FZOO, {"n_probes": 3}, False),
        "float32-hizoo": (torch.float32, HiZOO, {}, False),
        "float32-lozo": (torch.float32, LOZO, {"rank": 3, "interval": 2}, False),
        "float32-lozo-m": (torch.float32, LOZO, {"rank": 3, "interval": 2, "beta": 0.9}, False),
    }

    def model(dtype):
        # weights from integer arithmetic (torch's own randn differs between kernel sets); names
        # layers.<i>.* put each layer in its own group of scale='param_norm'
        torch.manual_seed(0)
        net = nn.Sequential()
        net.layers = nn.Sequential(nn.Linear(33, 70), nn.Linear(70, 5))
        with torch.no_grad():
            for i, p in enumerate(net.parameters()):
                k = torch.arange(p.numel(), dtype=torch.float64) * (2654435761 + i)
                p.copy_((torch.remainder(k, 1000.0) / 1000.0 - 0.5).view_as(p))
        return net.to(dtype)

    def exact_loss(net):
        # the weights each layer runs on (theta +- eps z, in place or in the forward), summed exactly
        seen = []
        def add(module, args):
            for p in module.parameters():
                seen.extend(((p.detach().double() - 0.25) ** 2).view(-1).tolist())
        hooks = [layer.register_forward_pre_hook(add) for layer in net.layers]
        net(torch.zeros(1, 33, dtype=next(net.parameters()).dtype))
        for hook in hooks:
            hook.remove()
        return math.fsum(seen)

    def digest(net):
        h = hashlib.sha1()
        for p in net.parameters():
            h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    out = {"capability": torch.backends.cpu.get_cpu_capability()}
    if sys.argv[1] == "steps":
        for name, (dtype, estimator, settings, forward) in CONFIGS.items():
            net = model(dtype)
            opt = estimator(net.named_parameters(), lr=1e-3, eps=1e-2, seed=5, **settings)
            if forward:
                opt.perturb_in_forward(net)
            for _ in range(4):
                opt.step(lambda: exact_loss(net))
            out[name] = digest(net)
    elif sys.argv[1] == "record":  # a real forward: its losses are this kernel set's
        net, x = model(torch.float32), torch.linspace(-1, 1, 8 * 33).view(8, 33)
        opt = MeZO(net.named_parameters(), lr=1e-2, eps=1e-3, seed=9)
        for _ in range(5):
            opt.step(lambda: nn.functional.gelu(net(x)).pow(2).mean())
        out["records"] = [r.to_dict() for r in opt.trajectory]
        out["state"] = opt.state_dict()["mezo"]
        out["weights"] = digest(net)
    else:  # replay the records given on stdin
        given = json.load(sys.stdin)
        net = model(torch.float32)
        opt = MeZO(net.named_parameters(), lr=1e-2, eps=1e-3, seed=9)
        replay(opt, [StepRecord.from_dict(r) for r in given["records"]], state=given["state"])
        out["weights"] = digest(net)
    print(json.dumps(out))
    """
)


def _best_capability() -> str:
    """The vector kernel set torch picks on this CPU when ATEN_CPU_CAPABILITY does not choose one
    (CI also runs this file under ATEN_CPU_CAPABILITY=default)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().lower()


BEST = _best_capability()
NO_AVX2 = pytest.mark.skipif(not BEST.startswith("avx"), reason=f"a CPU without AVX2 ({BEST})")


def _capabilities() -> list[str]:
    """The kernel sets this CPU can run: scalar code, and the vector ones torch finds it has."""
    return ["default", "avx2"] + (["avx512"] if BEST.startswith("avx512") else [])


def run(capability: str, mode: str, stdin: str | None = None) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out.pop("capability").lower() == capability  # the kernel set asked for is the one that ran
    return out


@NO_AVX2
def test_steps_give_the_same_weights_under_every_cpu_kernel_set():
    runs = {capability: run(capability, "steps") for capability in _capabilities()}
    first = next(iter(runs.values()))
    assert len(first) == 10
    for capability, digests in runs.items():
        assert digests == first, capability


@NO_AVX2
def test_a_seed_log_recorded_under_one_kernel_set_replays_bit_for_bit_under_another():
    recorded = run("avx2", "record")
    for capability in ("default", "avx2"):
        assert run(capability, "replay", json.dumps(recorded)) == {"weights": recorded["weights"]}
