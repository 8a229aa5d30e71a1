"""Population: N antithetic low-rank probes evaluated in ONE batched forward (EGGROLL-style batching,
MeZO's two-point estimate per pair).

Sources read: Sarkar et al., "Evolution Strategies at the Hyperscale" (EGGROLL, arXiv 2511.16652;
its paper and summaries of it, not its JAX code ESHyperscale/HyperscaleES); its factors are this
package's low-rank noise (``noise.lowrank_factor``: drawn from (seed, parameter name)).

The step. P = N / 2 antithetic pairs; pair j has the seed s_j = mix_seed(seed, t, j) and, for every
wrapped ``nn.Linear`` with weight W (out x in) and bias b, the factors A_j (in x r), B_j (out x r)
(``noise.lowrank_factor`` of the weight's name, streams A_STREAM / B_STREAM) and the bias noise z_j
(this package's z of the bias's name, seed s_j). Member 2j is theta + eps d_j, member 2j+1 theta - eps d_j:

    d_j(W) = B_j A_j^T / sqrt(r)      (EGGROLL's scale: each element has unit variance, as MeZO's z)
    d_j(b) = z_j
    L_i    = mean loss of member i, all N from one forward of the batch repeated N times (members x rows)
    c_j    = (L_2j - L_2j+1) / (2 eps P)                    (MeZO's projected gradient, averaged over pairs)
    W     <- W (1 - lr wd) - lr sum_j c_j B_j A_j^T / sqrt(r)   b <- b - lr sum_j c_j z_j   (b: no decay)

The forward. Inside ``population_forward`` each wrapped Linear keeps its own y = x W^T + b, computed
once for all N*b rows, and a forward hook adds the members' corrections: x viewed as (P, 2 M, in)
(members 2j, 2j+1 are adjacent blocks of M rows), xa = bmm(x, A) (P, 2 M, r) scaled by +-eps / sqrt(r),
then bmm(xa, B^T) (P, 2 M, out) plus +-eps z_j: O(N M r (in + out)) on top of the layer's O(N M in out).
The weights never move; leaving the context removes the hooks.

What is perturbed: the weight (low rank) and bias (z) of every nn.Linear whose weight is one of the
optimizer's parameters (or of the modules named to ``attach``), except Linears whose weight or bias is
also held by another module (a decoder tied to the word embeddings). Every other parameter given to
the optimizer (embeddings, LayerNorm, tied decoders) is left untouched, neither perturbed nor updated
(``untouched`` lists them): perturbing them batched would need per-member embedding / norm code.

The closure protocol: ``step(closure)`` calls ``closure()`` once, inside the context, and expects the N
members' mean losses (a 1-D tensor or sequence of length N). The closure must feed the model its
batch repeated N times along dim 0, member-major (rows [i b, (i+1) b) are member i: ``x.repeat(N, 1)``,
``repeat_batch``), and reduce per-example losses per member (``population_losses``). Modules must see
that batch dimension first (batch-first attention; no sequence-first layers).

Against EGGROLL: EGGROLL is an evolution strategy (maximise a fitness; shaped, e.g. z-scored,
fitnesses of any population, an optimizer step on the fitness-weighted noise, populations of thousands,
integer variants); here the members come in antithetic pairs and c_j is MeZO's unshaped SPSA
difference, so the step is ZO-SGD on the loss with the average of N / 2 two-point estimates, each along
one low-rank direction per matrix (all pairs in one forward; scaled by 1 / sqrt(r), as EGGROLL).
Weight decay: W (1 - lr wd) (not biases).

Budget: one closure call, one forward of N*b rows, counted as N forward passes (``forward_passes``:
the unit of b rows in which MeZO's step is 2). Its wall time is what ``benchmarks/population_forward.py``
measures. State: none (``state_multiple`` 0).

Seed log: a ``StepRecord`` holds the P pair seeds and the P coefficients c_j (member 2j+1's direction
is -d_j, so N members take P numbers); the update is a pure function of them, so ``replay`` rebuilds a
run without forwards. FSDP is refused: the update writes whole matrices and the hook multiplies whole
weights' factors; sharded (DTensor) parameters and FSDP-wrapped models are refused by ``attach``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mezo_ray.zo.base import ZeroOrderOptimizer
from mezo_ray.zo.noise import (
    Chunk,
    NoiseSlice,
    add_lowrank_,
    add_scaled_,
    draw,
    full_noise,
    local_tensor,
    lowrank_factor,
    mix_seed,
)
from mezo_ray.zo.noise import scratch as scratch_like
from mezo_ray.zo.record import Closure, StepRecord, check
from mezo_ray.zo.sweeps import LOW_PRECISION

A_STREAM, B_STREAM = 0x2E0, 0x2E1


@dataclass(frozen=True)
class LayerFactors:
    """One Linear's perturbations for the P antithetic pairs of a step."""

    a: torch.Tensor  # (P, in, r)
    b: torch.Tensor  # (P, out, r)
    z: torch.Tensor | None  # (P, out): the bias's noise, None without a bias

    def to(self, like: torch.Tensor) -> LayerFactors:
        z = None if self.z is None else self.z.to(like)
        return LayerFactors(self.a.to(like), self.b.to(like), z)


def draw_factors(
    weight_name: str, shape: Sequence[int], rank: int, seeds: Sequence[int], bias_name: str | None = None
) -> LayerFactors:
    """A_j, B_j (float32, CPU) of the weight ``weight_name`` (out x in) and z_j of its bias, for each
    pair seed: pure functions of (seed, name), the same bits on every machine."""
    out, cols = shape
    a = torch.stack([lowrank_factor(weight_name, cols, rank, s, A_STREAM) for s in seeds])
    b = torch.stack([lowrank_factor(weight_name, out, rank, s, B_STREAM) for s in seeds])
    z = None
    if bias_name is not None:
        z = torch.stack([full_noise(torch.empty(out), bias_name, s) for s in seeds])
    return LayerFactors(a, b, z)


def _correction_hook(members: int, eps: float, f: LayerFactors) -> Any:
    pairs, rank = f.a.shape[0], f.a.shape[2]
    check(pairs * 2 == members, "factors", f"{pairs} pairs", f"members / 2 = {members // 2} pairs")
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1)
    placed: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    def factors_like(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A (P, in, r), B^T (P, r, out), +-eps / sqrt(r) (1, 2, 1, 1) and +-eps z (P, 2, 1, out) in x's
        dtype and device, once per forward's dtype (no host-to-device copy per call)."""
        key = (x.dtype, x.device)
        if key not in placed:
            sign = (signs * (eps / math.sqrt(rank))).to(x)
            shift = None if f.z is None else (f.z.double()[:, None, None, :] * signs * eps).to(x)
            placed[key] = (f.a.to(x), f.b.to(x).transpose(1, 2), sign, shift)
        return placed[key]

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.dim() < 2 or x.shape[0] % members:
            raise ValueError(
                f"population_forward: a Linear got input of shape {tuple(x.shape)}; its dim 0 must be "
                f"members x batch ({members} x b): the closure must repeat its batch members={members} times"
            )
        a, b_t, sign, shift = factors_like(x)
        xa = torch.bmm(x.reshape(pairs, -1, x.shape[-1]), a)  # (P, 2M, r): members 2j, 2j+1 adjacent
        xa = (xa.view(pairs, 2, -1, rank) * sign).view(pairs, -1, rank)
        corr = torch.bmm(xa, b_t)  # (P, 2M, out)
        if shift is not None:
            corr = corr.view(pairs, 2, -1, corr.shape[-1]).add_(shift)
        corr = corr.view(output.shape)
        return output.add_(corr) if not torch.is_grad_enabled() else output + corr

    return hook


@contextlib.contextmanager
def population_forward(
    model: nn.Module, members: int, eps: float, factors: Mapping[str, LayerFactors]
) -> Iterator[None]:
    """While inside, each ``nn.Linear`` of ``model`` named in ``factors`` computes, for a member-major
    batch of N = ``members`` blocks of rows, x W^T + b once for all rows plus, for member i of pair j
    (i = 2j: +, 2j + 1: -), +-eps ((x A_j) B_j^T / sqrt(r) + z_j). Forward hooks, removed on exit
    (also on an exception): no lasting change, the weights are never written."""
    check(members >= 2 and members % 2 == 0, "members", members, "an even integer >= 2")
    modules = dict(model.named_modules())
    handles = []
    try:
        for name, f in factors.items():
            module = modules.get(name)
            check(isinstance(module, nn.Linear), "module", name, "the name of an nn.Linear of the model")
            handles.append(module.register_forward_hook(_correction_hook(members, eps, f)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def population_losses(
    per_example: torch.Tensor, members: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The N members' mean losses from a flat vector of N*b per-example losses (member-major), or
    their weighted means sum w l / sum w (e.g. per-example token-loss sums with token counts)."""
    per_example = per_example.reshape(-1)
    n = per_example.numel()
    check(n > 0 and n % members == 0, "per_example", f"{n} losses", f"a multiple of members={members}")
    if weights is None:
        return per_example.view(members, -1).mean(1)
    weights = weights.reshape(-1).to(per_example)
    check(weights.numel() == n, "weights", f"{weights.numel()} weights", f"{n}, one per example")
    return (per_example * weights).view(members, -1).sum(1) / weights.view(members, -1).sum(1)


def repeat_batch(batch: Any, members: int) -> Any:
    """A tensor (or a dict / list / tuple of them) repeated ``members`` times along dim 0, member-major."""
    if torch.is_tensor(batch):
        return batch.repeat(members, *[1] * (batch.dim() - 1)) if batch.dim() else batch
    if isinstance(batch, Mapping):
        return {k: repeat_batch(v, members) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(repeat_batch(v, members) for v in batch)
    return batch


def population_linears(
    model: nn.Module, held: set[int] | None = None, modules: Sequence[str] | None = None
) -> dict[str, nn.Linear]:
    """The Linears a population wraps: every ``nn.Linear`` of ``model`` (or each one named in
    ``modules``) whose weight is in ``held`` (ids; None: any) and whose weight and bias no other module
    holds (a decoder tied to the word embeddings is skipped, and refused when named)."""
    owners: dict[int, int] = {}  # id(parameter) -> modules that hold it (> 1: tied)
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    named = dict(model.named_modules())
    found = {}
    for name in list(named) if modules is None else list(modules):
        m, chosen = named.get(name), modules is not None
        if not (isinstance(m, nn.Linear) and (held is None or id(m.weight) in held)):
            check(not chosen, "modules", name, "names of Linears whose weight the optimizer holds")
            continue
        tied = any(owners[id(p)] > 1 for p in (m.weight, m.bias) if p is not None)
        check(not (tied and chosen), "modules", name, "Linears whose parameters no other module holds")
        if not tied:
            found[name] = m
    return found


class Population(ZeroOrderOptimizer):
    """N antithetic low-rank members in one batched forward: ``step(closure)`` calls the closure once.

    Args: as ``ZeroOrderOptimizer`` (``lr``, ``eps``, ``weight_decay``, ``seed``, ``chunk_numel``,
    ``on_nonfinite``, ``stochastic_rounding``), and ``members`` (N, even: N / 2 antithetic pairs),
    ``rank`` (r of each matrix's direction), ``model`` (or ``attach(model)`` later) and ``modules``
    (names of the Linears to wrap; default: every Linear whose weight the optimizer holds).

    ``step(closure)``: ``closure()`` runs ``model`` inside ``population_forward`` on its batch repeated N
    times along dim 0 (``repeat_batch``) and returns the N members' mean losses, a 1-D tensor or
    sequence of length N (``population_losses``). Returns the members' mean loss (nan if skipped).
    It counts as N forward passes of b rows (the budget's unit), in one closure call.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-3,
        *,
        members: int = 8,
        rank: int = 1,
        model: nn.Module | None = None,
        modules: Sequence[str] | None = None,
        **kw: Any,
    ):
        check(
            isinstance(members, int) and members >= 2 and members % 2 == 0,
            "members",
            members,
            "an even integer >= 2 (antithetic pairs)",
        )
        check(isinstance(rank, int) and rank >= 1, "rank", rank, "an integer >= 1")
        super().__init__(params, lr=lr, eps=eps, **kw)
        self.members, self.rank = members, rank
        self.model: nn.Module | None = None
        self._layers: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # module -> (W, b)
        self._drawn: tuple[tuple[int, ...], dict[str, LayerFactors]] | None = None
        self.last_member_losses: tuple[float, ...] = ()
        if model is not None:
            self.attach(model, modules)

    def attach(self, model: nn.Module, modules: Sequence[str] | None = None) -> Population:
        """Wrap ``model``'s Linears whose weight this optimizer holds (or those named in ``modules``)."""
        held = {id(p) for p in self.sweeps.names}
        sharded = [n for p, n in self.sweeps.names.items() if local_tensor(p) is not p]
        sharded += [type(m).__name__ for m in model.modules() if "FullyShard" in type(m).__name__]
        whole = "whole tensors: the batched forward needs whole weights (FSDP is refused)"
        check(not sharded, "parameters", sharded[:3], whole)
        layers = {
            n: (m.weight, m.bias if m.bias is not None and id(m.bias) in held else None)
            for n, m in population_linears(model, held, modules).items()
        }
        check(bool(layers), "model", type(model).__name__, "a model with a Linear the optimizer holds")
        self.model, self._layers, self._drawn = model, layers, None
        return self

    @property
    def untouched(self) -> list[str]:
        """The optimizer's parameters this estimator neither perturbs nor updates."""
        touched = {id(p) for w, b in self._layers.values() for p in (w, b) if p is not None}
        return [n for p, n in self.sweeps.names.items() if id(p) not in touched]

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """One step: the closure once, in the population context; then the update."""
        if closure is None:
            raise ValueError("Population.step needs a closure that returns the members' N losses")
        check(self.model is not None, "model", None, "a model: call attach(model) first")
        seeds = tuple(mix_seed(self.seed, self.step_count, j) for j in range(self.members // 2))
        drawn = self._factors(seeds)
        placed = {n: f.to(self._layers[n][0]) for n, f in drawn.items()}
        with population_forward(self.model, self.members, self.eps, placed):
            out = closure()  # type: ignore[call-arg]
        losses = self._member_losses(out)
        self.forward_passes += self.members
        self.last_member_losses = losses
        if not all(math.isfinite(v) for v in losses):
            return self._skip(seeds, losses)
        pairs = self.members // 2
        coefs = tuple((losses[2 * j] - losses[2 * j + 1]) / (2 * self.eps * pairs) for j in range(pairs))
        self._commit(StepRecord(self.step_count, seeds, coefs, self._lrs()))
        return sum(losses) / len(losses)

    def _member_losses(self, out: Any) -> tuple[float, ...]:
        if torch.is_tensor(out):
            shape = tuple(out.shape)
            values = out.detach().double().reshape(-1).tolist() if out.dim() == 1 else None
        else:
            values = [float(v) for v in out] if isinstance(out, (list, tuple)) else None
            shape = (len(values),) if values is not None else type(out).__name__
        check(
            values is not None and len(values) == self.members,
            "closure losses",
            shape,
            f"members={self.members} losses, one per member (1-D): see population_losses",
        )
        return tuple(values)

    def _factors(self, seeds: tuple[int, ...]) -> dict[str, LayerFactors]:
        """The step's factors (float32, CPU), drawn once for the forward and the update."""
        if self._drawn is None or self._drawn[0] != seeds:
            names = self.sweeps.names
            self._drawn = (
                seeds,
                {
                    n: draw_factors(names[w], w.shape, self.rank, seeds, None if b is None else names[b])
                    for n, (w, b) in self._layers.items()
                },
            )
        return self._drawn[1]

    def _redo_sweeps(self, record: StepRecord) -> None:
        """Nothing: the probes live in the forward, the weights never move."""

    def _passes_of(self, record: StepRecord) -> int:
        return 2 * len(record.seeds)

    def _update(self, record: StepRecord) -> None:
        """W <- W (1 - lr wd) - lr sum_j c_j B_j A_j^T / sqrt(r): one rank-(P r) ``add_lowrank_`` per
        matrix (u = [c_j B_j], v = [A_j]), rounded chunk by chunk; biases: sum_j c_j z_j, chunk-wise."""
        check(self.model is not None, "model", None, "a model: call attach(model) before a step or replay")
        self.update_count += 1
        lr_of = self._group_lrs(record)
        factors = self._factors(record.seeds)
        roles = {id(w): n for n, (w, _) in self._layers.items()}
        biases = {id(b) for _, b in self._layers.values() if b is not None}
        vectors = {}
        for s, p, group in self.sweeps.active():
            lr, wd = lr_of[id(group)], self._weight_decay(p, group)
            if id(p) in biases:
                vectors[id(s)] = (s, p, lr, wd)
            if id(p) not in roles:
                continue
            f = factors[roles[id(p)]]
            held = s.local.view(p.shape)
            work = held.float() if held.dtype in LOW_PRECISION else held
            pairs, _, rank = f.a.shape
            coefs = torch.tensor(record.projected_grads, dtype=work.dtype).view(pairs, 1, 1)
            u = (f.b.to(work.dtype) * coefs).permute(1, 0, 2).reshape(p.shape[0], pairs * rank)
            v = f.a.to(work.dtype).permute(1, 0, 2).reshape(p.shape[1], pairs * rank)
            if wd:
                work.mul_(1 - lr * wd)
            add_lowrank_(work, u.to(work.device), v.to(work.device), -lr / math.sqrt(rank))
            self.sweeps.round_whole(p, s, work, record.seeds[0])

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            _, p, lr, wd = vectors[id(s)]
            theta = s.local[c.p_lo : c.p_hi]
            step = scratch_like(theta, slot=1).zero_()
            for seed, coef in zip(record.seeds, record.projected_grads, strict=True):
                add_scaled_(step, draw(s, c, seed), coef)
            work = self.sweeps.working_copy(theta)
            if wd:
                work.mul_(1 - lr * wd)
            add_scaled_(work, step, -lr)
            self.sweeps.round_into(p, theta, work, s, c, record.seeds[0])

        self.sweeps.for_chunks(update_chunk, [entry[0] for entry in vectors.values()])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._drawn = None

    @property
    def state_multiple(self) -> int:
        return 0

    def _trajectory_settings(self) -> dict[str, Any]:
        perturbed = sorted(self.sweeps.names[w] for w, _ in self._layers.values())
        settings = {**self._common_settings("population"), "members": self.members, "rank": self.rank}
        return {**settings, "perturbed": perturbed}
