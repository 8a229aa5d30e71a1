"""Perturbing inside the forward: each module sees theta + a z while it runs; the weights never move.

MeZO's in-place sweeps (theta + eps z, then - 2 eps z, then + eps z) come back to theta only to
rounding: the map theta -> fl(theta + eps z) is not injective (near 0 the floats are far denser than
around eps z), so no in-place arithmetic can undo it exactly, and in bfloat16 the weights walk by ulps
every step. Here a module's forward pre-hook puts a perturbed copy of its own parameters in their
place (``param.data``) for the length of its forward and the forward hook puts the weights back, so a
step's perturbations leave theta untouched by construction: restores are exact in every dtype, a
retried step starts from the same weights, and only the update writes to them. The cost: one
module's parameters copied while it runs. On the CPU the copies are kept for reuse, one per parameter
shape (about the largest module and one layer), as a fresh large allocation costs page faults every
time (0.2 s of a 1.2 s roberta-base step at batch 1); CUDA's caching allocator reuses them anyway.

Under FSDP2 a module holds, while its unit runs, the gathered (whole) parameter in place of its shard
(``module._parameters[name]``): the hook then perturbs that whole tensor (every rank draws the same z
for it, as one process would), and the update writes the shards as ever.

A parameter the model reads outside the forward of a module holding it would be seen unperturbed,
silently; ``check`` finds it (it was never put in place during a forward) and the optimizer raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch


class ForwardPerturbation:
    """Hooks on every module of ``model`` that holds some of ``params``: while such a module runs, each
    of its parameters for which ``perturbed(param, held, out)`` writes a perturbed copy of ``held``
    (``param``, or under FSDP the gathered parameter the module holds for now) into ``out`` (and
    returns True) reads that copy instead."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: Iterable[torch.Tensor],
        perturbed: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], bool],
    ) -> None:
        wanted = set(params)
        self._perturbed = perturbed
        self._spare: dict[tuple[Any, ...], list[torch.Tensor]] = {}  # copies to reuse, by shape
        # parameter -> (the tensor a copy stands in for, its weights), while the copy stands in
        self._own: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}
        self._entered: list[list[torch.Tensor]] = []  # per running module (innermost last): what it put in
        self.seen: set[torch.Tensor] = set()  # parameters put in place (or already in place) since begin()
        for module in model.modules():
            mine = [(name, p) for name, p in module.named_parameters(recurse=False) if p in wanted]
            if mine:
                module.register_forward_pre_hook(partial(self._enter, mine))
                module.register_forward_hook(partial(self._exit, mine), always_call=True)

    def _enter(self, params: list[tuple[str, torch.Tensor]], module: torch.nn.Module, args: Any) -> None:
        put: list[torch.Tensor] = []
        self._entered.append(put)
        for name, p in params:
            if p in self._own:  # a tied parameter already in place (a module inside another using it)
                self.seen.add(p)
                continue
            held = module._parameters[name]  # p, or FSDP's gathered parameter while its unit runs
            assert held is not None
            key = (held.shape, held.dtype, held.device)
            spare = self._spare.get(key) if held.device.type == "cpu" else None
            copy = spare.pop() if spare else torch.empty_like(held.data)
            if not self._perturbed(p, held, copy):
                self._keep(copy)
                continue
            self._own[p] = (held, held.data)
            held.data = copy
            put.append(p)
            self.seen.add(p)

    def _exit(self, params: Any, module: torch.nn.Module, args: Any, output: Any) -> None:
        for p in self._entered.pop() if self._entered else ():
            held, own = self._own.pop(p)
            self._keep(held.data)
            held.data = own

    def _keep(self, copy: torch.Tensor) -> None:
        if copy.device.type == "cpu":
            self._spare.setdefault((copy.shape, copy.dtype, copy.device), []).append(copy)

    def begin(self) -> None:
        """Start counting which parameters a forward puts in place."""
        self.seen = set()

    def check(self, expected: Iterable[torch.Tensor], names: Mapping[torch.Tensor, str]) -> None:
        """Raise ValueError naming the ``expected`` parameters no forward since ``begin`` put in place."""
        missing = [names[p] for p in expected if p not in self.seen]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(
                f"perturbation='forward': {shown} never ran inside the forward of a module that holds "
                "it (read by another module, or not used at all), so the loss never saw its perturbation; "
                "leave such parameters out of the optimizer or use perturbation='in_place'"
            )

    def restore(self) -> None:
        """Put back every weight a copy still stands in for (after a forward that raised)."""
        for held, own in self._own.values():
            held.data = own
        self._own.clear()
        self._entered.clear()
