"""Load a Hugging Face model + tokenizer for one trial: family, dtype, fine-tuning mode.

``load_model(ModelSpec(...))`` returns a ``LoadedModel`` in ``eval()`` mode (MeZO forwards never use
dropout) whose ``trainable_named_parameters()`` are exactly the parameters the mode trains (and that
MeZO perturbs); every other parameter has ``requires_grad=False``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mezo_ray.models.modes import HEAD_MODES, MODES, apply_mode

Family = Literal["mlm", "causal", "seq_cls"]
FAMILIES: tuple[str, ...] = ("mlm", "causal", "seq_cls")
ARITHMETIC: tuple[str, ...] = ("float32", "model")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,  # for checks whose two paths round differently (workers' parity), not speed
}
_AUTO_CLASSES = {
    "mlm": AutoModelForMaskedLM,
    "causal": AutoModelForCausalLM,
    "seq_cls": AutoModelForSequenceClassification,  # the paper's no-prompt ablation (Table 5)
}


@dataclass(frozen=True)
class ModelSpec:
    """What to load: hub name or local path, model family, dtype and fine-tuning mode.

    ``family``: ``mlm`` (masked LM, prompt + label words), ``causal`` (causal LM, prompt + candidates)
    or ``seq_cls`` (sequence classification head, needs ``num_labels``). ``init_seed`` seeds the
    mode's new parameters (LoRA A, the random tokens whose activations initialise the prefix), so
    the same spec always gives the same starting point.

    ``untie_word_embeddings``: give the output projection its own copy of the input embeddings, so
    full-parameter MeZO perturbs them with separate noise. ``None`` = the paper's model per family:
    untied for ``mlm`` (its RobertaModelForPromptFinetuning has no tie, protocol §1.1) and for
    the modes that train the head without the embeddings (``HEAD_MODES``), as loaded otherwise (OPT
    ties them, §2.3).
    ``opt_bos_quirk``: start OPT prompts with id 0 instead of the tokenizer's BOS, as the paper's
    code does (``tokenizer.bos_token_id = 0``, protocol §2.3).
    ``arithmetic``: ``float32`` computes losses (log-softmax, cross-entropy) from float32 logits and
    keeps LoRA / prefix parameters in float32 whatever ``dtype`` is; ``model`` keeps both in ``dtype``,
    as the paper's float16 OPT runs did (``--load_float16``: fp16 logits, losses and adapters).
    """

    name_or_path: str
    family: Family
    dtype: str = "float32"
    mode: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    num_prefix: int = 5
    trust_remote_code: bool = False
    device: str = "cpu"
    num_labels: int | None = None
    init_seed: int = 0
    untie_word_embeddings: bool | None = None
    opt_bos_quirk: bool = True
    arithmetic: str = "float32"

    def __post_init__(self) -> None:
        _check(self.family in FAMILIES, "family", self.family, FAMILIES)
        _check(self.arithmetic in ARITHMETIC, "arithmetic", self.arithmetic, ARITHMETIC)
        _check(self.dtype in DTYPES, "dtype", self.dtype, tuple(DTYPES))
        _check(self.mode in MODES, "mode", self.mode, MODES)
        _check(self.lora_r > 0, "lora_r", self.lora_r, "a positive int")
        _check(self.num_prefix > 0, "num_prefix", self.num_prefix, "a positive int")
        _check(
            self.family != "seq_cls" or (self.num_labels or 0) > 1,
            "num_labels",
            self.num_labels,
            "an int >= 2 when family='seq_cls'",
        )


@dataclass
class LoadedModel:
    """A model ready for MeZO / FT / evaluation, with its tokenizer and the spec it came from.

    ``model`` is the Hugging Face model (mode ``full``) or its peft wrapper (``lora``, ``prefix``).
    """

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec

    def trainable_named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Returns the (name, parameter) pairs the mode trains, in module order (what MeZO perturbs)."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def hf_model(self) -> PreTrainedModel:
        """The underlying transformers model (peft wrapper removed; LoRA layers stay injected)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def loss_dtype(self) -> torch.dtype:
        """The dtype losses are computed in (``ModelSpec.arithmetic``: "float32" is at least float32)."""
        dtype = DTYPES[self.spec.dtype]
        return torch.promote_types(dtype, torch.float32) if self.spec.arithmetic == "float32" else dtype

    @property
    def num_prefix(self) -> int:
        return self.spec.num_prefix if self.spec.mode == "prefix" else 0

    @property
    def bos_token_id(self) -> int | None:
        """The id prompts start with: 0 for OPT under ``spec.opt_bos_quirk``, else the tokenizer's BOS."""
        if self.spec.opt_bos_quirk and self.hf_model.config.model_type == "opt":
            return 0
        return self.tokenizer.bos_token_id

    def encode(self, text: str) -> list[int]:
        """Returns the ids of ``text`` with special tokens, starting with ``bos_token_id`` (the OPT quirk)."""
        ids = list(self.tokenizer(text)["input_ids"])
        own_bos = self.tokenizer.bos_token_id
        if self.bos_token_id in (None, own_bos):
            return ids
        return [self.bos_token_id, *(ids[1:] if ids[:1] == [own_bos] else ids)]

    @property
    def max_length(self) -> int:
        """Longest input (tokens) the model takes; prefix tokens shift positions, so they count."""
        config = self.hf_model.config
        positions = getattr(config, "max_position_embeddings", None) or 2048
        if config.model_type in ("roberta", "xlm-roberta", "camembert"):
            positions -= config.pad_token_id + 1  # position ids start after padding_idx
        tok_max = self.tokenizer.model_max_length
        if tok_max and tok_max < 1_000_000:
            positions = min(positions, tok_max)
        return positions - self.num_prefix

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Returns the backbone's last hidden states (B, T, H), with the prefix injected in prefix mode.

        Calling the backbone instead of the full model lets heads apply the vocabulary projection
        only where they need it (the mask, the option tokens).
        """
        attention_mask, prefix = self.with_prefix(attention_mask)
        out = self.hf_model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **prefix,
            **self._positions(attention_mask, input_ids.shape[1]),
        )
        return out.last_hidden_state

    def _positions(self, attention_mask: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
        """A causal LM's position ids counted over its real tokens (left padding takes none), which not
        every architecture derives from the mask itself (OPT does, GPT-2 does not)."""
        if self.spec.family != "causal":
            return {}
        return {"position_ids": _positions_of(attention_mask)[:, -length:]}

    def with_prefix(self, attention_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The attention mask and keyword arguments that put the trained prefix before the input: in
        prefix mode peft's prefix keys/values as a cache and the mask extended to cover them (what
        peft's own forward does); otherwise the mask as it is and no arguments.

        We pass the prefix ourselves instead of calling peft's forward: peft 0.21 looks for a
        ``past_key_values`` argument that transformers 5 renamed ``cache``, and then refuses
        classification models and silently drops the prefix in ``generate``.
        """
        if not self.num_prefix:
            return attention_mask, {}
        batch = attention_mask.shape[0]
        prefix_mask = attention_mask.new_ones(batch, self.num_prefix)
        cache = self.model.get_prompt(batch_size=batch)
        return torch.cat([prefix_mask, attention_mask], dim=1), {_cache_argument(self.hf_model): cache}

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The whole model's logits (a classifier's (B, labels), an LM's (B, T, V)), prefix included."""
        attention_mask, prefix = self.with_prefix(attention_mask)
        positions = self._positions(attention_mask, input_ids.shape[1])
        out = self.hf_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **prefix, **positions
        )
        return out.logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        pad_token_id: int,
        synced: bool = False,
    ) -> torch.Tensor:
        """Greedy decoding with a KV cache: returns the (B, <= max_new_tokens) new token ids, a row
        ending at its first stop id and padded after it (the paper's generation: greedy, no sampling).

        Our own loop rather than ``generate``, whose prefix handling peft 0.21 lost under
        transformers 5 (see ``with_prefix``). ``synced``: every process of a sharded model keeps
        stepping until all have finished, so the gathers inside the forwards pair up.
        """
        mask, state = self.with_prefix(attention_mask)
        cache_argument = _cache_argument(self.hf_model)
        stops = torch.tensor(list(stop_ids), device=input_ids.device)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        ids, new = input_ids, []
        for _ in range(max_new_tokens):
            positions = _positions_of(mask)[:, -ids.shape[1] :]
            out = self.hf_model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **state
            )
            state = {cache_argument: _returned_cache(out)}
            token = out.logits[:, -1].argmax(-1).masked_fill(done, pad_token_id)
            new.append(token)
            done |= torch.isin(token, stops)
            if _all_finished(done, synced):
                break
            ids, mask = token[:, None], torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        return torch.stack(new, dim=1)


def _positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from an attention mask: 0, 1, ... over the attended tokens, 1 on padding."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _cache_argument(model: torch.nn.Module) -> str:
    """The name a model's forward gives its KV cache: ``cache`` since transformers 5, else the old one."""
    forward = model.base_model.forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _all_finished(done: torch.Tensor, synced: bool) -> bool:
    finished = done.all()
    if synced and torch.distributed.is_initialized():
        flag = finished.to(torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finished = flag.bool()
    return bool(finished)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Loads tokenizer and model for ``spec``, applies the mode, freezes the rest, returns it in eval().

    Raises OSError with a hint to pass a local path when a hub name can't be reached (offline).
    """
    path = os.path.expanduser(spec.name_or_path)
    config = _load_config(path, spec.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    if spec.family == "seq_cls":
        config.num_labels = spec.num_labels
    if spec.family == "causal":
        tokenizer.padding_side = "left"  # options sit at the end of every row (paper, §2.3)
    if tokenizer.pad_token is None:  # e.g. GPT-2 / Llama tokenizers
        tokenizer.pad_token = tokenizer.eos_token
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    model = _AUTO_CLASSES[spec.family].from_pretrained(
        path, config=config, dtype=DTYPES[spec.dtype], trust_remote_code=spec.trust_remote_code
    )
    model.to(spec.device)
    untie = spec.untie_word_embeddings
    if untie if untie is not None else (spec.family == "mlm" or spec.mode in HEAD_MODES):
        _untie_word_embeddings(model)
    model = apply_mode(model, spec)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec)


def _untie_word_embeddings(model: PreTrainedModel) -> None:
    """Gives the output projection its own copy of the tied input embeddings (same values, own storage)."""
    output = model.get_output_embeddings()
    if output is None or output.weight is not model.get_input_embeddings().weight:
        return
    output.weight = torch.nn.Parameter(output.weight.detach().clone())
    model.config.tie_word_embeddings = False  # so a later tie_weights() does not tie them again


def _load_config(path: str, trust_remote_code: bool) -> Any:
    if path.startswith(("/", "./", "../")) and not os.path.isdir(path):
        raise FileNotFoundError(f"model {path!r}: no such directory (ModelSpec.name_or_path)")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        if os.path.isdir(path):
            raise
        raise OSError(
            f"could not load model {path!r} (ModelSpec.name_or_path): it is not a local directory, and "
            "neither the Hugging Face Hub (unreachable offline) nor the local HF cache has it. Pass a "
            "local path to a directory saved with save_pretrained (model + tokenizer), or download it "
            f"first on a machine with network access. Original error: {e}"
        ) from e


def _check(ok: bool, field: str, value: Any, allowed: Any) -> None:
    if not ok:
        raise ValueError(f"ModelSpec.{field}={value!r} is not allowed; expected {allowed}")
