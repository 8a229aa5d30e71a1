"""The gradient estimators a MeZO trial can name (``estimator:``), in one table that train, tune and
report read. Torch-free: the report and the dry run import it without loading torch.

An entry says what the rest of the package needs to know of an estimator beyond its file in ``zo``:
its optimizer class (imported only when a trial builds it), the trial settings it reads and the
keyword each becomes, its forward passes per step (for dry runs and budgets), and its report row. A new
estimator is its file in ``zo``, one entry here, and its own trial settings (``train/config.py``).
MeZO's own estimate (``estimator: mezo``) takes the general MeZO settings (update rule, n-SPSA,
layer-wise, per-group scales), which the recipe passes it; the others refuse those by name (the
trial config's check).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EstimatorEntry:
    """One estimator: how to build it from a trial's settings, and how the report names it."""

    name: str  # what a trial sets: estimator: fzoo
    builder: str  # "module:Class" in mezo_ray.zo, imported lazily
    settings: Mapping[str, str] = field(default_factory=dict)  # trial setting -> the builder's keyword
    passes_per_step: Callable[[Mapping[str, Any]], int] = lambda settings: 2
    rows: tuple[str, ...] = ()  # its report rows, in the order tables show them
    row: Callable[[Mapping[str, Any]], str] | None = None  # which of ``rows`` a trial is (default: the first)
    row_settings: tuple[str, ...] = ()  # the settings ``row`` reads
    weight_decay: bool = True  # whether its update applies the trial's weight decay

    def row_label(self, settings: Mapping[str, Any]) -> str:
        return self.row(settings) if self.row is not None else self.rows[0]

    def build(self, params: Any, settings: Mapping[str, Any], **common: Any) -> Any:
        """The optimizer over ``params`` for a trial with ``settings`` (and ``common``: lr, eps, seed...)."""
        module, name = self.builder.split(":")
        cls = getattr(importlib.import_module(module), name)
        own = {keyword: settings[key] for key, keyword in self.settings.items()}
        if self.weight_decay:
            own["weight_decay"] = settings["weight_decay"]
        return cls(params, **own, **common)


def _lozo_row(settings: Mapping[str, Any]) -> str:
    momentum = settings.get("lozo_momentum")
    return "LOZO-M" if momentum not in (None, "") and float(momentum) else "LOZO"


_ENTRIES = (
    EstimatorEntry(  # arXiv 2506.09034: N one-sided Rademacher probes, normalised by their spread
        name="fzoo",
        builder="mezo_ray.zo.fzoo:FZOO",
        settings={"n_probes": "n_probes"},
        passes_per_step=lambda settings: int(settings["n_probes"]) + 1,
        rows=("FZOO",),
        weight_decay=False,
    ),
    EstimatorEntry(  # arXiv 2402.15173: z scaled by a diagonal Hessian estimate
        name="hizoo",
        builder="mezo_ray.zo.hizoo:HiZOO",
        settings={"hessian_smooth": "hessian_smooth"},
        passes_per_step=lambda settings: 3,
        rows=("HiZOO",),
    ),
    EstimatorEntry(  # arXiv 2410.07698: rank-r perturbations U V^T of each matrix
        name="lozo",
        builder="mezo_ray.zo.lozo:LOZO",
        settings={"lozo_rank": "rank", "lozo_interval": "interval", "lozo_momentum": "beta"},
        passes_per_step=lambda settings: 2,
        rows=("LOZO", "LOZO-M"),
        row=_lozo_row,
        row_settings=("lozo_momentum",),
    ),
)
#: The estimators other than MeZO's own, by the name a trial gives.
ESTIMATORS: dict[str, EstimatorEntry] = {entry.name: entry for entry in _ENTRIES}
#: The trial settings only MeZO's own estimate reads (update rules, n-SPSA, per-group scales, layer-wise
#: steps, perturbing in the forward), with the values that leave them unused: a trial of another
#: estimator that sets one otherwise is refused, by name (``TrialConfig``).
MEZO_ONLY: dict[str, tuple[Any, ...]] = {
    "zo_variant": ("sgd",),
    "n_perturbations": (1,),
    "perturbation_scale": ("none",),
    "layer_wise": (False,),
    "perturbation": (None, "in_place"),
}
#: Every name ``estimator:`` takes: MeZO's own estimate, then the table's.
ESTIMATOR_NAMES: tuple[str, ...] = ("mezo", *ESTIMATORS)
#: The trial settings only one estimator reads, by estimator.
OWN_SETTINGS: dict[str, tuple[str, ...]] = {name: tuple(e.settings) for name, e in ESTIMATORS.items()}
#: Every estimator's own settings, in table order.
ALL_OWN_SETTINGS: tuple[str, ...] = tuple(key for keys in OWN_SETTINGS.values() for key in keys)
#: The settings that name an estimator's row (LOZO-M).
ROW_SETTINGS: tuple[str, ...] = tuple(key for e in ESTIMATORS.values() for key in e.row_settings)
#: The report rows of the estimators, in table order.
ROWS: tuple[str, ...] = tuple(row for e in ESTIMATORS.values() for row in e.rows)
