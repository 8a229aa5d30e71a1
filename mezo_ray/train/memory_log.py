"""A trial's memory over time: a sample every few seconds, as CSV beside its results.

Peak memory (``peak_mem_bytes`` in every report) says how high a trial went, not when: a sample every
``memory_log_every_s`` seconds (seconds since the start, the step, resident set size and, on a GPU,
the bytes torch has allocated) shows which phase (loading, the sweeps, an evaluation) holds it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import torch

HEADER = "seconds,step,rss_bytes,device_allocated_bytes\n"


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; elsewhere its peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def memory_log(path: str | None, every_s: float | None, step: Callable[[], int]) -> Iterator[None]:
    """Sample into ``path`` every ``every_s`` seconds while the block runs (nothing if either is None)."""
    if path is None or every_s is None:
        yield
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    stop, start = threading.Event(), time.perf_counter()

    def sample(f: TextIO) -> None:
        device = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
        f.write(f"{time.perf_counter() - start:.3f},{step()},{rss_bytes()},{device}\n")
        f.flush()

    def run() -> None:
        with open(path, "a") as f:
            if f.tell() == 0:
                f.write(HEADER)
            sample(f)
            while not stop.wait(every_s):
                sample(f)
            sample(f)

    thread = threading.Thread(target=run, name="mezo-memory-log", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
