"""Speed and memory of one MeZO step, as ratios against baselines measured in the same run.

    python benchmarks/zo_step.py                       # roberta-base, batch 16 x 128, fp32, CPU
    python benchmarks/zo_step.py --model-config opt-1.3b --device cuda --dtype float16 --json

Ratios (all from this run):
  step_over_two_forwards       MeZO step time / two inference forwards on the same batch
  speedup_vs_reference         the paper's step (4 sweeps, a fresh torch.normal per parameter per
                               sweep, out-of-place p.data = p.data + c*eps*z) / our step
  forward_over_in_place        a step perturbing in the forward (``perturb_in_forward``: the weights stay
                               put) / a step of in-place sweeps, on a copy of the model
  peak_mem_over_inference      peak memory of a MeZO step / of an inference forward
                               (GPU: max_memory_allocated; CPU: peak RSS of a fresh child process each)
  ft_adam_peak_over_mezo_peak  peak of a backprop + AdamW step / MeZO peak

Models are built from a config with random weights (no download): pass a known architecture name
or a directory holding a config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from machine import describe, header
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from mezo_ray.zo import DEFAULT_CHUNK_NUMEL, MeZO

# Published architectures, so real sizes can be benchmarked offline with random weights.
ARCHITECTURES: dict[str, dict] = {
    "roberta-base": dict(
        model_type="roberta",
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ),
    "roberta-large": dict(
        model_type="roberta",
        vocab_size=50265,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ),
    **{
        f"opt-{size}": dict(
            model_type="opt",
            vocab_size=50272,
            hidden_size=h,
            num_hidden_layers=n,
            num_attention_heads=a,
            ffn_dim=4 * h,
            max_position_embeddings=2048,
            word_embed_proj_dim=h,
            do_layer_norm_before=True,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
        )
        for size, h, n, a in [
            ("125m", 768, 12, 12),
            ("350m", 1024, 24, 16),
            ("1.3b", 2048, 24, 32),
            ("2.7b", 2560, 32, 32),
            ("6.7b", 4096, 32, 32),
            ("13b", 5120, 40, 40),
            ("30b", 7168, 48, 56),
            ("66b", 9216, 64, 72),
        ]
    },
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model(name: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    if name in ARCHITECTURES:
        kwargs = dict(ARCHITECTURES[name])
        config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    elif os.path.isfile(os.path.join(name, "config.json")):
        config = AutoConfig.from_pretrained(name)
    else:
        raise SystemExit(
            f"--model-config {name!r}: not a known architecture {sorted(ARCHITECTURES)} "
            "nor a directory with a config.json"
        )
    auto = AutoModelForMaskedLM if config.model_type in ("roberta", "bert") else AutoModelForCausalLM
    torch.manual_seed(0)
    model = auto.from_config(config, dtype=dtype).to(device)
    return model.eval()


def make_batch(model: torch.nn.Module, batch: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size - 1, (batch, seq), generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def reference_step(
    model: torch.nn.Module, closure: Callable[[], torch.Tensor], lr: float, eps: float
) -> None:
    """The paper's MeZO step (large_models/trainer.py zo_step + zo_update), kept as its baseline."""
    params = [p for p in model.parameters() if p.requires_grad]
    seed = int(torch.randint(0, 1_000_000_000, (1,)))

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    with torch.no_grad():
        perturb(1)
        loss_plus = closure()
        perturb(-2)
        loss_minus = closure()
        perturb(1)
        projected_grad = float((loss_plus - loss_minus) / (2 * eps))
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data - lr * (projected_grad * z)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(
    work: dict[str, Callable[[], None]], names: list[str], device: str, repeats: int
) -> dict[str, float]:
    """Median seconds of each workload, measured interleaved (a, b, c, a, b, c, ...) so that a slow
    stretch of the machine hits every workload alike and the ratios stay fair."""
    for name in names:
        work[name]()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            sync(device)
            start = time.perf_counter()
            work[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def forward_step(args: argparse.Namespace) -> Callable[[], None]:
    """A MeZO step perturbing in the forward, on a model of its own: its hooks would otherwise run in
    the forwards of the other workloads."""
    model = build_model(args.model_config, DTYPES[args.dtype], args.device)
    batch = make_batch(model, args.batch, args.seq, args.device)
    mezo = MeZO(model.named_parameters(), lr=1e-7, eps=1e-3, chunk_numel=args.chunk_numel)
    mezo.perturb_in_forward(model)
    return lambda: mezo.step(lambda: model(**batch).loss)


def workloads(
    args: argparse.Namespace, forward: bool = False
) -> tuple[torch.nn.Module, dict[str, Callable[[], None]]]:
    """The things we measure, each as a callable on one model and one batch (``forward``: and a second
    model for MeZO perturbing in the forward)."""
    model = build_model(args.model_config, DTYPES[args.dtype], args.device)
    batch = make_batch(model, args.batch, args.seq, args.device)

    def loss() -> torch.Tensor:
        return model(**batch).loss

    def two_forwards() -> None:
        with torch.no_grad():
            loss()
            loss()

    mezo = MeZO(model.named_parameters(), lr=1e-7, eps=1e-3, chunk_numel=args.chunk_numel)
    adam: list[torch.optim.Optimizer] = []

    def ft_adam() -> None:
        if not adam:
            adam.append(torch.optim.AdamW(model.parameters(), lr=1e-7))
        loss().backward()
        adam[0].step()
        adam[0].zero_grad(set_to_none=False)  # keep the gradients: their memory is part of FT's cost

    return model, {
        "inference": lambda: torch.no_grad()(loss)(),
        **({"mezo_forward": forward_step(args)} if forward else {}),
        "two_forwards": two_forwards,
        "mezo": lambda: mezo.step(loss),
        "reference": lambda: reference_step(model, loss, 1e-7, 1e-3),
        "sweep": lambda: mezo.perturb(0, 0.0),  # one pass over the weights: draw z, add it
        # the bandwidth floor of a sweep: read and write every weight once, nothing drawn
        "bandwidth_pass": torch.no_grad()(lambda: torch._foreach_mul_(list(model.parameters()), 1.0)),
        "ft_adam": ft_adam,
    }


def peak_memory(args: argparse.Namespace, kind: str) -> int:
    """Peak bytes of one workload: GPU allocator peak, or the peak RSS of a fresh child process."""
    if args.device.startswith("cuda"):
        work = {"mezo_forward": forward_step(args)} if kind == "mezo_forward" else workloads(args)[1]
        work[kind]()  # first call allocates lazily created state (Adam moments)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        work[kind]()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    cmd = [sys.executable, __file__, "--child", kind, *child_args(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak_bytes"])


def child_args(args: argparse.Namespace) -> list[str]:
    return [
        "--model-config",
        args.model_config,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--chunk-numel",
        str(args.chunk_numel),
    ]


def run_child(args: argparse.Namespace) -> None:
    work = {"mezo_forward": forward_step(args)} if args.child == "mezo_forward" else workloads(args)[1]
    for _ in range(2):
        work[args.child]()
    print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-config", default="roberta-base")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-numel", type=int, default=DEFAULT_CHUNK_NUMEL)
    parser.add_argument("--skip-memory", action="store_true", help="timings only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    if args.device == "cpu" and args.dtype == "bfloat16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print(
            "note: this CPU has no native bfloat16 (no AVX-512 BF16 / AMX): torch emulates bfloat16 matmuls "
            "at several times float32's cost, so the forwards dominate and the default size takes tens of "
            "minutes. Measure a smaller batch (--batch 4 --seq 64), or the sweeps alone with "
            "benchmarks/precision.py --skip-learning.",
            file=sys.stderr,
        )

    model, work = workloads(args, forward=True)
    numel = sum(p.numel() for p in model.parameters())
    names = ["two_forwards", "mezo", "mezo_forward", "reference", "sweep", "bandwidth_pass"]
    t = timed(work, names, args.device, args.repeats)
    t_two, t_mezo, t_ref, t_sweep = t["two_forwards"], t["mezo"], t["reference"], t["sweep"]
    del model, work
    result = {
        "model_config": args.model_config,
        "params_millions": round(numel / 1e6, 1),
        "batch": args.batch,
        "seq": args.seq,
        "device": args.device,
        **describe(),
        "dtype": args.dtype,
        "two_forwards_s": round(t_two, 4),
        "mezo_step_s": round(t_mezo, 4),
        "mezo_forward_step_s": round(t["mezo_forward"], 4),
        "reference_step_s": round(t_ref, 4),
        "one_sweep_s": round(t_sweep, 4),
        "bandwidth_pass_s": round(t["bandwidth_pass"], 4),
        "sweep_over_bandwidth": round(t_sweep / t["bandwidth_pass"], 2),
        "step_over_two_forwards": round(t_mezo / t_two, 3),
        "speedup_vs_reference": round(t_ref / t_mezo, 3),
        "forward_over_in_place": round(t["mezo_forward"] / t_mezo, 3),
    }
    if not args.skip_memory:
        peaks = {kind: peak_memory(args, kind) for kind in ("inference", "mezo", "mezo_forward", "ft_adam")}
        result.update({f"{kind}_peak_mib": round(v / 2**20) for kind, v in peaks.items()})
        result["peak_mem_over_inference"] = round(peaks["mezo"] / peaks["inference"], 3)
        result["forward_peak_over_in_place_peak"] = round(peaks["mezo_forward"] / peaks["mezo"], 3)
        result["ft_adam_peak_over_mezo_peak"] = round(peaks["ft_adam"] / peaks["mezo"], 2)
    if args.json:
        print(json.dumps(result))
        return
    print(header())
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
