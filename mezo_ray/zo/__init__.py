"""The zeroth-order core: plain PyTorch, no Ray, no Hugging Face, no task knowledge.

``base.ZeroOrderOptimizer`` is what every estimator shares (counters, seed log, state dict, replay)
and ``sweeps.Sweeps`` how a * z(seed) meets the weights; an estimator (``MeZO``, ``FZOO``, ``HiZOO``,
``LOZO``) is one file that fills in its abstract methods. docs/DESIGN.md draws the layout.
"""

from mezo_ray.zo.base import DEFAULT_NO_DECAY, ZeroOrderOptimizer, replay, saved_setting
from mezo_ray.zo.fzoo import FZOO
from mezo_ray.zo.hizoo import HiZOO
from mezo_ray.zo.lozo import LOZO
from mezo_ray.zo.noise import DEFAULT_CHUNK_NUMEL, full_noise, local_tensor, mix_seed
from mezo_ray.zo.optimizer import MeZO
from mezo_ray.zo.record import NonFiniteLossError, StepRecord
from mezo_ray.zo.rules import VARIANTS

__all__ = [
    "DEFAULT_CHUNK_NUMEL",
    "DEFAULT_NO_DECAY",
    "FZOO",
    "LOZO",
    "VARIANTS",
    "HiZOO",
    "MeZO",
    "NonFiniteLossError",
    "StepRecord",
    "ZeroOrderOptimizer",
    "full_noise",
    "local_tensor",
    "mix_seed",
    "replay",
    "saved_setting",
]
