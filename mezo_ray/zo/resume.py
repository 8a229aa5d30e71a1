"""Resuming a MeZO step whose closure raised (an out-of-memory error, a KeyboardInterrupt).

The weights go back to theta at once, so a caught error leaves them usable. ``interrupt`` also notes
what it takes to return to the exact weights the closure failed at: adding at * z again gives them
back but for a few percent of elements (rounding), whose values are kept. The next step calls
``resume`` and evaluates there again, so a retry takes the step an uninterrupted run takes, bit for
bit, unless the weights, their storage or the step count changed in between.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from mezo_ray.zo.noise import Chunk, NoiseSlice, add_scaled_, draw, for_each_chunk
from mezo_ray.zo.noise import scratch as scratch_like
from mezo_ray.zo.sweeps import Sweeps


@dataclasses.dataclass
class StepRun:
    """A step in progress: the perturbations evaluated so far and where the weights stand
    (theta + at * z(seeds[-1]); None: at theta). Kept when a closure raises, to resume the step."""

    seeds: list[int] = dataclasses.field(default_factory=list)
    grads: list[float] = dataclasses.field(default_factory=list)
    plus_losses: list[float] = dataclasses.field(default_factory=list)
    at: float | None = None
    loss_plus: float = math.nan
    scales: tuple[float, ...] = ()  # scale='grad_norm': measured at the start of this step
    # Set by interrupt: the exact weights the closure failed at are theta + at * z(seeds[-1]), then
    # these (parameter index, chunk start, element indices, values) written over them.
    patches: list[tuple[int, int, torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=list)
    fingerprint: tuple[Any, ...] = ()


def interrupt(sweeps: Sweeps, run: StepRun, step: int) -> StepRun | None:
    """Move from theta + at*z back to theta; returns ``run`` with what resuming needs, or None if even
    the note of differing elements does not fit in memory (the weights are restored all the same, and
    the next step starts afresh)."""
    at, seed = run.at, run.seeds[-1]
    assert at is not None
    if sweeps.forward is not None:  # the weights never moved: put back what stands in for them
        sweeps.forward.restore()
        sweeps.set_offset(None)
        run.fingerprint = fingerprint(step, [s for s, _, _ in sweeps.active()])
        return run
    active = sweeps.active()
    slices = [s for s, _, _ in active]
    index = {id(s): i for i, s in enumerate(slices)}
    at_of = {id(s): at / sweeps.scale_of(p) for s, p, _ in active}
    patches: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
    out_of_memory: list[BaseException] = []

    def back_to_theta(s: NoiseSlice, c: Chunk) -> None:
        seen = s.local[c.p_lo : c.p_hi]
        z = draw(s, c, seed)
        theta = add_scaled_(scratch_like(seen, 3, seen.dtype).copy_(seen), z, -at_of[id(s)])
        if not out_of_memory:
            again = add_scaled_(scratch_like(seen, 4, seen.dtype).copy_(theta), z, at_of[id(s)])  # resuming
            try:
                differ = torch.nonzero(again != seen).view(-1)
                patches.append((index[id(s)], c.p_lo, differ.int(), seen[differ]))
            except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
                out_of_memory.append(err)
        seen.copy_(theta)

    for_each_chunk(slices, sweeps.chunk_numel, back_to_theta)
    if out_of_memory:
        return None
    run.patches = [p for p in patches if p[2].numel()]
    run.fingerprint = fingerprint(step, slices)
    return run


def resume(sweeps: Sweeps, run: StepRun | None, step: int) -> StepRun | None:
    """The interrupted step, with the weights returned to where its closure raised, or None if there
    is none or the weights, their storage or the step count changed since."""
    if run is None:
        return None
    active = sweeps.active()
    slices = [s for s, _, _ in active]
    if fingerprint(step, slices) != run.fingerprint:
        return None
    if sweeps.forward is not None:
        sweeps.set_offset((run.seeds[-1], run.at))
        return run
    at_of = {id(s): run.at / sweeps.scale_of(p) for s, p, _ in active}

    def back_to_seen(s: NoiseSlice, c: Chunk) -> None:
        add_scaled_(s.local[c.p_lo : c.p_hi], draw(s, c, run.seeds[-1]), at_of[id(s)])

    for_each_chunk(slices, sweeps.chunk_numel, back_to_seen)
    for i, lo, where, values in run.patches:
        slices[i].local[lo:].index_copy_(0, where.long(), values)
    run.patches = []
    return run


def fingerprint(step: int, slices: list[NoiseSlice]) -> tuple[Any, ...]:
    """The step count, where the weights live and their float64 sums: whether they changed."""
    sums = (float(torch.sum(s.local, dtype=torch.float64)) for s in slices)
    return (step, *(s.local.data_ptr() for s in slices), *sums)
