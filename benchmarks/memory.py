"""The paper's Table 22 at the sizes this machine holds: peak memory per method and OPT size.

    python benchmarks/memory.py                                  # OPT 125m .. 2.7b, bfloat16, CPU
    python benchmarks/memory.py --sizes 125m 350m --json

Each (size, method) runs in a fresh child process on an OPT config with random weights (no download),
batch 1, ``--seq`` tokens (MultiRC-like, ~400; ICL: ``--icl-seq``, the 2048-token context its
demonstrations fill), and reports that process's peak RSS, and the same less the RSS of the
interpreter with torch and transformers imported (``excess``). Methods (the paper's, with our modes):

    zero-shot   one forward, no grad
    icl         one forward at --icl-seq tokens, no grad
    mezo        one MeZO step (two forwards, the sweeps) over all weights; mezo-prefix, mezo-lora likewise
                over the prefix / LoRA parameters (``models.modes.apply_mode``)
    ft-prefix   forward, backward and an AdamW step over the prefix
    ft          forward, backward and an AdamW step over all weights

Sizes are tried smallest first; a (size, method) whose memory, extrapolated from the sizes measured so
far (least squares, linear in the parameter count, per method), would pass ``--max-gib`` is not run
but printed as extrapolated (marked ``~``), as are the larger paper sizes (6.7b, 13b, 30b, 66b). On a GPU
(``--device cuda``) the figure is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from typing import Any

import torch
from machine import describe, header
from zo_step import ARCHITECTURES, DTYPES, build_model, make_batch

from mezo_ray.report.paper_numbers import PAPER_MEMORY

METHODS = ("zero-shot", "icl", "mezo", "mezo-prefix", "mezo-lora", "ft-prefix", "ft")
#: The paper's Table 22 sizes beyond those measured: extrapolated, to set beside its numbers.
PAPER_SIZES = [model.removeprefix("opt-") for model in PAPER_MEMORY]
GIB = 2**30


def params_of(size: str) -> int:
    """Parameter count of an OPT config, without building it."""
    a = ARCHITECTURES[f"opt-{size}"]
    h, n, v = a["hidden_size"], a["num_hidden_layers"], a["vocab_size"]
    per_layer = 4 * h * h + 4 * h + 2 * h * a["ffn_dim"] + a["ffn_dim"] + h + 4 * h
    return v * h + (a["max_position_embeddings"] + 2) * h + n * per_layer + 2 * h


def workload(args: argparse.Namespace) -> None:
    """In the child: build, run ``args.child`` once, print the peak."""
    from mezo_ray.models.loading import ModelSpec
    from mezo_ray.models.modes import apply_mode
    from mezo_ray.zo import MeZO

    size, method = args.child
    device = args.device
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = build_model(f"opt-{size}", DTYPES[args.dtype], device)
    mode = {"mezo-prefix": "prefix", "ft-prefix": "prefix", "mezo-lora": "lora"}.get(method, "full")
    spec = ModelSpec(f"opt-{size}", "causal", dtype=args.dtype, mode=mode, arithmetic="model", device=device)
    model = apply_mode(model, spec)
    batch = make_batch(model, 1, args.icl_seq if method == "icl" else args.seq, device)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if method in ("zero-shot", "icl"):
        with torch.no_grad():
            model(**batch)
    elif method.startswith("mezo"):
        for _, p in model.named_parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            MeZO(trainable, lr=1e-7, eps=1e-3).step(lambda: model(**batch).loss)
    else:
        optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-5)
        model(**batch).loss.backward()
        optimizer.step()
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(json.dumps({"peak": peak, "excess": peak - (0 if device == "cuda" else baseline)}))


def measure(args: argparse.Namespace, size: str, method: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", size, method, "--dtype", args.dtype, "--device", args.device]
    cmd += ["--seq", str(args.seq), "--icl-seq", str(args.icl_seq)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else str(done.returncode)
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares a + b * params through (params, bytes)."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for size in [*args.sizes, *(s for s in PAPER_SIZES if s not in args.sizes)]:
        rows[size] = {}
        for method in METHODS:
            measured = [
                (params_of(s), r[method]["peak"])
                for s, r in rows.items()
                if "peak" in r.get(method, {}) and not r[method].get("extrapolated")
            ]
            predicted = None
            if len(measured) >= 2:
                a, b = fit(measured)
                predicted = a + b * params_of(size)
            if size in args.sizes and (predicted is None or predicted <= args.max_gib * GIB):
                rows[size][method] = measure(args, size, method)
                print(f"{size:>5} {method:<12} {rows[size][method]}", file=sys.stderr, flush=True)
            elif predicted is not None:
                rows[size][method] = {"peak": predicted, "extrapolated": True}
    fits = {}
    for method in METHODS:
        measured = [
            (params_of(s), r[method]["peak"])
            for s, r in rows.items()
            if "peak" in r.get(method, {}) and not r[method].get("extrapolated")
        ]
        if len(measured) >= 2:
            a, b = fit(measured)
            fits[method] = {"intercept_gib": a / GIB, "bytes_per_param": b, "from": len(measured)}
    return {"dtype": args.dtype, "device": args.device, "seq": args.seq, "rows": rows, "fits": fits}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["125m", "350m", "1.3b", "2.7b"])
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq", type=int, default=400)
    parser.add_argument("--icl-seq", type=int, default=2048)
    parser.add_argument("--max-gib", type=float, default=20.0, help="do not run what would need more")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workload(args)
        return
    results = run(args)
    if args.json:
        results = {"machine": describe(), **results}
        print(json.dumps(results))
        return
    print(header())
    import dataclasses

    import pandas as pd

    from mezo_ray.report import render
    from mezo_ray.report.load import Report, memory_benchmark_cells

    cells = memory_benchmark_cells(results)  # the cells the report reads from --json's output
    print(render(dataclasses.replace(Report.empty(), memory_benchmark=cells)))
    fits = pd.DataFrame(results["fits"]).T
    print("Fits (GiB + bytes × parameters, least squares over the measured sizes):")
    print(fits.to_string(float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
