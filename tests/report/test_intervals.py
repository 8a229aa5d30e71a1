"""Bootstrap intervals of a benchmark's costs, against the exact bootstrap distribution (every resample
of a few seeds enumerated) and closed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mezo_ray.report.intervals import is_separated, median_interval, ratio_interval, separated


def exact_ratio_quantiles(costs: list[float], baseline: list[float]) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of median(costs*) / median(baseline*) over all n^n paired
    resamples, each equally likely: the distribution the bootstrap samples from."""
    n = len(costs)
    ratios = sorted(
        float(np.median([costs[i] for i in pick]) / np.median([baseline[i] for i in pick]))
        for pick in itertools.product(range(n), repeat=n)
    )
    return ratios[math.ceil(0.025 * len(ratios)) - 1], ratios[math.ceil(0.975 * len(ratios)) - 1]


def test_paired_ratio_interval_is_the_exact_bootstraps_quantiles():
    costs, baseline = [100.0, 300.0, 200.0, 900.0], [400.0, 500.0, 300.0, 1000.0]
    ratio, low, high = ratio_interval(costs, baseline)
    assert ratio == pytest.approx(np.median(costs) / np.median(baseline))
    assert (low, high) == pytest.approx(exact_ratio_quantiles(costs, baseline))


def test_a_method_twice_as_fast_on_every_seed_is_separated_at_exactly_half():
    baseline = [400.0, 800.0, 600.0, 1000.0, 200.0]
    ratio, low, high = ratio_interval([c / 2 for c in baseline], baseline)
    assert (ratio, low, high) == (0.5, 0.5, 0.5)
    assert is_separated(low, high)


def test_median_interval_brackets_the_median_and_is_degenerate_without_spread():
    value, low, high = median_interval([300.0, 100.0, 200.0, 500.0, 400.0])
    assert value == 300.0 and 100.0 <= low <= value <= high <= 500.0 and low < high
    assert median_interval([70.0] * 5) == (70.0, 70.0, 70.0)
    value, low, high = median_interval([70.0, 70.0])  # two seeds: no interval
    assert value == 70.0 and math.isnan(low) and math.isnan(high)
    ratio, low, high = ratio_interval([35.0, 35.0], [70.0, 70.0])
    assert ratio == 0.5 and not is_separated(low, high)


def test_never_reached_stays_infinite_and_two_nevers_are_undecided():
    value, low, high = median_interval([100.0, math.inf, math.inf])
    assert math.isinf(value) and low == 100.0 and math.isinf(high)
    ratio, low, high = ratio_interval([math.inf] * 3, [100.0, 200.0, 300.0])
    assert math.isinf(ratio) and math.isinf(low) and is_separated(low, high)  # never: slower than any
    ratio, low, high = ratio_interval([math.inf] * 3, [math.inf] * 3)
    assert math.isnan(ratio) and math.isnan(low) and not is_separated(low, high)


def test_separated_pairs_every_method_with_its_paired_ratio():
    costs = {"MeZO": [400.0, 800.0, 600.0], "fast": [100.0, 200.0, 150.0], "same": [400.0, 800.0, 600.0]}
    pairs = {(a, b): (ratio, is_separated(low, high)) for a, b, ratio, low, high in separated(costs)}
    assert set(pairs) == {("MeZO", "fast"), ("MeZO", "same"), ("fast", "same")}
    assert pairs[("MeZO", "fast")] == (4.0, True)
    assert pairs[("MeZO", "same")] == (1.0, False)
    with pytest.raises(ValueError, match="same seeds: 2 against 3"):
        ratio_interval([1.0, 2.0], [1.0, 2.0, 3.0])
