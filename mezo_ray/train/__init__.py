"""The trial layer: a validated TrialConfig, the recipe that runs it, checkpoints, Ray wiring."""

from mezo_ray.train.config import TrialConfig, parse_trial_config
from mezo_ray.train.recipe import run_trial
from mezo_ray.train.session import LocalSession, RaySession, Session

__all__ = ["LocalSession", "RaySession", "Session", "TrialConfig", "parse_trial_config", "run_trial"]
