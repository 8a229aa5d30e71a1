"""The model layer: load a model in a fine-tuning mode, and heads that turn task examples into losses.

Names are imported from their module on first use (PEP 562): the CLI's process finds the tiny models
(``mezo_ray.models.tiny``) without importing transformers' and peft's model code, seconds on a
laptop, which only the processes that train need.
"""

from __future__ import annotations

import importlib
from typing import Any

#: each public name -> the module that defines it (imported on first use)
_MODULE_OF = {
    **dict.fromkeys(
        ("LinearProbe", "icl_contexts", "icl_evaluate", "init_head_from_probe", "linear_probe", "zero_shot"),
        "baselines",
    ),
    **dict.fromkeys(("CausalLMHead", "MaskedLMHead", "SequenceClassificationHead", "make_head"), "heads"),
    **dict.fromkeys(("DTYPES", "FAMILIES", "LoadedModel", "ModelSpec", "load_model"), "loading"),
    "MODES": "modes",
    **dict.fromkeys(("TinyModels", "ensure_tiny_models"), "tiny"),
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'mezo_ray.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mezo_ray.models.{_MODULE_OF[name]}"), name)
