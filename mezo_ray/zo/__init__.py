"""The MeZO optimizer core: plain PyTorch, no Ray, no Hugging Face, no task knowledge."""

from mezo_ray.zo.fzoo import FZOO
from mezo_ray.zo.hizoo import HiZOO
from mezo_ray.zo.lozo import LOZO
from mezo_ray.zo.noise import DEFAULT_CHUNK_NUMEL, full_noise, local_tensor, mix_seed
from mezo_ray.zo.optimizer import (
    DEFAULT_NO_DECAY,
    VARIANTS,
    MeZO,
    NonFiniteLossError,
    StepRecord,
    microbatch_mean,
    replay,
    saved_setting,
)

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
    "full_noise",
    "local_tensor",
    "microbatch_mean",
    "mix_seed",
    "replay",
    "saved_setting",
]
