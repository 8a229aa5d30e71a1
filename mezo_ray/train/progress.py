"""The one-line progress report of a trial, as the recipe logs it and the search's terminal prints it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def method_name(method: str, estimator: str | None) -> str:
    """What a trial runs, in one word: its estimator for MeZO trials (``estimator``), else its method."""
    return (estimator or "mezo") if method == "mezo" else method


def progress_line(label: str, metrics: Mapping[str, Any], max_steps: int | None) -> str:
    """``[label] step 150/600 dev_acc 0.8950 (best 0.8950) dev_loss 0.3328 16.38 steps/s``; a trial's
    final report (the one with ``test_acc``) adds its test score and the step whose weights were
    selected. (Not Tune's ``done``: Tune sets it on whatever result a trial ended with.)"""
    final = "test_acc" in metrics
    if final and not metrics.get("step"):  # a baseline: no training
        return f"[{label}] dev_acc {metrics['dev_acc']:.4f} test_acc {metrics['test_acc']:.4f}"
    best = metrics["best_dev_acc"]
    line = f"[{label}] step {metrics['step']}/{max_steps} "
    if final:  # its dev_acc is the selected weights'
        return line + (
            f"best dev_acc {best:.4f}; test_acc {metrics['test_acc']:.4f} of the weights at step "
            f"{metrics['selected_step']}"
        )
    return line + (
        f"dev_acc {metrics['dev_acc']:.4f} (best {best:.4f}) dev_loss {metrics['dev_loss']:.4f} "
        f"{metrics['steps_per_s']:.2f} steps/s"
    )
