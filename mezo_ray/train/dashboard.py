"""A trial's progress as Ray metrics, labelled by experiment and trial name.

Ray's dashboard shows a search as one job, its trials as anonymous processes (``tune_trainable``,
``RayTrainWorker``) and no Train page; what it does export per process is ``ray.util.metrics``. These
gauges (dev accuracy, best dev accuracy, step, forward passes, steps/s) are set at every report, so
Prometheus scraping the node's metrics port (``ray start --metrics-export-port=8080``; Ray prefixes the
names with ``ray_``: ``ray_mezo_dev_acc{experiment=...,trial=...}``) and the dashboard's Metrics page
(with Grafana) show each trial's progress under its Tune trial name.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from functools import cache
from typing import Any

TAG_KEYS = ("experiment", "trial")

#: report key -> what the gauge holds; the gauge is named ``mezo_<key>``
GAUGES = {
    "dev_acc": "Dev accuracy at the trial's latest evaluation (its final report: of the selected weights)",
    "best_dev_acc": "Best dev accuracy of the trial so far",
    "step": "Optimizer steps the trial has taken",
    "forward_passes": "Forward passes the trial has spent (MeZO: two per perturbation)",
    "steps_per_s": "Optimizer steps per second since the trial's previous evaluation",
}


@cache
def _gauges() -> dict[str, Any]:
    """One Gauge per metric and process, made at the first report: Ray registers a metric by name per
    process, and making them at import would need a running Ray worker."""
    from ray.util.metrics import Gauge

    return {key: Gauge(f"mezo_{key}", description=text, tag_keys=TAG_KEYS) for key, text in GAUGES.items()}


class TrialGauges:
    """Sets the gauges from a trial's reports; one per trial, in the process that reports for it."""

    def __init__(self, experiment: str, trial: str) -> None:
        self.tags = {"experiment": experiment, "trial": trial}

    def set(self, metrics: Mapping[str, Any]) -> None:
        """Set every gauge whose key the report holds as a finite number (a report without a key, such
        as a baseline's, leaves its gauge as it was)."""
        gauges = _gauges()
        for key in GAUGES:
            value = metrics.get(key)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                continue
            gauges[key].set(float(value), tags=self.tags)
