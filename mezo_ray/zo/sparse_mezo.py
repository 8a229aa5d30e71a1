"""Sparse MeZO (Liu, Zhu, Gong, Cheng, Hsieh, You; arXiv 2402.15751, NeurIPS 2025; code:
NUS-HPC-AI-Lab/SparseMeZO).

Read: the paper (Algorithm 1 with GetMask and PerturbParameters; "Dynamic Mask"; "Memory-Efficient
Implementation"; "Sparse Rate"). The official repository could not be read here (no snapshot of it, not
in the code index); in its place a port that says it follows it: LiyanTan111/GRZO-public,
``MeZO/large_models/trainer.py`` at 99643af9af5854dd3836b828bac5f3f2a2062349 (``_init_baseline_state``,
``_baseline_modify_z``): a threshold per weight matrix, ``kthvalue(|W|, int(ratio n))``, taken once at
the first step; the mask ``|W| <= threshold`` rebuilt every step from the weights then; z times the mask
in the three perturbation sweeps and in the update.

MeZO's two-point estimate on the small weights only. Per parameter tensor p (the paper's "layer"), n_p
elements, and step t with MeZO's z_t = z(mix_seed(seed, t, 0)):

    k_p   = max(1, round((1 - sparsity) n_p))
    h_p   = the k_p-th smallest |theta_p| at step 0 (and every ``threshold_every`` steps, if set)
    m_t   = [|theta_t| <= h_p], element by element, from the weights at the start of step t
    zhat  = m_t * z_t
    g     = (loss(theta + eps zhat) - loss(theta - eps zhat)) / (2 eps)         two forwards
    theta <- theta - lr g zhat                                                 no weight decay

``sparsity`` is the paper's: the fraction of each tensor left out, 0 (all, MeZO at step 0) to 0.8 (its
best on most tasks); the largest |theta| are left out. The thresholds are fixed, the mask is not: a
weight that grows past h_p stops moving, one that shrinks below it starts (a small tensor can be
left with none). Nothing machine-dependent
decides the mask: h_p is an element of |theta_p| (``kthvalue`` selects, it does not compute) and
m_t a comparison with it; z is this package's noise. So the masked z is the same on every machine, a
replay recomputes m_t (and h_p when due) from the replayed weights, bit for bit, and the record keeps
MeZO's (seed, g). A resume needs h_p as it was taken: the state dict's ``"mezo"`` part keeps one float
per tensor (JSON, exact: h_p is a weight's magnitude).

Where we depart:
- the paper's memory-efficient version computes the mask inside each layer's forward; here the
  perturbation is in place (``perturb_in_forward`` is refused), so m_t, taken from theta_t before the
  first sweep, is held through the step, 1 bit an element (packed per chunk: the paper's "1-bit
  quantization" alternative), and dropped after the update;
- every tensor is masked, as the paper's GetMask loops over all layers, unless its name contains one of
  ``dense`` (perturbed whole); the port masks only matrices, its norms and embeddings dense:
  ``dense=("bias", "norm", "embed")`` comes closest;
- k_p is rounded to nearest and at least 1 (the port truncates ``int(ratio n)``, ratio the kept
  fraction; truncating (1 - 0.8) * 10 = 1.999... would give 1);
- Algorithm 1 names a "sparsification interval" it does not define, and the text sets the thresholds
  "before training": ``threshold_every`` (None: once, at step 0, that reading) is ours;
- GetMask's pseudocode compares theta itself with h_i; its text, and the port, the magnitude: |theta|;
- weight decay is refused (Algorithm 1 has none);
- z: this package's noise, seeds ``mix_seed``; non-finite losses skip the step;
- FSDP is refused: h_p is an order statistic of the whole tensor, which a shard does not hold (the
  comparison alone could run per shard; the threshold would need a gather or a distributed selection).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mezo_ray.zo.base import ZeroOrderOptimizer
from mezo_ray.zo.noise import Chunk, NoiseSlice, add_scaled_, draw, mix_seed
from mezo_ray.zo.record import Closure, StepRecord, check, takes_index

THRESHOLDS_KEY = "sparse_mezo_thresholds"  # the state dict's "mezo" entry: h_p in parameter order


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bit_weights(device: torch.device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool vector as uint8 bytes, 8 elements a byte (element i: bit i % 8 of byte i // 8)."""
    padded = torch.zeros(-(-mask.numel() // 8) * 8, dtype=torch.uint8, device=mask.device)
    padded[: mask.numel()] = mask
    return (padded.view(-1, 8) << _bit_weights(mask.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """``pack_bits`` undone: the first ``n`` elements as uint8 0 / 1."""
    return ((packed.unsqueeze(1) >> _bit_weights(packed.device)) & 1).view(-1)[:n]


class SparseMeZO(ZeroOrderOptimizer):
    """Sparse MeZO: ``step(closure)`` runs two forwards, perturbing and updating the small weights.

    Args: as ``ZeroOrderOptimizer`` (``lr``, ``eps``, ``seed``, ``chunk_numel``, ``on_nonfinite``,
    ``stochastic_rounding``; ``weight_decay`` must stay 0), and
        sparsity: the fraction of each tensor's weights, the largest in magnitude, that neither
            moves nor is perturbed; in [0, 1), the paper's 0.8 by default (0.5 to 0.8 its range);
        threshold_every: retake the thresholds every N steps (None: only at step 0, the paper's);
        dense: name parts (case-insensitive) of parameters perturbed and updated whole.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        eps: float = 1e-3,
        *,
        sparsity: float = 0.8,
        threshold_every: int | None = None,
        dense: Sequence[str] = (),
        **kw: Any,
    ):
        check(
            isinstance(sparsity, int | float) and not isinstance(sparsity, bool) and 0 <= sparsity < 1,
            "sparsity",
            sparsity,
            "a number in [0, 1): the fraction of each tensor left out (the paper's best: 0.8)",
        )
        check(
            threshold_every is None or (_is_count(threshold_every) and threshold_every >= 1),
            "threshold_every",
            threshold_every,
            "None (thresholds taken once, at step 0) or an integer >= 1",
        )
        check(
            not isinstance(dense, str) and all(isinstance(d, str) and d for d in dense),
            "dense",
            dense,
            "a sequence of non-empty name parts, e.g. ('bias',), not one string",
        )
        super().__init__(params, lr=lr, eps=eps, **kw)
        decays = [g["weight_decay"] for g in self.param_groups]
        check(not any(decays), "weight_decay", decays, "0 in every group (Sparse MeZO's update has none)")
        sharded = [
            name
            for p, name in self.sweeps.names.items()
            if any(type(x).__name__ == "Shard" for x in getattr(p, "placements", ()))
        ]
        check(
            not sharded,
            "parameters",
            sharded[:3],
            "unsharded tensors: a threshold is the k-th smallest |w| of a whole tensor, which an FSDP "
            "shard does not hold",
        )
        self.sparsity = sparsity
        self.threshold_every = threshold_every
        self.dense = tuple(dense)
        lowered = tuple(d.lower() for d in self.dense)
        self._masked = {
            p: not any(d in name.lower() for d in lowered) for p, name in self.sweeps.names.items()
        }
        self._thresholds: dict[torch.Tensor, float] | None = None  # h_p of the masked tensors
        self._bits: dict[tuple[int, int], torch.Tensor] = {}  # this step's mask, (slice, chunk) -> bits

    @property
    def state_multiple(self) -> float:
        """The step's mask (1 bit a masked element) in multiples of the parameters' bytes: 1/32 for
        float32 weights, 1/16 for bfloat16; between steps one float per tensor."""
        entries = self.sweeps.slices()
        bits = sum(s.local.numel() for s, p, _ in entries if self._masked[p])
        return bits / 8 / max(1, sum(s.local.numel() * s.local.element_size() for s, _, _ in entries))

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float:  # type: ignore[override]
        """Take one Sparse MeZO step; returns the loss at theta + eps zhat, as MeZO does (nan if
        skipped). A closure that raises leaves the weights at theta (to rounding), and the next step
        starts afresh."""
        if closure is None:
            raise ValueError("SparseMeZO.step needs a closure that returns the loss")
        indexed = takes_index(closure)
        seed = mix_seed(self.seed, self.step_count, 0)
        self._take_mask(self.step_count)
        try:
            plus, minus = self.two_point(self._perturb, seed, closure, indexed)
        except BaseException:
            self._bits = {}
            raise
        if not (math.isfinite(plus) and math.isfinite(minus)):
            self._bits = {}
            return self._skip((seed,), (plus, minus))
        self._commit(StepRecord(self.step_count, (seed,), ((plus - minus) / (2 * self.eps),), self._lrs()))
        return plus

    def _redo_sweeps(self, record: StepRecord) -> None:
        self._take_mask(record.step)
        self.two_point(self._perturb, record.seeds[0], None, False)
        if record.skipped:
            self._bits = {}

    def _passes_of(self, record: StepRecord) -> int:
        return 2

    # ------------------------------------------------------------------------------------------------
    def _take_mask(self, step: int) -> None:
        """h_p when due (step 0, or every ``threshold_every`` steps), then m_t from the weights now
        (theta_t: no sweep of this step has run), packed chunk by chunk."""
        masked = [(s, p) for s, p, _ in self.sweeps.active() if self._masked[p]]
        due = self.threshold_every is not None and step % self.threshold_every == 0
        if self._thresholds is None or due:
            self._thresholds = {p: self._threshold(s) for s, p in masked}
        limit = {id(s): self._thresholds[p] for s, p in masked}
        bits: dict[tuple[int, int], torch.Tensor] = {}

        def mask_chunk(s: NoiseSlice, c: Chunk) -> None:
            bits[(id(s), c.first)] = pack_bits(s.local[c.p_lo : c.p_hi].abs() <= limit[id(s)])

        self.sweeps.for_chunks(mask_chunk, [s for s, _ in masked])
        self._bits = bits

    def _threshold(self, s: NoiseSlice) -> float:
        """The k-th smallest |theta| of a whole tensor: one of its elements, exact on any machine."""
        k = max(1, round((1 - self.sparsity) * s.numel))
        return float(torch.kthvalue(s.local.abs(), k).values)

    def _masked_z(self, s: NoiseSlice, c: Chunk, seed: int) -> torch.Tensor:
        """m_t * z(seed) for one chunk (z as MeZO draws it; a dense tensor's z unmasked)."""
        z = draw(s, c, seed)
        bits = self._bits.get((id(s), c.first))
        return z if bits is None else z.mul_(unpack_bits(bits, c.p_hi - c.p_lo))

    def _perturb(self, seed: int, scale: float) -> None:
        """theta += scale * zhat(seed): one sweep; the weights left out get + 0, so never move."""

        def perturb_chunk(s: NoiseSlice, c: Chunk) -> None:
            add_scaled_(s.local[c.p_lo : c.p_hi], self._masked_z(s, c, seed), scale)

        self.sweeps.for_chunks(perturb_chunk)

    def _update(self, record: StepRecord) -> None:
        """theta <- theta - lr g zhat: one sweep, rounded as every estimator rounds; drops the mask."""
        self.update_count += 1
        (seed,), (grad,) = record.seeds, record.projected_grads
        lr_of = self._group_lrs(record)
        entries = {id(s): (p, g) for s, p, g in self.sweeps.active()}

        def update_chunk(s: NoiseSlice, c: Chunk) -> None:
            p, group = entries[id(s)]
            theta = s.local[c.p_lo : c.p_hi]
            work = self.sweeps.working_copy(theta)
            add_scaled_(work, self._masked_z(s, c, seed), -lr_of[id(group)] * grad)
            self.sweeps.round_into(p, theta, work, s, c, seed)

        self.sweeps.for_chunks(update_chunk)
        self._bits = {}

    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if self._thresholds is not None:  # one float (or None: dense) per parameter, in order
            sd["mezo"][THRESHOLDS_KEY] = [self._thresholds.get(p) for p in self.sweeps.names]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        extra = state_dict["mezo"]
        self.check_compatible(extra)  # the settings (estimator, sparsity, ...) first
        saved = extra.get(THRESHOLDS_KEY)
        if saved is None and extra["step_count"] > 0:
            raise ValueError(
                f"SparseMeZO: the state dict has no {THRESHOLDS_KEY!r} (the magnitude thresholds taken at "
                "step 0); it was not saved by SparseMeZO"
            )
        super().load_state_dict(state_dict)
        self._bits = {}
        self._thresholds = None
        if saved is not None:
            pairs = zip(self.sweeps.names, saved, strict=True)
            self._thresholds = {p: float(h) for p, h in pairs if h is not None and self._masked[p]}

    def _trajectory_settings(self) -> dict[str, Any]:
        settings = {**self._common_settings("sparse_mezo"), "sparsity": self.sparsity}
        return {**settings, "threshold_every": self.threshold_every, "dense": list(self.dense)}
