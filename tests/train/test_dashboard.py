"""The per-trial gauges Ray's metrics show (mezo_ray.train.dashboard) and RaySession setting them."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import numpy as np
import pytest

from mezo_ray.train import dashboard, session

EXPECTED = {
    "mezo_dev_acc": 0.75,
    "mezo_best_dev_acc": 0.8,
    "mezo_step": 300.0,
    "mezo_forward_passes": 600.0,
    "mezo_steps_per_s": 12.5,
}


class FakeGauge:
    """Records what ray.util.metrics.Gauge would: its definition and every set."""

    made: ClassVar[list[FakeGauge]] = []

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None) -> None:
        self.name, self.description, self.tag_keys = name, description, tag_keys
        self.sets: list[tuple[float, dict[str, str]]] = []
        FakeGauge.made.append(self)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert type(value) is float  # Ray refuses numpy integers
        self.sets.append((value, dict(tags or {})))


@pytest.fixture
def gauges(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeGauge]:
    """The gauges the component makes, by name, made with FakeGauge in place of Ray's."""
    import ray.util.metrics

    FakeGauge.made = []
    monkeypatch.setattr(ray.util.metrics, "Gauge", FakeGauge)
    dashboard._gauges.cache_clear()
    yield _ByName()
    dashboard._gauges.cache_clear()  # the next user gets Ray's own Gauge


class _ByName(dict):
    def __missing__(self, name: str) -> FakeGauge:
        (gauge,) = [g for g in FakeGauge.made if g.name == name]
        return gauge


def report(step: int = 300) -> dict[str, Any]:
    """A report as the recipe makes it at an evaluation (numpy scalars included)."""
    return {
        "step": np.int64(step),
        "forward_passes": 2 * step,
        "dev_acc": np.float32(0.75),
        "best_dev_acc": 0.8,
        "dev_loss": 0.4,
        "steps_per_s": 12.5,
        "selection": "dev_acc",
    }


def test_a_report_sets_each_gauge_with_the_trial_tags(gauges):
    dashboard.TrialGauges("demo", "tune_trainable_72e92_00002").set(report())

    assert sorted(g.name for g in FakeGauge.made) == sorted(EXPECTED)
    tags = {"experiment": "demo", "trial": "tune_trainable_72e92_00002"}
    for name, value in EXPECTED.items():
        assert gauges[name].tag_keys == ("experiment", "trial")
        assert gauges[name].sets == [(value, tags)]


def test_gauges_are_made_once_per_process_and_series_kept_apart_by_trial(gauges):
    first, second = dashboard.TrialGauges("demo", "a"), dashboard.TrialGauges("demo", "b")
    first.set(report(150))
    second.set(report(300))
    first.set(report(450))

    assert len(FakeGauge.made) == len(EXPECTED)  # Ray registers a metric name once per process
    assert [(v, t["trial"]) for v, t in gauges["mezo_step"].sets] == [
        (150.0, "a"),
        (300.0, "b"),
        (450.0, "a"),
    ]


def test_keys_missing_or_not_finite_numbers_leave_their_gauges_alone(gauges):
    dashboard.TrialGauges("demo", "t").set(
        {"dev_acc": 0.5, "best_dev_acc": float("nan"), "step": True, "steps_per_s": "fast"}
    )

    assert gauges["mezo_dev_acc"].sets == [(0.5, {"experiment": "demo", "trial": "t"})]
    for name in ("mezo_best_dev_acc", "mezo_step", "mezo_forward_passes", "mezo_steps_per_s"):
        assert gauges[name].sets == []


class FakeApi:
    """ray.tune / ray.train as RaySession uses them: a context and report."""

    Checkpoint = None

    def __init__(self, context: Any) -> None:
        self.context, self.reports = context, []

    def get_context(self) -> Any:
        return self.context

    def report(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        self.reports.append(metrics)


def ray_session(
    monkeypatch: pytest.MonkeyPatch, api: str, context: Any, **kwargs: Any
) -> tuple[Any, FakeApi]:
    import ray

    fake = FakeApi(context)
    monkeypatch.setattr(session, "importlib", types.SimpleNamespace(import_module=lambda name: fake))
    runtime = types.SimpleNamespace(get_node_id=lambda: "node-1")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: runtime)
    return session.RaySession(api, **kwargs), fake


def tune_context() -> Any:
    return types.SimpleNamespace(
        get_trial_dir=lambda: "/tmp/trial",
        get_experiment_name=lambda: "demo",
        get_trial_name=lambda: "tune_trainable_72e92_00000",
    )


def train_context(rank: int) -> Any:
    storage = types.SimpleNamespace(
        storage_filesystem=types.SimpleNamespace(type_name="local"), experiment_fs_path="/tmp/run"
    )
    return types.SimpleNamespace(
        get_world_rank=lambda: rank,
        get_world_size=lambda: 2,
        get_storage=lambda: storage,
        get_experiment_name=lambda: "train-72e92_00001",
    )


def test_a_tune_trial_labels_its_gauges_with_its_own_trial_name(gauges, monkeypatch):
    trial_session, api = ray_session(monkeypatch, "tune", tune_context())
    trial_session.report(report(), None)

    assert api.reports[0]["node_id"] == "node-1" and api.reports[0]["step"] == 300
    assert gauges["mezo_step"].sets == [
        (300.0, {"experiment": "demo", "trial": "tune_trainable_72e92_00000"})
    ]


def test_rank_0_of_a_train_run_sets_the_gauges_under_the_trial_it_was_given(gauges, monkeypatch):
    trial = ("demo", "tune_trainable_72e92_00001")
    rank0, _ = ray_session(monkeypatch, "train", train_context(0), trial=trial)
    rank1, api1 = ray_session(monkeypatch, "train", train_context(1), trial=trial)
    rank1.report(report(150), None)
    rank0.report(report(300), None)

    assert len(api1.reports) == 1  # every rank still reports to Train
    assert gauges["mezo_step"].sets == [
        (300.0, {"experiment": "demo", "trial": "tune_trainable_72e92_00001"})
    ]


def test_a_train_run_without_a_trial_is_labelled_by_its_run_name(gauges, monkeypatch):
    run_session, _ = ray_session(monkeypatch, "train", train_context(0))
    run_session.report(report(), None)

    tags = {"experiment": "train-72e92_00001", "trial": "train-72e92_00001"}
    assert gauges["mezo_dev_acc"].sets == [(0.75, tags)]
