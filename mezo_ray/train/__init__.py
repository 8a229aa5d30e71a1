"""The trial layer: a validated TrialConfig, the recipe that runs it, checkpoints, Ray wiring.

The recipe and sessions (torch, transformers, Ray Train) load on first use, so that the command
line's ``--list`` / ``--dry-run``, which need only ``mezo_ray.train.config``, start in a second.
"""

from typing import Any

from mezo_ray.train.config import TrialConfig, parse_trial_config

_LAZY = {
    "run_trial": "mezo_ray.train.recipe",
    "LocalSession": "mezo_ray.train.session",
    "RaySession": "mezo_ray.train.session",
    "Session": "mezo_ray.train.session",
}

__all__ = ["LocalSession", "RaySession", "Session", "TrialConfig", "parse_trial_config", "run_trial"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mezo_ray.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
