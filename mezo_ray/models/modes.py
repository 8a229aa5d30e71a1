"""Fine-tuning modes: which parameters a trial trains (and MeZO perturbs).

- ``full``: every parameter.
- ``lora``: peft LoRA on the attention query/value projections (RoBERTa ``query``/``value``, OPT
  ``q_proj``/``v_proj``), r=8, alpha=16, no dropout. peft keeps B·A as a separate branch in eval(),
  so perturbing A/B changes the forward; the paper's loralib merged them on eval() and its RoBERTa
  "MeZO (LoRA)" silently trained only the LM head (protocol §1.4).
- ``prefix``: peft prefix tuning, ``num_prefix`` key/value vectors per attention layer, no
  reparameterisation, initialised from the real keys/values of uniformly random vocabulary tokens
  (paper: ``--prefix_init_by_real_act``). peft passes the prefix as a KV cache, so the input's
  positions start after the prefix (the paper's hooks left them unshifted); in exchange the model
  behaves exactly as if the random tokens preceded the input (for OPT at every layer).
- ``head``: the output projection (LM head) alone, untied from the input embeddings: the paper's
  "head tuning", its LP baseline for OPT tasks that are not classification (protocol §2.3). On a
  ``seq_cls`` model (``prompt: false``): its classifier alone, a linear probe of the frozen encoder.
- ``lm_head``: the whole ``lm_head`` module (RoBERTa: dense, layer norm, decoder and bias; OPT: the
  projection), and ``lora+lm_head``: LoRA plus that module. What the paper's RoBERTa code trained
  with ``--apply_lora``: its freeze rule froze only ``roberta.*``, and loralib merges B·A into the
  weights on eval(), which its MeZO loop calls before every forward and never undoes, so MeZO moved
  the LM head alone (``lm_head``) while FT, whose steps call train(), also trained LoRA
  (``lora+lm_head``). A trial asks for them as ``mode=lora_as_published``.
For ``seq_cls`` models peft also trains the (randomly initialised) classifier in lora/prefix mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

if TYPE_CHECKING:
    from mezo_ray.models.loading import ModelSpec

MODES: tuple[str, ...] = ("full", "lora", "prefix", "head", "lm_head", "lora+lm_head")
#: Modes that train the output projection but not the input embeddings: they get an untied copy.
HEAD_MODES: tuple[str, ...] = ("head", "lm_head", "lora+lm_head")

# LoRA targets per architecture (GPT-2 fuses q, k, v in c_attn: LoRA adapts all three there); other
# architectures: the Linear layers named like these are found.
_QUERY_VALUE = {
    "roberta": ("query", "value"),
    "bert": ("query", "value"),
    "opt": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
}
_QUERY_VALUE_NAMES = (("q_proj", "v_proj"), ("query", "value"))
# The prefix is initialised from the keys / values a layer computes, read where they leave their
# projections: exact where positions do not rotate them afterwards (absolute positions: RoBERTa, BERT,
# OPT; under rotary embeddings, Llama-style, the cached keys are the rotated ones).
_PREFIX_MODEL_TYPES = ("roberta", "bert", "opt")
_KEY_VALUE_SUFFIXES = (
    ("attention.self.key", "attention.self.value"),
    ("self_attn.k_proj", "self_attn.v_proj"),
)
_TASK_TYPES = {"mlm": TaskType.FEATURE_EXTRACTION, "causal": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS}


def apply_mode(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    """Returns the model for ``spec.mode`` (peft-wrapped for lora/prefix) with only its parameters trainable.

    New parameters are drawn under ``torch.manual_seed(spec.init_seed)`` without touching the global RNG.
    """
    if spec.mode in ("full", "head", "lm_head"):
        if spec.mode == "lm_head":
            module = _lm_head(model, spec)
        else:
            module = _output_projection(model, spec) if spec.mode == "head" else model
        trainable = {id(p) for p in module.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        return model
    device = next(model.parameters()).device
    in_float32 = spec.arithmetic == "float32"  # else the adapters stay in the model's dtype (the paper's)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.init_seed)
        if spec.mode in ("lora", "lora+lm_head"):
            lm_head = _lm_head(model, spec) if spec.mode == "lora+lm_head" else None
            peft_model = get_peft_model(model, _lora_config(model, spec), autocast_adapter_dtype=in_float32)
            for p in lm_head.parameters() if lm_head is not None else ():
                p.requires_grad_(True)
            return peft_model
        if model.config.model_type not in _PREFIX_MODEL_TYPES:
            raise ValueError(
                f"mode='prefix' supports model types {list(_PREFIX_MODEL_TYPES)}: its initialisation reads "
                f"keys and values as they leave their projections, which model_type="
                f"{model.config.model_type!r} fuses or rotates afterwards; use mode 'lora' or 'full'"
            )
        ids = prefix_init_ids(model.config.vocab_size, spec.num_prefix, spec.init_seed)
        prefix_init = real_key_values(model, ids)
        config = PrefixTuningConfig(
            task_type=_TASK_TYPES[spec.family], num_virtual_tokens=spec.num_prefix, prefix_projection=False
        )
        peft_model = get_peft_model(model, config)
        encoder = peft_model.prompt_encoder[peft_model.active_adapter]
        dtype = next(model.parameters()).dtype
        encoder.to(torch.promote_types(dtype, torch.float32) if in_float32 else dtype)
        embedding = encoder.embedding.weight
        with torch.no_grad():
            embedding.copy_(prefix_init.to(embedding.dtype))
        return peft_model


def _output_projection(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    """The LM head's projection; for a ``seq_cls`` model its classifier (BERT / RoBERTa ``classifier``,
    decoder models ``score``): head tuning on a frozen encoder is then a linear probe."""
    if spec.family == "seq_cls":
        module = getattr(model, "classifier", None) or getattr(model, "score", None)
    else:
        module = model.get_output_embeddings()
    if module is None:
        what = "classifier (`classifier` / `score`)" if spec.family == "seq_cls" else "output projection"
        raise ValueError(f"mode='head': model {spec.name_or_path!r} has no {what} to train")
    return module


def lm_head_module(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module that turns final hidden states into vocabulary logits (``lm_head``; BERT: ``cls``)."""
    return getattr(model, "lm_head", None) or getattr(model, "cls", None)


def _lm_head(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    module = lm_head_module(model)
    if module is None:
        raise ValueError(f"mode={spec.mode!r}: model {spec.name_or_path!r} has no `lm_head` module to train")
    return module


@torch.no_grad()
def merge_lora_and_restart(model: torch.nn.Module, seed: int) -> int:
    """XGBLoRA's boosting round: fold every LoRA update (B A, scaled) into its base weight, then start
    a fresh adapter in place (A drawn anew under ``seed``, B = 0), so the model computes the same
    function and training goes on in a new low-rank subspace. Returns the number of layers merged."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for layer in layers:
            for adapter in layer.lora_A:
                base = layer.get_base_layer().weight
                base.add_(layer.get_delta_weight(adapter).to(base.dtype))
                layer.reset_lora_parameters(adapter, True)  # in place: optimizers keep their tensors
    return len(layers)


def lora_targets(model: torch.nn.Module) -> tuple[str, ...]:
    """The attention projections LoRA adapts: per architecture, else the Linear layers named q_proj /
    v_proj or query / value."""
    model_type = model.config.model_type
    if model_type in _QUERY_VALUE:
        return _QUERY_VALUE[model_type]
    linear_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for names in _QUERY_VALUE_NAMES:
        if set(names) <= linear_names:
            return names
    raise ValueError(
        f"mode='lora' cannot find the query / value projections of model_type={model_type!r}: no Linear "
        f"layers named {' / '.join('+'.join(n) for n in _QUERY_VALUE_NAMES)} (known architectures: "
        f"{sorted(_QUERY_VALUE)}); use mode 'full' or 'prefix'"
    )


def _lora_config(model: torch.nn.Module, spec: ModelSpec) -> LoraConfig:
    return LoraConfig(
        task_type=_TASK_TYPES[spec.family],
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(lora_targets(model)),
        bias="none",
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
    )


def prefix_init_ids(vocab_size: int, num_prefix: int, seed: int) -> torch.Tensor:
    """Returns the (1, num_prefix) uniformly random token ids whose activations initialise the prefix."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, num_prefix), generator=generator)


@torch.no_grad()
def real_key_values(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Returns (P, layers * 2 * hidden): every layer's keys then values when the model reads ``ids`` (1, P).

    That is the layout of peft's prefix embedding (viewed as (P, layers * 2, heads, head_dim)).
    """
    device = next(model.parameters()).device
    ids = ids.to(device)
    num_prefix = ids.shape[1]
    captured: dict[str, torch.Tensor] = {}
    names, hooks = [], []
    for name, module in model.named_modules():
        if any(name.endswith(suffix) for pair in _KEY_VALUE_SUFFIXES for suffix in pair):
            names.append(name)
            hooks.append(module.register_forward_hook(_store(captured, name)))
    if not hooks:
        raise ValueError(
            f"mode='prefix' cannot find key/value projections in model_type={model.config.model_type!r}; "
            f"looked for module names ending in {_KEY_VALUE_SUFFIXES}"
        )
    try:
        model.base_model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    # named_modules() is in layer order and each layer defines its key before its value.
    per_layer = torch.stack([captured[name][0] for name in names])  # (layers * 2, P, hidden)
    return per_layer.transpose(0, 1).reshape(num_prefix, -1).float()


def _store(captured: dict[str, torch.Tensor], name: str):
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured[name] = output.detach()

    return hook
