"""The demo's verdict, checked under every CPU kernel set: the test gain of the dev-selected MeZO trial
over zero-shot, the mean over the demo's data seeds, must be at least ``--min-gain`` points.

Runs the `demo` space's trials in this process (no Ray: the same recipe the Train workers run), once per
``ATEN_CPU_CAPABILITY`` (a subprocess each, as torch fixes the kernel set when it loads), and selects
per data seed as the report does: the MeZO trial with the highest best dev accuracy.

    python benchmarks/demo_verdict.py                       # default and this CPU's best kernel set
    python benchmarks/demo_verdict.py --capabilities default avx2 avx512 --json

About 2.5 minutes per kernel set on 2 cores. Exits 1 when a kernel set misses the gain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from machine import describe


def verdict(space_name: str = "demo") -> dict:
    """Runs the space's trials here; returns per data seed the zero-shot and selected MeZO test scores."""
    import torch

    from mezo_ray.spaces import expand, load_space
    from mezo_ray.train import LocalSession, parse_trial_config, run_trial

    torch.set_num_threads(1)  # as each demo trial runs: one CPU per worker
    per_seed: dict[int, dict[str, list]] = {}
    for cfg in expand(load_space(space_name)):
        cfg = parse_trial_config({**cfg.to_flat(), "num_workers": 0})
        with tempfile.TemporaryDirectory() as folder:
            out = run_trial(cfg, LocalSession(folder))
        per_seed.setdefault(cfg.data.seed, {}).setdefault(cfg.method.name, []).append(
            (out["best_dev_acc"], out["test_acc"], getattr(cfg.method, "lr", None))
        )
    seeds = {}
    for seed, runs in sorted(per_seed.items()):
        ((_, zero_shot_test, _),) = runs["zero_shot"]
        _, best_test, best_lr = max(runs["mezo"], key=lambda r: r[0])  # the first of equals
        seeds[seed] = {"zero_shot": zero_shot_test, "mezo": best_test, "mezo_lr": best_lr}
    gain = 100 * statistics.mean(s["mezo"] - s["zero_shot"] for s in seeds.values())
    return {"machine": describe(), "seeds": seeds, "gain_points": round(gain, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--capabilities", nargs="+", default=None, help="default: default and this CPU's best"
    )
    parser.add_argument("--min-gain", type=float, default=5.0, help="test points MeZO must gain on average")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a subprocess's own run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(verdict()))
        return 0
    import torch

    capabilities = args.capabilities or sorted({"default", torch.backends.cpu.get_cpu_capability().lower()})
    results = {}
    for capability in capabilities:
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        run = subprocess.run(
            [sys.executable, __file__, "--one"], env=env, capture_output=True, text=True, check=True
        )
        results[capability] = json.loads(run.stdout.strip().splitlines()[-1])
        ran = results[capability]["machine"]["cpu_capability"].lower()
        if ran != capability:
            raise SystemExit(f"asked for ATEN_CPU_CAPABILITY={capability}, torch ran {ran}")
    missed = [c for c, r in results.items() if r["gain_points"] < args.min_gain]
    if args.json:
        print(json.dumps({"min_gain": args.min_gain, "runs": results, "missed": missed}))
    else:
        print(f"{results[capabilities[0]]['machine']['cpu']}: demo space, test accuracy x100")
        for capability, r in results.items():
            per_seed = "; ".join(
                f"seed {seed}: zero-shot {100 * s['zero_shot']:.1f}, "
                f"MeZO {100 * s['mezo']:.1f} (lr {s['mezo_lr']:g})"
                for seed, s in r["seeds"].items()
            )
            print(f"{capability:>8}: gain {r['gain_points']:+.1f} points ({per_seed})")
        print(
            "verdict:",
            "holds" if not missed else f"MISSED under {', '.join(missed)}",
            f"(>= {args.min_gain:g})",
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
