"""benchmarks/time_to_accuracy.py's ``--reuse``: an earlier result's runs whose trial settings are a job's
are taken from it, the others run; its own curves (``curve``) are faked here, the bookkeeping is not."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmark(monkeypatch):
    """The module, with ``curve`` recording the trial settings it is given and the pool in-process."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import time_to_accuracy

    ran: list[dict] = []

    def curve(settings: dict) -> tuple[list[tuple[int, float]], float]:
        ran.append(settings)
        return [(20, 0.6 + settings["seed"] / 100), (40, 0.7 + settings["lr"])], 0.01 * len(ran)

    monkeypatch.setattr(time_to_accuracy, "curve", curve)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", concurrent.futures.ThreadPoolExecutor)
    return time_to_accuracy, ran


def options(**changes) -> argparse.Namespace:
    base = dict(
        tasks=["tiny-mlm"], methods=["MeZO", "FZOO"], seeds=2, lr_points=1, budget=40, eval_passes=20,
        smooth=1, batch_size=4, lr_scale=None, jobs=1, reuse=None,
    )  # fmt: skip
    return argparse.Namespace(**base | changes)


def write(folder: Path, args: argparse.Namespace, tasks: dict) -> Path:
    from machine import save_result

    return save_result("time_to_accuracy", {"tasks": tasks, "settings": vars(args)}, folder)


def runs_of(tasks: dict, method: str) -> list[dict]:
    return tasks["tiny-mlm"]["methods"][method]["runs"]


def test_reuse_runs_only_the_jobs_the_earlier_result_lacks(benchmark, tmp_path):
    module, ran = benchmark
    first = module.run(options())
    assert len(ran) == 4  # MeZO and FZOO, two seeds each
    path = write(tmp_path, options(), first)

    ran.clear()
    second = module.run(options(methods=["MeZO", "HiZOO"], reuse=path))
    assert [s["estimator"] for s in ran] == ["hizoo", "hizoo"]  # MeZO's two runs came from the file
    mezo_then, mezo_now = runs_of(first, "MeZO"), runs_of(second, "MeZO")
    assert [r["curve"] for r in mezo_now] == [[list(p) for p in r["curve"]] for r in mezo_then]
    assert [r["s_per_forward"] for r in mezo_now] == [r["s_per_forward"] for r in mezo_then]
    assert all(r["reused_from"].startswith(path.name) for r in mezo_now)
    assert not any("reused_from" in r for r in runs_of(second, "HiZOO"))


def test_a_run_with_other_settings_is_rerun(benchmark, tmp_path):
    module, ran = benchmark
    path = write(tmp_path, options(), module.run(options()))
    ran.clear()
    module.run(options(budget=60, reuse=path))  # every trial's max_forward_passes differs
    assert len(ran) == 4


def test_a_result_without_run_settings_has_them_rebuilt_from_its_options(benchmark, tmp_path):
    module, ran = benchmark
    path = write(tmp_path, options(), module.run(options()))
    result = json.loads(path.read_text())
    for method in ("MeZO", "FZOO"):
        for run in runs_of(result["tasks"], method):
            del run["settings"]
    path.write_text(json.dumps(result))
    ran.clear()
    module.run(options(reuse=path))
    assert ran == []


def test_reuse_refuses_another_benchmarks_result(benchmark, tmp_path):
    module, _ = benchmark
    from machine import save_result

    other = save_result("search_efficiency", {"settings": {}}, tmp_path)
    with pytest.raises(SystemExit, match=r"not a result of benchmarks/time_to_accuracy\.py"):
        module.run(options(reuse=other))


def test_seconds_timed_on_another_cpu_do_not_count(benchmark, tmp_path):
    module, ran = benchmark
    path = write(tmp_path, options(), module.run(options()))
    result = json.loads(path.read_text())
    result["machine"]["cpu"] = "another CPU"
    path.write_text(json.dumps(result))
    ran.clear()
    again = module.run(options(reuse=path))
    assert ran == []
    mezo = runs_of(again, "MeZO")
    assert all(r["s_per_forward"] != r["s_per_forward"] for r in mezo)  # nan: not a ratio's
    assert [r["s_per_forward_elsewhere"] for r in mezo] == [
        r["s_per_forward"] for r in runs_of(result["tasks"], "MeZO")
    ]
    assert (
        again["tiny-mlm"]["methods"]["FZOO"]["time_ratio"]
        != again["tiny-mlm"]["methods"]["FZOO"]["time_ratio"]
    )
