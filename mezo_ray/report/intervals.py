"""Intervals for a benchmark's costs: which methods (or searchers) a run separates, and which it does not.

A cost is the forward passes a run spent to reach a target, ``inf`` when it never did within the budget.
Runs are paired by seed (every method trains on the same data seed and training seed), so a comparison
resamples seeds, keeping each seed's costs together. Intervals are scipy's percentile bootstrap of the
median (95%, 10,000 resamples, seeded: the same figures on every run of the same results). A cost
that never reached the target stays ``inf``: an interval that ends at ``inf`` says "not within the
budget in some resamples", and a ratio of two ``inf`` costs is undecided (``nan``), never 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
#: Fewer seeds give no interval (a bootstrap of 1 or 2 values only repeats them).
MIN_SEEDS = 3
RESAMPLES = 10_000
#: Stands in for ``inf`` inside the bootstrap (scipy's percentiles need finite numbers).
_NEVER = 1e15


def _finite(costs: Sequence[float]) -> np.ndarray:
    return np.minimum(np.asarray(costs, dtype=float), _NEVER)


def _back(value: float) -> float:
    return math.inf if value >= _NEVER / 2 else float(value)


def median_interval(costs: Sequence[float]) -> tuple[float, float, float]:
    """(median, low, high): the median cost over seeds and its 95% bootstrap interval (``nan`` bounds
    from fewer than ``MIN_SEEDS`` seeds)."""
    data = _finite(costs)
    if len(data) < MIN_SEEDS:
        return _back(float(np.median(data))), math.nan, math.nan
    result = stats.bootstrap(
        (data,), np.median, method="percentile", confidence_level=LEVEL, n_resamples=RESAMPLES, random_state=0
    )
    low, high = result.confidence_interval
    return _back(float(np.median(data))), _back(low), _back(high)


def _ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """median(a) / median(b) along ``axis``; ``nan`` where both are never reached."""
    top, bottom = np.median(a, axis=axis), np.median(b, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bottom >= _NEVER / 2, np.where(top >= _NEVER / 2, np.nan, 0.0), top / bottom)
    return np.where(top >= _NEVER / 2, np.where(bottom >= _NEVER / 2, np.nan, np.inf), ratio)


def ratio_interval(costs: Sequence[float], baseline: Sequence[float]) -> tuple[float, float, float]:
    """(ratio, low, high): median(costs) / median(baseline) over the same seeds, with its 95% paired
    bootstrap interval (``nan`` bounds: too many resamples where neither reached the target)."""
    a, b = _finite(costs), _finite(baseline)
    if len(a) != len(b):
        raise ValueError(f"paired costs need the same seeds: {len(a)} against {len(b)}")
    value = float(_ratio(a, b))
    if len(a) < MIN_SEEDS:  # no interval, so never separated
        return value, math.nan, math.nan
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(a), size=(RESAMPLES, len(a)))
    ratios = _ratio(a[picks], b[picks], axis=1)
    if np.isnan(ratios).mean() > 1 - LEVEL:
        return value, math.nan, math.nan
    ratios = np.where(np.isnan(ratios), np.inf, ratios)  # neither reached: no evidence for the method
    low, high = np.quantile(ratios, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], method="inverted_cdf")
    return value, float(low), float(high)


def separated(costs: dict[str, Sequence[float]]) -> list[tuple[str, str, float, float, float]]:
    """Every pair (a, b, ratio, low, high) of methods, with the paired interval of median(a) / median(b):
    separated when the interval excludes 1."""
    return [(a, b, *ratio_interval(costs[a], costs[b])) for a, b in itertools.combinations(costs, 2)]


def is_separated(low: float, high: float) -> bool:
    """Whether an interval of a ratio excludes 1 (an undecided interval, ``nan``, does not)."""
    return high < 1 or low > 1


def interval_text(value: float, low: float, high: float, digits: int = 0) -> str:
    """``value [low, high]`` for a table; "undecided" and "[< 3 seeds]" where there is no interval."""
    if value != value:
        return "undecided"
    if low != low:
        return f"{value:,.{digits}f} [< {MIN_SEEDS} seeds]"
    return f"{value:,.{digits}f} [{low:,.{digits}f}, {high:,.{digits}f}]"
