"""N population members in one batched forward against N sequential perturbed forwards, as ratios
against baselines measured in the same run (interleaved repetitions, medians).

    python benchmarks/population_forward.py                 # roberta-base, N = 4 8 16, b16 x 128 and b4 x 64
    python benchmarks/population_forward.py --quick         # tiny model and sizes: a smoke run (seconds)
    python benchmarks/population_forward.py --device cuda --json

Workloads, for each batch shape (b x seq) and N (members, antithetic pairs; ``mezo_ray.zo.population``):
  batched      one forward of N*b rows inside ``population_forward``: every untied Linear computes
               x W^T + b once for all rows plus each member's +-eps ((x A_j) B_j^T / sqrt(r) + z_j)
  sequential   the baseline: for each member, its perturbation written into the weights in place
               (W += +-eps B_j A_j^T / sqrt(r), b += +-eps z_j: one addmm per matrix), a forward of
               the b rows, the perturbation subtracted again: N forwards and 2N sweeps, as N MeZO-style
               in-place probes
  inference    one forward of the N*b rows of the unperturbed model, no hooks: the batched one's floor
Ratios: ``batched_over_sequential`` (< 1: batching wins) and ``batched_over_inference`` (the cost
of the members' low-rank corrections). ``max_abs_diff``: batched against sequential outputs (a check).

The model is RobertaForMaskedLM from ``RobertaConfig()`` defaults (roberta-base shapes), random
weights, eval mode, no_grad. Its forward is what the MLM prompt head runs: the encoder on every token,
then ``lm_head`` on one position per row (the head projects only the mask, never 50K logits per token).
The factors are drawn once before timing (a step draws them once; ``draw_s`` reports that cost).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from machine import describe, header
from transformers import RobertaConfig, RobertaForMaskedLM
from zo_step import timed

from mezo_ray.zo.population import (
    LayerFactors,
    draw_factors,
    population_forward,
    population_linears,
    repeat_batch,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY = dict(
    vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
)


def build(quick: bool, dtype: torch.dtype, device: str) -> torch.nn.Module:
    config = RobertaConfig(**TINY) if quick else RobertaConfig()
    torch.manual_seed(0)
    return RobertaForMaskedLM(config).to(device=device, dtype=dtype).eval()


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MLM head's forward: hidden states of every token, the vocabulary projection of the first."""
    hidden = model.roberta(**batch).last_hidden_state
    return model.lm_head(hidden[:, 0])


def make_batch(model: torch.nn.Module, b: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size - 1, (b, seq), generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def draw(model: torch.nn.Module, members: int, rank: int) -> dict[str, LayerFactors]:
    seeds = tuple(range(members // 2))
    return {
        n: draw_factors(f"{n}.weight", m.weight.shape, rank, seeds, f"{n}.bias").to(m.weight)
        for n, m in population_linears(model).items()
    }


def workloads(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], members: int, eps: float, factors: dict
) -> dict[str, Callable[[], Any]]:
    repeated = repeat_batch(batch, members)
    modules = dict(model.named_modules())

    @torch.no_grad()
    def batched() -> torch.Tensor:
        with population_forward(model, members, eps, factors):
            return forward(model, repeated)

    @torch.no_grad()
    def shift(j: int, alpha: float) -> None:
        for n, f in factors.items():
            m = modules[n]
            m.weight.addmm_(f.b[j], f.a[j].T, alpha=alpha / math.sqrt(f.a.shape[2]))
            m.bias.add_(f.z[j], alpha=alpha)

    @torch.no_grad()
    def sequential() -> torch.Tensor:
        outs = []
        for i in range(members):
            alpha = eps if i % 2 == 0 else -eps
            shift(i // 2, alpha)
            try:
                outs.append(forward(model, batch))
            finally:
                shift(i // 2, -alpha)
        return torch.cat(outs)

    return {
        "batched": batched,
        "sequential": sequential,
        "inference": torch.no_grad()(lambda: forward(model, repeated)),
    }


def measure(args: argparse.Namespace, model: torch.nn.Module, b: int, seq: int, members: int) -> dict:
    batch = make_batch(model, b, seq, args.device)
    start = time.perf_counter()
    factors = draw(model, members, args.rank)
    draw_s = time.perf_counter() - start
    work = workloads(model, batch, members, args.eps, factors)
    diff = float((work["batched"]() - work["sequential"]()).abs().max())
    names = ["batched", "sequential", "inference"]
    t = timed(work, names, args.device, args.repeats)
    return {
        "batch": b,
        "seq": seq,
        "members": members,
        "rows": members * b,
        "draw_s": round(draw_s, 4),
        **{f"{k}_s": round(v, 4) for k, v in t.items()},
        "batched_over_sequential": round(t["batched"] / t["sequential"], 3),
        "batched_over_inference": round(t["batched"] / t["inference"], 3),
        "max_abs_diff": float(f"{diff:.3g}"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, nargs="+", default=None, help="N (even); default 4 8 16")
    parser.add_argument(
        "--shapes", nargs="+", default=None, help="b x seq, e.g. 16x128 (default 16x128 4x64)"
    )
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, N 2 4, b2 x 16: a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    members = args.members or ([2, 4] if args.quick else [4, 8, 16])
    shapes = args.shapes or (["2x16"] if args.quick else ["16x128", "4x64"])
    if any(n < 2 or n % 2 for n in members):
        raise SystemExit(f"--members {members}: each N must be even (antithetic pairs)")
    if args.quick:
        args.repeats = min(args.repeats, 2)
    model = build(args.quick, DTYPES[args.dtype], args.device)
    draw(model, 2, args.rank)  # compile the noise kernels before draw_s is measured
    rows = []
    for shape in shapes:
        b, seq = (int(v) for v in shape.lower().split("x"))
        rows += [measure(args, model, b, seq, n) for n in members]
    result = {
        "model_config": "tiny-roberta" if args.quick else "roberta-base (RobertaConfig())",
        "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "wrapped_linears": len(population_linears(model)),
        "rank": args.rank,
        "device": args.device,
        "dtype": args.dtype,
        "repeats": args.repeats,
        **describe(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(header())
    print(", ".join(f"{k} {v}" for k, v in result.items() if k != "rows" and k not in describe()))
    cols = list(rows[0])
    print("  ".join(f"{c:>{max(len(c), 8)}}" for c in cols))
    for row in rows:
        print("  ".join(f"{row[c]!s:>{max(len(c), 8)}}" for c in cols))


if __name__ == "__main__":
    main()
