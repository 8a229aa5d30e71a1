"""Data-parallel and FSDP2 MeZO: only scalars cross the wire.

Every worker evaluates the loss on its shard of the batch; the (sum, count) pairs are all-reduced,
so every rank sees the same loss, computes the same projected gradient and applies the same update
to its weights (whole, or its FSDP shards: z is sharding-invariant, see ``mezo_ray.zo.noise``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sums(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum each value over the workers (float64, so sums of many losses keep their digits)."""
    if not is_distributed():
        return [float(v) for v in values]
    # gloo reduces CPU tensors; nccl needs them on the GPU
    where = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=where)
    dist.all_reduce(t)
    return t.tolist()


def noise_fingerprint(device: torch.device) -> int:
    """A 48-bit hash of 4099 elements of z drawn on ``device`` (a float64 all-reduce carries it
    exactly): equal on every worker that draws the z this one draws."""
    from mezo_ray.zo.noise import full_noise

    z = full_noise(torch.zeros(4099, device=device), "mezo_ray.fingerprint", seed=12345).cpu()
    return int.from_bytes(hashlib.blake2b(z.numpy().tobytes(), digest_size=6).digest(), "little")


def check_noise_agrees(device: torch.device) -> None:
    """Raise at the start of a data-parallel or FSDP run whose workers would draw different z (another
    mezo_ray, numba or Triton on some node): each worker would perturb with its own z while all apply
    one projected gradient, so the estimate would be wrong and the replicas would drift apart."""
    if not is_distributed():
        return
    mine = noise_fingerprint(device)
    where = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([mine, -mine], dtype=torch.float64, device=where)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    high, low = int(t[0]), -int(t[1])
    if high != low:
        raise RuntimeError(
            f"the workers draw different noise: fingerprints range from {low:#x} to {high:#x} (rank "
            f"{dist.get_rank()}: {mine:#x}); install the same mezo_ray, numba and Triton on every node"
        )


def rank_shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Every ``world``-th item from ``rank``: shards differ in size by at most one."""
    return list(items[rank::world])


def shard_model(loaded: Any, device: torch.device) -> None:
    """FSDP2-shard a loaded model across the workers: one unit per transformer block, and a root unit
    for what the blocks leave (embeddings, final norm, LM head, tied or not).

    The heads call the backbone and the LM head directly (to project only at the mask / option
    positions), so the root is a small module whose two entry points are registered as FSDP forward
    methods. ``reshard_after_forward=True`` on the root too: FSDP's default keeps the root's
    parameters gathered after a forward, and MeZO's in-place perturbation of the shards would then
    be ignored by the next forward.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))  # explicit: gloo needs a CPU mesh
    hf_model = loaded.hf_model
    block_classes = set(getattr(hf_model, "_no_split_modules", None) or ())
    tied = [m for m in (hf_model.get_input_embeddings(), hf_model.get_output_embeddings()) if m is not None]
    blocks = [  # a unit must own its parameters: leave modules holding (tied) embeddings to the root
        m
        for m in hf_model.modules()
        if type(m).__name__ in block_classes and not any(t is m or _contains(m, t) for t in tied)
    ]
    if not blocks:
        raise ValueError(
            f"FSDP needs the model's transformer blocks; {type(hf_model).__name__} declares none "
            f"(_no_split_modules={sorted(block_classes)})"
        )
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    root = _Root(loaded)
    fully_shard(root, mesh=mesh, reshard_after_forward=True)
    for method in ("hidden_states", "project", "generate"):
        register_fsdp_forward_method(root, method)
    loaded.hidden_states = root.hidden_states  # the heads now go through FSDP's gather / reshard
    loaded.generate = root.generate
    loaded.fsdp_root = root


def _contains(module: torch.nn.Module, child: torch.nn.Module) -> bool:
    return any(c is child for c in module.modules())


class _Root(torch.nn.Module):
    """FSDP root unit around the loaded model: entry points for the heads."""

    def __init__(self, loaded: Any) -> None:
        super().__init__()
        self.model = loaded.model
        self._hidden_states = loaded.hidden_states
        self._generate = loaded.generate
        self._lm_head = loaded.hf_model.lm_head

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._hidden_states(input_ids, attention_mask)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._lm_head(hidden)

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # every worker keeps stepping until all have finished: the gathers inside must pair up
        return self._generate(*args, synced=True, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hidden_states(input_ids, attention_mask)
