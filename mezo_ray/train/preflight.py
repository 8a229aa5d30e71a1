"""Checks that need files, tokenizers or the hub, run once per distinct model / data set before Ray
starts, so a bad path or an unreachable model fails in seconds instead of inside a trial."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from mezo_ray.tasks import DatasetUnavailableError, MLMTask, check_hub_dataset, load_splits
from mezo_ray.tasks.data import source_of
from mezo_ray.train.config import TINY_MODELS, TrialConfig

CHEAP_SOURCES = ("local", "synthetic", "lmbff", "lmbff-original")


def preflight(configs: Iterable[TrialConfig]) -> None:
    """Raise ValueError for the first model or data problem among ``configs``."""
    configs = list(configs)
    for model in sorted({c.model.name for c in configs}):
        check_model(model)
    for model, family, prompt in sorted({(c.model.name, c.task.family, c.task.prompt) for c in configs}):
        check_model_family(model, family, prompt)
    seen_tokenizers: set[tuple[str, str]] = set()
    for cfg in configs:
        task = cfg.task.resolved
        if task.family == "mlm" and cfg.task.prompt and (cfg.model.name, task.name) not in seen_tokenizers:
            seen_tokenizers.add((cfg.model.name, task.name))
            check_label_words(cfg)
    seen_data: set[str] = set()
    for cfg in configs:
        spec = cfg.data.spec
        key = repr((cfg.task, spec))
        if key in seen_data:
            continue
        seen_data.add(key)
        if source_of(cfg.task.resolved, spec) in CHEAP_SOURCES:
            check_data(cfg)
        else:  # the hub: is it cached or reachable (metadata only; the trials download)
            try:
                check_hub_dataset(cfg.task.resolved, spec)
            except DatasetUnavailableError as err:
                raise ValueError(f"task={cfg.task.name!r} data: {err}") from None


def check_model(model: str) -> None:
    """A local path must hold a config.json; a hub name must be cached or reachable."""
    if model in TINY_MODELS:
        return
    if _looks_like_path(model):
        if not os.path.isfile(os.path.join(os.path.expanduser(model), "config.json")):
            raise ValueError(
                f"model={model!r}: no config.json there; pass a folder saved with save_pretrained"
            )
        return
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    if isinstance(cached, str):
        return
    local_hint = f"--set model=/path/to/{model.split('/')[-1]}"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ValueError(
            f"model={model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"download it on a machine with network, or pass a local path ({local_hint})"
        )
    from huggingface_hub import model_info
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        model_info(model, timeout=5)
    except RepositoryNotFoundError:
        raise ValueError(f"model={model!r}: no such model on the Hugging Face hub") from None
    except Exception as err:  # no network, proxy, DNS: the message says which
        raise ValueError(
            f"model={model!r} cannot be reached on the Hugging Face hub ({type(err).__name__}) and is not in "
            f"the local cache; pass a local path ({local_hint})"
        ) from None


_FAMILY_OF_ARCHITECTURE = {"ForMaskedLM": "mlm", "ForCausalLM": "causal"}


def check_model_family(model: str, family: str, prompt: bool = True) -> None:
    """The checkpoint must hold the head the task reads (from config.json where it is on disk): a masked
    LM head for an mlm prompt, a causal LM for the causal family; without a prompt (a classification
    head on the encoder) any encoder will do."""
    path = _local_model_path(model)
    if path is None or not os.path.isfile(os.path.join(path, "config.json")):
        return
    with open(os.path.join(path, "config.json")) as f:
        architectures = json.load(f).get("architectures") or []
    found = {f for arch in architectures for end, f in _FAMILY_OF_ARCHITECTURE.items() if arch.endswith(end)}
    if not architectures or family in found or (family == "mlm" and not prompt):
        return
    if family == "mlm" and not found and all(arch.endswith("Model") for arch in architectures):
        raise ValueError(
            f"model={model!r} is {', '.join(architectures)}, an encoder saved without its masked-LM head "
            f"(e.g. a sentence-transformers export): a prompt reads the label words' logits from that head. "
            f"Use prompt=false (a classification head on the encoder) or a checkpoint saved with the head "
            f"(...ForMaskedLM)"
        )
    if not found:  # an architecture we cannot place (GPT2LMHeadModel, ...): loading will tell
        return
    wanted = "a masked LM (e.g. roberta-large)" if family == "mlm" else "a causal LM (e.g. facebook/opt-13b)"
    raise ValueError(
        f"model={model!r} is {', '.join(architectures)} but the task is {family}-family: use {wanted}"
    )


def check_label_words(cfg: TrialConfig) -> None:
    """Every label word of an MLM task must be one token of the model's tokenizer."""
    path = _local_model_path(cfg.model.name)
    if path is None:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    try:
        cfg.task.resolved.label_word_ids(tokenizer)
    except ValueError as err:
        raise ValueError(f"model={cfg.model.name!r}, task={cfg.task.name!r}: {err}") from None


def check_data(cfg: TrialConfig) -> None:
    """Load the splits of a local / synthetic data set (cheap): missing files, columns, too large a k."""
    try:
        splits = load_splits(cfg.task.resolved, cfg.data.spec)
    except (ValueError, FileNotFoundError, DatasetUnavailableError) as err:
        raise ValueError(f"task={cfg.task.name!r} data: {err}") from None
    if not splits.train:
        raise ValueError(
            f"task={cfg.task.name!r}: the sampled training split is empty; check k / num_train and the files"
        )


def show_examples(cfg: TrialConfig, n: int) -> str:
    """The first ``n`` training examples of a trial as its model reads them: the prompted text decoded
    from its ids, the mask / candidate positions, and the label words with their ids."""
    from transformers import AutoConfig, AutoTokenizer

    path = _local_model_path(cfg.model.name)
    if path is None:
        raise ValueError(
            f"--show-examples: model={cfg.model.name!r} is neither local nor cached; it needs its tokenizer"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    task = cfg.task.resolved
    try:
        train = load_splits(task, cfg.data.spec).train[:n]
    except (ValueError, FileNotFoundError, DatasetUnavailableError) as err:
        raise ValueError(f"task={cfg.task.name!r} data: {err}") from None
    lines = [
        f"{task.name} ({task.family}, model {cfg.model.name}), the first {len(train)} training examples:"
    ]
    if isinstance(task, MLMTask) and cfg.task.prompt:
        ids = task.label_word_ids(tokenizer)
        lines.append(
            "  label words: "
            + ", ".join(f"{w!r} = id {i}" for w, i in zip(task.label_words, ids, strict=True))
        )
        for ex in train:
            encoded = task.encode_mlm(ex, tokenizer)
            lines += [
                f"  [{task.label_names[ex.label]} -> {task.label_words[ex.label]!r}] "
                f"{tokenizer.decode(encoded, clean_up_tokenization_spaces=False)!r}",
                f"    ids {encoded} (mask at position {encoded.index(tokenizer.mask_token_id)})",
            ]
    elif isinstance(task, MLMTask):  # no prompt: the fields into a classification head
        for ex in train:
            lines.append(f"  [{task.label_names[ex.label]}] {[ex.fields[f] for f in task.input_fields]}")
    else:
        opt_bos = AutoConfig.from_pretrained(path).model_type == "opt" and cfg.model.name not in TINY_MODELS
        for ex in train:
            context = task.prompt(ex)
            options = [task.target(ex)] if task.kind == "generation" else task.candidates(ex)
            gold = 0 if task.kind == "generation" else ex.label
            lines.append(f"  context {context!r}")
            for i, option in enumerate(options):
                ids = tokenizer(context + option)["input_ids"]
                ids = [0, *ids[1:]] if opt_bos else ids  # the paper's OPT BOS (LoadedModel.encode)
                n_option = len(ids) - len(tokenizer(context)["input_ids"])
                mark = "*" if i == gold else " "
                lines.append(f"   {mark}candidate {option!r} = ids {ids[-n_option:]}; the whole input: {ids}")
    return "\n".join(lines)


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.path.isdir(model) or model.count("/") > 1


def _local_model_path(model: str) -> str | None:
    if model in TINY_MODELS:
        from mezo_ray.models.tiny import ensure_tiny_models

        tiny = ensure_tiny_models()
        return tiny.mlm if TINY_MODELS[model] == "mlm" else tiny.causal
    if _looks_like_path(model):
        return os.path.expanduser(model)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    return os.path.dirname(cached) if isinstance(cached, str) else None
