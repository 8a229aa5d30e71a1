"""The causal prompt head's forward, one row per candidate against one shared context per example, as
a ratio measured in the same run (interleaved repetitions, medians).

    make bench-data && python benchmarks/causal_scoring.py      # SmolLM2-135M, the vader snippets, b16
    python benchmarks/causal_scoring.py --model tiny-causal --task synthetic-sst2-causal   # seconds
    python benchmarks/causal_scoring.py --json

Workloads, on the same batch of training examples (scores of every candidate, no_grad):
  per_candidate   the paper's scoring (large_models/utils.py forward_wrap_with_option_len): each example
                  expands to one row per candidate, context + option, and the option's tokens are read
                  off their own row
  shared_context  ``CausalLMHead.option_scores`` where the candidates are single tokens after one context
                  (SST-2's " terrible" / " great"): the context runs once, both candidates are read off
                  its last position
Ratio ``shared_over_per_candidate`` (< 1: sharing wins; about 1 / C for C candidates) and
``max_abs_diff`` of the scores (a check: the two are the same numbers up to float rounding).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from bench_data import default_root
from machine import describe, header
from zo_step import timed

from mezo_ray.models import ModelSpec, load_model, make_head
from mezo_ray.models.tiny import ensure_tiny_models
from mezo_ray.tasks import load_splits
from mezo_ray.train.config import parse_trial_config


def setup(model: str, task: str, batch: int) -> tuple[Any, list]:
    """The causal head on ``model`` and a batch of ``task``'s training examples."""
    cfg = parse_trial_config({"model": model, "task": task, "method": "zero_shot", "num_dev": batch})
    path = ensure_tiny_models().causal if model == "tiny-causal" else model
    head = make_head(cfg.task.resolved, load_model(ModelSpec(name_or_path=path, family="causal")))
    return head, load_splits(cfg.task.resolved, cfg.data.spec).train[:batch]


def per_candidate(head: Any, examples: list) -> torch.Tensor:
    """Every candidate's score from a row of its own (what the head does for multi-token candidates)."""
    rows, _ = head._rows(examples, None, gold_only=False)
    token_logp, valid = head._token_logprobs(rows)
    return (token_logp * valid).sum(1) / valid.sum(1)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    head, examples = setup(args.model, args.task, args.batch)
    work = {
        "per_candidate": lambda: per_candidate(head, examples),
        "shared_context": lambda: head.option_scores(examples),
    }
    with torch.no_grad():
        seconds = timed(work, list(work), "cpu", args.repeats)
        diff = (per_candidate(head, examples) - torch.cat(head.option_scores(examples))).abs().max()
    return {
        "model": args.model,
        "task": args.task,
        "batch": args.batch,
        "machine": describe(),
        "seconds": seconds,
        "shared_over_per_candidate": seconds["shared_context"] / seconds["per_candidate"],
        "max_abs_diff": float(diff),
    }


def main() -> None:
    root = default_root()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(root / "models" / "SmolLM2-135M"))
    parser.add_argument("--task", default=str(root / "data" / "vader-snippets" / "task-causal.yaml"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(header())
    print(f"# {args.model}, {args.task}, batch {args.batch}")
    for name, s in result["seconds"].items():
        print(f"{name:16s} {s:8.3f} s")
    print(f"shared_over_per_candidate {result['shared_over_per_candidate']:.3f}")
    print(f"max_abs_diff {result['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
