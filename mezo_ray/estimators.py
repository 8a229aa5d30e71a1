"""The gradient estimators a MeZO trial can name (``estimator:``), in one table that train, tune and
report read. Torch-free: the report and the dry run import it without loading torch.

An estimator is its file in ``zo``, its settings class here and one entry in ``_ENTRIES``:
- the **settings class** holds the trial settings only it reads, with their defaults and bounds. A
  field's alias is its flat key (``params.json``, Tune's config, ``--set``); its name is the keyword
  its optimizer takes. The trial config's MeZO branch holds one of these, chosen by ``estimator:``,
  so a trial that sets another estimator's setting away from its default is refused by name;
- the **entry** says how to build the optimizer (imported only when a trial builds it), its report
  rows, and what it combines with: the trial's weight decay, perturbing inside the forward, FSDP. A
  trial that asks for what its estimator does not do is refused by name (``train/config.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EstimatorSettings(BaseModel):
    """One estimator's own trial settings (a subclass per estimator, its ``name`` a Literal)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(alias="estimator")

    def keywords(self, max_steps: int, steps_per_epoch: int) -> dict[str, Any]:
        """The optimizer's own keywords (by default every setting, under its field name)."""
        return self.model_dump(exclude={"name"})

    def forward_passes(self, max_steps: int) -> int:
        """Training forward passes of ``max_steps`` steps (for dry runs and budgets)."""
        return 2 * max_steps


class MezoSettings(EstimatorSettings):
    """MeZO's own estimate and the options the paper's code gives it (update rules, n-SPSA, per-group
    scales, layer-wise steps)."""

    name: Literal["mezo"] = Field("mezo", alias="estimator")
    variant: Literal["sgd", "momentum", "adam", "sign"] = Field("sgd", alias="zo_variant")
    momentum: float = Field(0.9, ge=0, lt=1)
    n_perturbations: int = Field(1, gt=0)
    perturbation_schedule: Literal["constant", "linear"] = "constant"
    scale: Literal["none", "param_norm", "grad_norm"] = Field(
        "none",
        alias="perturbation_scale",
        description="the paper code's --zo_variant: each group (embeddings, LM head, each layer) is "
        "perturbed by z / c, c its weights' norm (param_norm) or a two-forward estimate of its gradient's "
        "norm (grad_norm, with --use_zo_grad_est: 2 forwards per group)",
    )
    estimate: Literal["variance", "expectation"] = Field(
        "variance",
        alias="scale_estimate",
        description="with a perturbation_scale: estimate g z c (variance) or g z (--change_grad_estimate)",
    )
    recompute_norms: bool = Field(
        False, description="with a perturbation_scale: recompute the scales each epoch (--recompute_norms)"
    )
    layer_wise: bool = Field(
        False,
        description="perturb and update one layer per step, cycling (the paper code's "
        "--layer_wise_optim); not with zo_variant adam",
    )

    def keywords(self, max_steps: int, steps_per_epoch: int) -> dict[str, Any]:
        own = self.model_dump(exclude={"name", "recompute_norms"})
        return {
            **own,
            "max_steps": max_steps,
            "rescale_every": steps_per_epoch if self.recompute_norms else None,
        }

    def forward_passes(self, max_steps: int) -> int:
        if self.perturbation_schedule == "linear":  # K_t = max(1, int(t / max_steps * K))
            k = self.n_perturbations
            return sum(2 * max(1, int(t / max_steps * k)) for t in range(max_steps))
        return 2 * self.n_perturbations * max_steps


class FzooSettings(EstimatorSettings):
    """arXiv 2506.09034: N one-sided Rademacher probes sharing one unperturbed loss."""

    name: Literal["fzoo"] = Field("fzoo", alias="estimator")
    n_probes: int = Field(8, ge=2, description="N probes per step (N + 1 forward passes)")

    def forward_passes(self, max_steps: int) -> int:
        return (self.n_probes + 1) * max_steps


class HizooSettings(EstimatorSettings):
    """arXiv 2402.15173: z scaled by a diagonal Hessian estimate (3 forward passes a step)."""

    name: Literal["hizoo"] = Field("hizoo", alias="estimator")
    hessian_smooth: float = Field(1e-8, ge=0, le=1, description="the Hessian estimate's smoothing")

    def forward_passes(self, max_steps: int) -> int:
        return 3 * max_steps


class LozoSettings(EstimatorSettings):
    """arXiv 2410.07698: each matrix perturbed along rank-r directions U Vᵀ."""

    name: Literal["lozo"] = Field("lozo", alias="estimator")
    rank: int = Field(4, ge=1, alias="lozo_rank", description="r, the perturbation's rank per matrix")
    interval: int = Field(100, ge=1, alias="lozo_interval", description="nu, the steps each V is kept")
    beta: float = Field(
        0.0,
        ge=0,
        lt=1,
        alias="lozo_momentum",
        description="0 is LOZO; > 0 is LOZO-M (momentum in the factors)",
    )


class AdamezoSettings(EstimatorSettings):
    """arXiv 2605.00650: Adam-style moments rebuilt each step from the last W seeds and projected
    gradients of the seed log (no moment buffers); W + 1 plain MeZO steps first."""

    name: Literal["adamezo"] = Field("adamezo", alias="estimator")
    window: int = Field(
        10, ge=2, alias="adamezo_window", description="W, the steps the moments are rebuilt from"
    )
    beta1: float = Field(0.7, ge=0, le=1, alias="adamezo_beta1", description="the first moment's decay")
    beta2: float = Field(
        0.9, ge=0, le=1, alias="adamezo_beta2", description="the second's (0: no second moment)"
    )


class BszoSettings(EstimatorSettings):
    """arXiv 2601.01452: k directions a step, their coefficients estimated by a Kalman filter from m
    finite differences (the updates after the k-th reuse the saved ones)."""

    name: Literal["bszo"] = Field("bszo", alias="estimator")
    subspace_dim: int = Field(2, ge=1, alias="bszo_subspace_dim", description="k, the directions a step")
    n_samples: int = Field(3, ge=1, alias="bszo_samples", description="m, the filter's updates a step")
    one_sided: bool = Field(True, alias="bszo_one_sided", description="(L(θ+εz) − L(θ)) / ε, else central")

    def forward_passes(self, max_steps: int) -> int:
        per_direction = 1 if self.one_sided else 2
        return (1 + per_direction * min(self.n_samples, self.subspace_dim)) * max_steps


class SparseMezoSettings(EstimatorSettings):
    """arXiv 2402.15751: MeZO on the small-magnitude weights only: each tensor's mask |θ| <= h, h its
    k-th smallest |θ| taken at the start (or every ``threshold_every`` steps)."""

    name: Literal["sparse_mezo"] = Field("sparse_mezo", alias="estimator")
    sparsity: float = Field(
        0.8, ge=0, lt=1, alias="sparse_mezo_sparsity", description="the fraction of each tensor left out"
    )
    threshold_every: int | None = Field(
        None, ge=1, alias="sparse_mezo_threshold_every", description="retake the thresholds every N steps"
    )


class MezoGvSettings(EstimatorSettings):
    """arXiv 2601.04710: a pool of M one-sided probes; the step goes along the mean of the lower-loss
    share of them minus the mean of the rest, by a two-point estimate (M + 2 forward passes). The
    authors' code runs M = 2, where v = +-(z_0 - z_1) whatever the losses: 4 is the smallest even
    pool whose ranking chooses the direction."""

    name: Literal["mezo_gv"] = Field("mezo_gv", alias="estimator")
    pool_size: int = Field(4, ge=2, alias="gv_pool_size", description="M, the probes scored a step")
    elite_ratio: float = Field(0.5, gt=0, lt=1, alias="gv_elite_ratio", description="the share of them kept")

    def forward_passes(self, max_steps: int) -> int:
        return (self.pool_size + 2) * max_steps


class PopulationSettings(EstimatorSettings):
    """EGGROLL (arXiv 2511.16652) as a ZO-SGD estimate: N antithetic low-rank probes of every Linear,
    all evaluated in one forward of N copies of the batch (N forward passes of the batch a step)."""

    name: Literal["population"] = Field("population", alias="estimator")
    members: int = Field(8, ge=2, multiple_of=2, alias="population_members", description="N, in +- pairs")
    rank: int = Field(1, ge=1, alias="population_rank", description="r, each probe's rank per matrix")

    def forward_passes(self, max_steps: int) -> int:
        return self.members * max_steps


@dataclass(frozen=True)
class EstimatorEntry:
    """One estimator: its settings, how to build its optimizer, and how the report names it."""

    settings: type[EstimatorSettings]
    builder: str  # "module:Class" in mezo_ray.zo, imported lazily
    rows: tuple[str, ...] = ()  # its report rows, in the order tables show them
    row: Callable[[Mapping[str, Any]], str] | None = None  # which of ``rows`` a trial is (default: the first)
    row_settings: tuple[str, ...] = ()  # the flat settings ``row`` reads
    weight_decay: bool = True  # whether its update applies the trial's weight decay
    in_forward: bool = False  # whether it can perturb inside each module's forward
    shards: bool = True  # whether it runs on FSDP-sharded weights
    batched: bool = False  # its probes in one batched forward: the closure returns each member's loss

    @property
    def name(self) -> str:
        return self.settings.model_fields["name"].default

    @property
    def flat_keys(self) -> tuple[str, ...]:
        """Its settings as a trial names them (params.json, ``--set``), its name aside."""
        return tuple(f.alias or key for key, f in self.settings.model_fields.items() if key != "name")

    def row_label(self, flat: Mapping[str, Any]) -> str:
        return self.row(flat) if self.row is not None else self.rows[0]

    def build(
        self, params: Any, settings: EstimatorSettings, max_steps: int, steps_per_epoch: int, **common: Any
    ) -> Any:
        """The optimizer over ``params`` (``common``: lr, eps, seed, rounding, weight decay)."""
        module, name = self.builder.split(":")
        cls = getattr(importlib.import_module(module), name)
        if not self.weight_decay:
            common.pop("weight_decay", None)
        return cls(params, **settings.keywords(max_steps, steps_per_epoch), **common)


def _lozo_row(flat: Mapping[str, Any]) -> str:
    momentum = flat.get("lozo_momentum")
    return "LOZO-M" if momentum not in (None, "") and float(momentum) else "LOZO"


_ENTRIES = (
    EstimatorEntry(MezoSettings, "mezo_ray.zo.optimizer:MeZO", in_forward=True),
    EstimatorEntry(FzooSettings, "mezo_ray.zo.fzoo:FZOO", rows=("FZOO",), weight_decay=False),
    EstimatorEntry(HizooSettings, "mezo_ray.zo.hizoo:HiZOO", rows=("HiZOO",)),
    EstimatorEntry(
        LozoSettings,
        "mezo_ray.zo.lozo:LOZO",
        rows=("LOZO", "LOZO-M"),
        row=_lozo_row,
        row_settings=("lozo_momentum",),
    ),
    EstimatorEntry(AdamezoSettings, "mezo_ray.zo.adamezo:AdaMeZO", rows=("AdaMeZO",)),
    EstimatorEntry(BszoSettings, "mezo_ray.zo.bszo:BSZO", rows=("BSZO",)),
    EstimatorEntry(
        SparseMezoSettings,
        "mezo_ray.zo.sparse_mezo:SparseMeZO",
        rows=("Sparse MeZO",),
        weight_decay=False,
        shards=False,
    ),
    EstimatorEntry(MezoGvSettings, "mezo_ray.zo.mezo_gv:MeZOGV", rows=("MeZO-GV",)),
    EstimatorEntry(
        PopulationSettings,
        "mezo_ray.zo.population:Population",
        rows=("Population",),
        shards=False,
        batched=True,
    ),
)
#: Every estimator by the name a trial gives, MeZO's own estimate first.
ENTRIES: dict[str, EstimatorEntry] = {entry.name: entry for entry in _ENTRIES}
#: Every name ``estimator:`` takes.
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ENTRIES)
#: The estimators other than MeZO's own: each brings its report row(s).
ESTIMATORS: dict[str, EstimatorEntry] = {name: e for name, e in ENTRIES.items() if name != "mezo"}
#: The trial settings only one of those estimators reads, by estimator.
OWN_SETTINGS: dict[str, tuple[str, ...]] = {name: e.flat_keys for name, e in ESTIMATORS.items()}
#: Every estimator's own settings, in table order.
ALL_OWN_SETTINGS: tuple[str, ...] = tuple(key for keys in OWN_SETTINGS.values() for key in keys)
#: The settings that name an estimator's row (LOZO-M).
ROW_SETTINGS: tuple[str, ...] = tuple(key for e in ESTIMATORS.values() for key in e.row_settings)
#: The report rows of the estimators, in table order.
ROWS: tuple[str, ...] = tuple(row for e in ESTIMATORS.values() for row in e.rows)
