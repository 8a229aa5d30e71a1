"""What a benchmark's figures were measured on: every benchmark prints it with them (CPU model and
torch's CPU kernel set decide the CPU timings; the GPU, when one is used)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name, as Linux reports it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    """CPU model, cores, torch's CPU capability (``ATEN_CPU_CAPABILITY``), threads, torch, GPU."""
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def header() -> str:
    """One line for a benchmark's text output."""
    m = describe()
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ""
    return (
        f"# {m['cpu']} ({m['cpu_cores']} cores), torch {m['torch']} CPU kernels {m['cpu_capability']}, "
        f"{m['torch_threads']} threads{gpu}"
    )


def commit() -> str:
    """The repository's commit, ``+`` when the working tree has changes (unknown outside a git clone)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def save_result(kind: str, result: dict[str, Any], folder: Path) -> Path:
    """Writes ``result`` as ``folder/KIND-DATE-COMMIT.json`` with what it was measured on: the date (UTC),
    the commit, the machine (CPU model and capability among it) and the command; returns the path."""
    now = datetime.datetime.now(datetime.timezone.utc)
    head = commit()
    record = {
        "benchmark": kind,
        "date": now.isoformat(timespec="seconds"),
        "commit": head,
        "machine": describe(),
        "command": shlex.join(["python", *sys.argv]),
        **result,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{now:%Y%m%d-%H%M}-{head.rstrip('+')}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path
