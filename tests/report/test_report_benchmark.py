"""``python -m mezo_ray.report --benchmark``: a benchmark's result, ranked by benchmarks/time_to_accuracy.py's
own ``rank`` and written by its ``save_result``, read back as a table with intervals and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mezo_ray.report.__main__ import main
from mezo_ray.report.benchmark import benchmark_figures, read_benchmark

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SEEDS = range(5)


def learning_curve(rate: float, seed: int, budget: int = 400) -> list[tuple[int, float]]:
    """Dev accuracy every 20 forward passes: from 0.5 toward 0.9 at ``rate`` per pass, seed-shifted."""
    return [(p, 0.9 - 0.4 * math.exp(-rate * p * (1 + 0.05 * seed))) for p in range(20, budget + 1, 20)]


@pytest.fixture
def ranked(monkeypatch, tmp_path) -> Path:
    """MeZO; 'fast' at twice its rate (its lr of two); 'flat', which never learns; the JSON's path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from machine import save_result
    from time_to_accuracy import rank

    def runs(rates: dict[float, float]) -> dict[int, list]:
        return {
            seed: [
                {
                    "seed": seed,
                    "lr": lr,
                    "curve": learning_curve(rate, seed),
                    "s_per_forward": 0.01 * (1 + rate),
                }
                for lr, rate in rates.items()
            ]
            for seed in SEEDS
        }

    by_method = {
        "MeZO": runs({1e-4: 0.01}),
        "fast": runs({1e-4: 0.01, 3e-4: 0.02}),
        "flat": runs({1e-4: 0.0}),
    }
    task = {"model": "m", "task": "t", "regime": "prompt-based", "settings": {}}
    result = {"tasks": {"m": rank(by_method, width=1) | task}, "settings": {}}
    return save_result("time_to_accuracy", result, tmp_path)


def test_rank_finds_the_cost_to_mezos_final_score_with_paired_intervals(ranked):
    task = read_benchmark(ranked)["tasks"]["m"]
    mezo, fast, flat = (task["methods"][m] for m in ("MeZO", "fast", "flat"))
    # the curves rise monotonically: MeZO first reaches its final score at the budget's end
    assert mezo["costs"] == [400.0] * 5 and mezo["forward_passes"] == [400.0, 400.0, 400.0]
    assert fast["best_lr"] == [3e-4] * 5 and fast["passes_ratio"] == [0.5, 0.5, 0.5]
    assert math.isinf(flat["forward_passes"][0]) and math.isinf(flat["passes_ratio"][1])
    separated = {(a, b) for a, b, _, _, _, split in task["pairs"] if split}
    assert separated == {("MeZO", "fast"), ("MeZO", "flat"), ("fast", "flat")}


def test_cli_prints_the_table_and_writes_the_plots_beside_the_result(ranked, capsys):
    assert main(["--benchmark", str(ranked)]) == 0
    out = capsys.readouterr()
    assert "| fast | 200 [200, 200] | 0.50 [0.50, 0.50] |" in out.out
    assert "| flat | inf [inf, inf] | inf [inf, inf] |" in out.out
    assert "Separated (the interval of the ratio excludes 1): MeZO / fast: 2.00 [2.00, 2.00]" in out.out
    png = ranked.parent / f"{ranked.stem}_m.png"
    assert png.is_file() and f"wrote {png}" in out.err


def test_seconds_timed_on_another_cpu_are_said_so_not_printed_as_nan(ranked, capsys):
    """time_to_accuracy --reuse leaves a run's seconds nan where another CPU timed them."""
    result = json.loads(ranked.read_text())
    result["tasks"]["m"]["methods"]["flat"] |= {"s_per_forward": math.nan, "time_ratio": math.nan}
    ranked.write_text(json.dumps(result))
    assert main(["--benchmark", str(ranked)]) == 0
    out = capsys.readouterr().out
    assert "| flat | inf [inf, inf] | inf [inf, inf] | not timed in this run |" in out
    assert "| fast | 200 [200, 200] | 0.50 [0.50, 0.50] | 0.0" in out and "nan" not in out


def test_the_curves_are_the_median_over_seeds_of_each_seeds_selected_lr(ranked):
    result = read_benchmark(ranked)
    curves_axes, cost_axes = benchmark_figures(result)["m.png"].axes
    lines = {line.get_label(): line for line in curves_axes.get_lines()}
    expected = np.median([[100 * s for _, s in learning_curve(0.02, seed)] for seed in SEEDS], axis=0)
    np.testing.assert_allclose(lines["fast"].get_ydata(), expected)
    assert [t.get_text() for t in cost_axes.get_yticklabels()] == ["flat", "fast", "MeZO"]


def test_cli_refuses_a_file_that_is_not_a_benchmark_result_by_name(tmp_path, capsys):
    (tmp_path / "other.json").write_text('{"rows": []}')
    assert main(["--benchmark", str(tmp_path / "other.json")]) == 2
    assert "other.json' is not a result of benchmarks/" in capsys.readouterr().err


def test_a_search_result_shows_each_searchers_fraction_of_the_grid_with_its_interval(tmp_path, capsys):
    machine = {"cpu": "c", "cpu_capability": "AVX2", "torch": "2.13", "gpu": None}
    searchers = {
        "ASHA": {"fraction_interval": [0.25, 0.1, 0.4], "reached": 1.0, "test": 0.85},
        "random (ASHA's budget)": {"fraction_interval": [0.5, 0.2, math.inf], "reached": 0.5, "test": 0.8},
    }
    result = {
        "benchmark": "search_efficiency", "date": "d", "commit": "c", "machine": machine,
        "command": "python benchmarks/search_efficiency.py", "task": {"model": "m", "task": "t"},
        "regime": "prompt-based", "grid_median": {"forward_passes": 24000}, "searchers": searchers,
    }  # fmt: skip
    path = tmp_path / "search.json"
    path.write_text(json.dumps(result))
    assert main(["--benchmark", str(path), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "| ASHA | 0.25 [0.10, 0.40] | 100% | 85.0 |" in out and "| 0.50 [0.20, inf] | 50% |" in out
    (ax,) = benchmark_figures(read_benchmark(path))["searchers.png"].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["random (ASHA's budget)", "ASHA"]
    assert (tmp_path / "plots" / "search_searchers.png").is_file()
