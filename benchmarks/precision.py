"""What low precision does to MeZO's updates and sweeps, on an OPT-sized model with random weights.

    python benchmarks/precision.py                  # OPT-125m config, CPU (about 10 minutes)
    python benchmarks/precision.py --json
    python benchmarks/precision.py --device cuda --model-config opt-1.3b --skip-learning   # a GPU

1. Updates: a real projected gradient g (one MeZO step of the float32 model on a random batch), the
   paper's OPT lr (1e-7): for every weight the update d = -lr g z in float32, and what a bfloat16 /
   float16 copy of the weight keeps of it under round to nearest (the paper's fp16 arithmetic) and
   under stochastic rounding (``zo.noise.stochastic_round_``, what MeZO now does): the fraction of
   elements whose update rounds away (the weight does not change) and the fraction of the update kept,
   sum(sign(d) * change) / sum(|d|) (1: all of it, in expectation).
2. Restores: ``--drift-steps`` MeZO steps at lr 0 over the first ``--drift-layers`` decoder layers,
   per dtype and per placement of the perturbation: how far the weights walked, in ulps of their dtype
   at max(|theta|, eps) (median, 99th percentile, max, fraction moved). ``in_place``: the paper's
   sweeps (+eps z, -2 eps z, +eps z); ``forward``: perturbed copies inside the forward
   (``MeZO.perturb_in_forward``), where the weights cannot move.
3. Cost: the sweeps of one bfloat16 MeZO step (no forward) with stochastic rounding over without,
   interleaved medians in one run, and over the memory-bandwidth floor measured in the same run: a
   sweep reads and writes every weight once, as ``torch._foreach_mul_(weights, 1.0)`` does, so
   ``over_bandwidth`` = the step's sweeps / three such passes (1.0: the sweeps run at copy speed).
   On CUDA the sweeps are the Triton kernels, and the passes' bytes / time give the achieved GB/s.
   float32 weights take no new work.
4. Learning: MeZO on the tiny MLM's synthetic task in float32 and in bfloat16 with and without
   stochastic rounding, and in bfloat16 perturbed in the forward, same seeds, at each ``--task-lrs``:
   the best dev accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from machine import describe, header
from zo_step import build_model, make_batch

from mezo_ray.zo import MeZO
from mezo_ray.zo.noise import full_noise, stochastic_round_

LOW = {"bfloat16": torch.bfloat16, "float16": torch.float16}
PAPER_LR = 1e-7


def updates(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What bfloat16 / float16 weights keep of the float32 update -lr g z, per rounding."""
    opt = MeZO(model.named_parameters(), lr=0.0, eps=1e-3)
    opt.step(lambda: model(**batch).loss)
    (g,), seed = opt.last_projected_grads, opt.trajectory[-1].seeds[0]
    out: dict[str, Any] = {"projected_grad": g, "lr": PAPER_LR}
    gen = torch.Generator().manual_seed(0)
    for dtype_name, dtype in LOW.items():
        for rounding in ("nearest", "stochastic"):
            unchanged = kept = size = 0.0
            for name, p in model.named_parameters():
                delta = -PAPER_LR * g * full_noise(p, name, seed).view(-1)
                theta = p.detach().view(-1).to(dtype)
                target = theta.float() + delta
                if rounding == "nearest":
                    new = target.to(dtype)
                else:
                    new = stochastic_round_(
                        torch.empty_like(theta),
                        target,
                        torch.rand(target.shape, generator=gen).to(target.device),
                    )
                change = new.double() - theta.double()
                unchanged += float((change == 0).sum())
                kept += float((change * delta.double().sign()).sum())
                size += float(delta.double().abs().sum())
            n = sum(p.numel() for p in model.parameters())
            out[f"{dtype_name}/{rounding}"] = {"unchanged": unchanged / n, "kept": kept / size}
    return out


class _Holder(torch.nn.Module):
    """The drift's weights as a model whose forward reads them all (so the forward can perturb them)."""

    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        super().__init__()
        for i, p in enumerate(params.values()):
            self.register_parameter(f"w{i}", p)  # its own: read inside its forward

    def forward(self) -> torch.Tensor:
        return sum(w.float().mean() for w in self.parameters()) * 0.0  # read, not learnt from: lr is 0


def drift(model: torch.nn.Module, layers: int, steps: int) -> dict[str, Any]:
    """ulps the weights of the first decoder layers walk in ``steps`` lr-0 steps, per dtype, with the
    perturbation applied in place and in the forward."""
    out = {}
    for dtype_name, dtype in {"float32": torch.float32, **LOW}.items():
        for perturbation in ("in_place", "forward"):
            params = {
                n: torch.nn.Parameter(p.detach().to(dtype).clone())
                for n, p in model.named_parameters()
                if any(f".layers.{i}." in n for i in range(layers))
            }
            start = {n: p.detach().clone() for n, p in params.items()}
            holder = _Holder(params)
            opt = MeZO(list(params.items()), lr=0.0, eps=1e-3)
            if perturbation == "forward":
                opt.perturb_in_forward(holder)
            for _ in range(steps):
                opt.step(lambda holder=holder: holder())
            walked = []  # in ulps of max(|theta|, eps), the magnitude the sweeps round at (0 has no ulp)
            for n, p in params.items():
                s = start[n].view(-1).double()
                ulp = torch.finfo(dtype).eps * torch.clamp(s.abs(), min=1e-3)
                walked.append((p.detach().view(-1).double() - s).abs() / ulp)
            ulps = torch.cat(walked)
            out[f"{dtype_name}/{perturbation}"] = {
                "median": float(ulps.median()),
                "p99": float(torch.quantile(ulps[torch.randperm(ulps.numel())[:1_000_000]], 0.99)),
                "max": float(ulps.max()),
                "moved": float((ulps > 0).double().mean()),
                "elements": ulps.numel(),
            }
    return out


def _seconds(fn: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def cost(model: torch.nn.Module, repeats: int) -> dict[str, float]:
    """Seconds of a bfloat16 step's sweeps (no forward) with and without stochastic rounding, and of
    one read-and-write pass over the same weights (the bandwidth floor of a sweep)."""
    device = next(model.parameters()).device
    copies = {
        sr: [
            (n, torch.nn.Parameter(p.detach().to(torch.bfloat16).clone()))
            for n, p in model.named_parameters()
        ]
        for sr in (False, True)
    }
    opts = {sr: MeZO(params, lr=PAPER_LR, eps=1e-3, stochastic_rounding=sr) for sr, params in copies.items()}
    weights = [p.detach() for _, p in copies[False]]
    times: dict[Any, list[float]] = {False: [], True: [], "pass": []}
    for _ in range(repeats + 1):  # the first round warms up (Triton compiles its kernels)
        for sr, opt in opts.items():
            losses = iter((1.0, 0.0))  # l+ and l-: a nonzero g, so the update does work
            times[sr].append(_seconds(lambda opt=opt, losses=losses: opt.step(lambda: next(losses)), device))
        times["pass"].append(_seconds(lambda: torch._foreach_mul_(weights, 1.0), device))
    nearest, stochastic, one_pass = (statistics.median(times[k][1:]) for k in (False, True, "pass"))
    moved = 2 * sum(w.numel() * w.element_size() for w in weights)  # bytes read and written by a pass
    return {
        "device": str(device),
        "nearest_s": nearest,
        "stochastic_s": stochastic,
        "ratio": stochastic / nearest,
        "pass_s": one_pass,
        "pass_gb_per_s": moved / one_pass / 1e9,
        "over_bandwidth": stochastic / (3 * one_pass),
    }


def learning(lrs: list[float], steps: int) -> dict[str, Any]:
    from mezo_ray.train.config import parse_trial_config
    from mezo_ray.train.recipe import run_trial
    from mezo_ray.train.session import LocalSession

    base = {
        "model": "tiny-mlm",
        "task": "synthetic-sst2",
        "k": 64,
        "max_eval_examples": 256,
        "batch_size": 16,
        "method": "mezo",
        "max_steps": steps,
        "eval_steps": steps // 10,
        "num_workers": 0,
        "snapshot_every": None,
    }
    runs = {
        "float32": {},
        "bfloat16 stochastic": {"dtype": "bfloat16"},
        "bfloat16 nearest": {"dtype": "bfloat16", "stochastic_rounding": False},
        "bfloat16 stochastic, forward": {"dtype": "bfloat16", "perturbation": "forward"},
    }
    out: dict[str, Any] = {}
    for lr in lrs:
        for name, changes in runs.items():
            with tempfile.TemporaryDirectory() as directory:
                final = run_trial(parse_trial_config({**base, **changes, "lr": lr}), LocalSession(directory))
            out[f"{lr:g}/{name}"] = final["best_dev_acc"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-config", default="opt-125m")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--drift-layers", type=int, default=1)
    parser.add_argument("--drift-steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per rounding")
    parser.add_argument("--task-lrs", type=float, nargs="*", default=[1e-4, 1e-5])
    parser.add_argument("--task-steps", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="where the model's sweeps run (cuda: Triton)")
    parser.add_argument("--skip-learning", action="store_true", help="leave out part 4 (the tiny MLM)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model_config, torch.float32, args.device)
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():  # the trials' logs; figures go to stdout
        results = {
            "model": args.model_config,
            "threads": torch.get_num_threads(),
            "updates": updates(model, make_batch(model, 1, args.seq, args.device)),
            "drift": drift(model, args.drift_layers, args.drift_steps),
            "cost": cost(model, args.repeats),
        }
    if not args.skip_learning:
        with contextlib.redirect_stdout(sys.stderr):
            results["learning"] = learning(args.task_lrs, args.task_steps)
    if args.json:
        results = {"machine": describe(), **results}
        print(json.dumps(results))
        return
    print(header())
    u = results["updates"]
    print(
        f"{args.model_config}, random weights; projected gradient {u['projected_grad']:.3g}, lr {PAPER_LR:g}"
    )
    print(f"{'weights / rounding':<24}{'update rounds away':>20}{'update kept':>13}")
    for key in (f"{d}/{r}" for d in LOW for r in ("nearest", "stochastic")):
        print(f"{key:<24}{u[key]['unchanged']:>20.1%}{u[key]['kept']:>13.1%}")
    print(
        f"\nlr-0 drift after {args.drift_steps} steps ({args.drift_layers} decoder layer(s)), "
        "ulps of the dtype at max(|theta|, eps)"
    )
    for name, d in results["drift"].items():
        print(
            f"  {name:<18} median {d['median']:.1f}  p99 {d['p99']:.1f}  max {d['max']:.1f}  "
            f"moved {d['moved']:.0%}"
        )
    c = results["cost"]
    print(
        f"\nbfloat16 step sweeps ({c['device']}): stochastic rounding {c['stochastic_s']:.4f} s, "
        f"nearest {c['nearest_s']:.4f} s (ratio {c['ratio']:.2f}); one read-and-write pass "
        f"{c['pass_s']:.4f} s ({c['pass_gb_per_s']:.0f} GB/s): the 3 sweeps take "
        f"{c['over_bandwidth']:.2f}x 3 passes"
    )
    if "learning" in results:
        print(f"\nTiny MLM, {args.task_steps} steps, best dev accuracy")
        for key, acc in results["learning"].items():
            print(f"  lr {key:<30} {acc:.3f}")


if __name__ == "__main__":
    main()
