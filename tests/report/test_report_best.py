"""The best configuration per method (with the arguments that re-run it) and what a search cost."""

from __future__ import annotations

import shlex

from mezo_ray.report import from_experiment_dirs, render
from mezo_ray.report.select import best_configurations, search_cost
from mezo_ray.spaces import parse_filters, parse_overrides

RL = "roberta-large"


def test_the_best_configuration_is_the_best_mean_over_seeds_and_its_line_parses_back(tmp_path, writer):
    # seed 13's single best dev is lr 1e-6 (0.95), but lr 1e-7 is better on average (0.85 vs 0.75)
    devs = {(1e-6, 13): 0.95, (1e-6, 21): 0.55, (1e-7, 13): 0.85, (1e-7, 21): 0.85}
    for (lr, seed), dev in devs.items():
        writer.write_trial(
            tmp_path,
            writer.cfg(RL, "SST-2", "mezo", 16, seed, lr, estimator="mezo"),
            writer.curve(dev, 0.3, 0.5),
        )
    for eps, dev in ((1e-3, 0.6), (1e-4, 0.7)):  # FZOO: eps tuned, lr fixed
        config = writer.cfg(RL, "SST-2", "mezo", 16, 13, 1e-3, estimator="fzoo")
        writer.write_trial(tmp_path, {**config, "eps": eps}, writer.curve(dev, 0.3, 0.5))
    best = best_configurations(from_experiment_dirs(tmp_path).trials).set_index("row")
    assert best.loc["MeZO", "settings"] == {"lr": 1e-7} and best.loc["MeZO", "dev_acc"] == 0.85
    assert best.loc["FZOO", "settings"] == {"eps": 1e-4} and best.loc["FZOO", "seeds"] == 1
    assert best.loc["MeZO", "rerun"] == "--only estimator=mezo --set lr=1.0e-07"
    assert best.loc["FZOO", "rerun"] == "--only estimator=fzoo --set eps=0.0001"
    for row in ("MeZO", "FZOO"):  # what the CLI parses from the line is the selected configuration
        words = shlex.split(best.loc[row, "rerun"])
        assert parse_overrides(words[3::2]) == best.loc[row, "settings"]
        assert parse_filters(words[1:2]) == {"estimator": [row.lower()]}
    text = render(from_experiment_dirs(tmp_path))
    assert "### Best configurations" in text and "`--only estimator=mezo --set lr=1.0e-07`" in text


def test_the_search_cost_sums_every_trials_forward_passes_and_time(tmp_path, writer):
    expected_passes, expected_seconds = 0, 0.0
    for i, (steps, finished) in enumerate((((100, 200), True), ((100,), False), ((100, 200, 300), True))):
        reports = writer.curve(0.7, 0.3, 0.6 if finished else None, steps=steps)
        for n, report in enumerate(reports):
            report["time_total_s"] = 10.0 * (n + 1) + i
        writer.write_trial(tmp_path, writer.cfg(RL, "SST-2", "mezo", 16, 13, 1e-6 * (i + 1)), reports)
        expected_passes += reports[-1]["forward_passes"]
        expected_seconds += reports[-1]["time_total_s"]
    cost = search_cost(from_experiment_dirs(tmp_path).trials)
    assert cost == {
        "trials": 3,
        "finished": 2,
        "forward_passes": expected_passes,
        "trial_seconds": expected_seconds,
    }
    assert expected_seconds == 30 + 11 + 42  # each trial's last time_total_s
    line = f"Search cost: 3 trials (2 finished), {expected_passes:,} forward passes, 1m 23s of trial time"
    assert line in render(from_experiment_dirs(tmp_path))
