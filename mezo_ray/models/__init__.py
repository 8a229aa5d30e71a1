"""The model layer: load a model in a fine-tuning mode, and heads that turn task examples into losses."""

from mezo_ray.models.baselines import (
    LinearProbe,
    icl_contexts,
    icl_evaluate,
    init_head_from_probe,
    linear_probe,
    zero_shot,
)
from mezo_ray.models.heads import CausalLMHead, MaskedLMHead, SequenceClassificationHead, make_head
from mezo_ray.models.loading import DTYPES, FAMILIES, LoadedModel, ModelSpec, load_model
from mezo_ray.models.modes import MODES
from mezo_ray.models.tiny import TinyModels, ensure_tiny_models

__all__ = [
    "DTYPES",
    "FAMILIES",
    "MODES",
    "CausalLMHead",
    "LinearProbe",
    "LoadedModel",
    "MaskedLMHead",
    "ModelSpec",
    "SequenceClassificationHead",
    "TinyModels",
    "ensure_tiny_models",
    "icl_contexts",
    "icl_evaluate",
    "init_head_from_probe",
    "linear_probe",
    "load_model",
    "make_head",
    "zero_shot",
]
