"""Checks of the cluster a search runs on, made before any trial starts: its address answers, a local
storage path is one every node sees, and every trial's workers fit on its nodes (a trial that can
never be placed would wait forever). Beside ``preflight``, which checks models and data."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Sequence

from mezo_ray.train.config import TrialConfig


def check_address(address: str | None) -> None:
    """Refuse an address nobody listens on at once (``ray.init`` would retry for a minute first)."""
    if not address or address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ValueError(
            f"--address {address}: that is the job server's (dashboard's) address, for `ray job submit "
            "--address`; --address takes the cluster's GCS address, host:6379 (or ray://host:10001)"
        )
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"--address {address!r}: expected host:port (e.g. 127.0.0.1:6379), ray://host:port or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        raise ValueError(
            f"--address {address}: nothing listens at {host}:{port} ({err.strerror or err}); start a head "
            "there (`ray start --head`) or leave --address out for a local Ray"
        ) from None


def check_storage_visible(storage: str, timeout_s: float = 60) -> None:
    """With several nodes, a local --storage-path must be one every node sees (trials write there from
    wherever they run): a marker file written here is looked for from every node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
    if "://" in storage or len(nodes) < 2:
        return
    os.makedirs(storage, exist_ok=True)
    marker = os.path.join(storage, f".mezo_ray-visible-{os.getpid()}-{time.time_ns()}")
    open(marker, "w").close()
    exists = ray.remote(num_cpus=0)(os.path.exists)
    try:
        seen = ray.get(
            [
                exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                    marker
                )
                for node in nodes
            ],
            timeout=timeout_s,
        )
    finally:
        os.remove(marker)
    blind = [node for node, found in zip(nodes, seen, strict=True) if not found]
    if blind:
        raise ValueError(
            f"--storage-path {storage} is not visible from {len(blind)} of the cluster's {len(nodes)} nodes "
            f"({', '.join(b[:8] for b in blind)}): trials write their results there from wherever they run; "
            "use shared storage every node mounts (NFS) or a bucket URI (s3://..., gs://...)"
        )


def local_resources() -> dict[str, float]:
    """What a local Ray started here would have."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_resources(
    configs: Sequence[TrialConfig],
    requested: int | None,
    cluster: dict[str, float],
    nodes: list[dict[str, float]] | None = None,
) -> int:
    """Refuse trials the cluster can never hold (they would wait forever); derive the concurrency.

    A worker must fit on one node (``nodes``: each node's resources; default: the cluster is one).
    Tune cannot see the Train workers' own placement groups, so running more trials than there are
    resources for their workers deadlocks: concurrency is capped at what the cluster can hold.
    """
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    need = max((c.resources.total() for c in configs), key=lambda r: (r["GPU"], r["CPU"]))
    if need["GPU"] > gpus:
        raise ValueError(
            f"each trial asks for {need['GPU']:g} GPU(s) but the cluster has {gpus:g}; "
            f"set --gpus-per-trial 0 (or gpus_per_worker=0), or run on a cluster with GPUs"
        )
    if need["CPU"] > cpus:
        raise ValueError(
            f"each trial asks for {need['CPU']:g} CPUs (workers x cpus_per_worker) but the cluster has "
            f"{cpus:g}; lower --workers-per-trial or --set cpus_per_worker=..."
        )
    nodes = nodes or [cluster]
    for cfg in configs:
        res = cfg.resources
        hosts = [
            n
            for n in nodes
            if n.get("CPU", 0.0) >= res.cpus_per_worker and n.get("GPU", 0.0) >= res.gpus_per_worker
        ]
        if not hosts:
            largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
            raise ValueError(
                f"each worker asks for {res.cpus_per_worker:g} CPU(s) and {res.gpus_per_worker:g} GPU(s) on "
                f"one node, but no node has that (largest: {largest.get('CPU', 0.0):g} CPUs, "
                f"{largest.get('GPU', 0.0):g} GPUs); lower cpus_per_worker / --gpus-per-trial"
            )
        if res.placement_strategy == "STRICT_SPREAD" and res.num_workers > len(hosts):
            raise ValueError(
                f"placement_strategy=STRICT_SPREAD puts each of the {res.num_workers} workers on its own "
                f"node, but {len(hosts)} of the cluster's {len(nodes)} nodes can hold one; add nodes, lower "
                "--workers-per-trial or use placement_strategy=SPREAD"
            )
    fits = math.floor(cpus / need["CPU"])
    if need["GPU"]:
        fits = min(fits, math.floor(gpus / need["GPU"]))
    return max(1, min(fits, requested) if requested else fits)
