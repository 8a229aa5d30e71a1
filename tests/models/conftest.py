"""Models for the model-layer tests: random-weight ("micro") models in the tiny architectures.

They share a byte-level BPE trained on a slice of the synthetic corpus (so " great" / " terrible" are
single tokens) and are built once per session in a few seconds. Tests that need a model which actually
learned something use the tiny models the package ships (``ensure_tiny_models``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import OPTForCausalLM, RobertaForMaskedLM

from mezo_ray.models import ModelSpec, load_model
from mezo_ray.models.tiny import make_tokenizers, opt_config, roberta_config
from mezo_ray.tasks import get_task, synthetic_pretraining_corpus, synthetic_sst2_examples

FAMILY_TASKS = {"mlm": "synthetic-sst2", "causal": "synthetic-sst2-causal"}


@pytest.fixture(scope="session")
def micro(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of random-weight models: ``mlm``, ``causal`` (2 layers) and ``mlm_1layer``."""
    root = tmp_path_factory.mktemp("micro")
    mlm_tok, causal_tok = make_tokenizers(synthetic_pretraining_corpus(num_sentences=2000, seed=0))
    torch.manual_seed(0)
    one_layer = roberta_config(len(mlm_tok))
    one_layer.num_hidden_layers = 1
    builds = {
        "mlm": (RobertaForMaskedLM(roberta_config(len(mlm_tok))), mlm_tok),
        "mlm_1layer": (RobertaForMaskedLM(one_layer), mlm_tok),
        "causal": (OPTForCausalLM(opt_config(len(causal_tok))), causal_tok),
    }
    paths = {}
    for name, (model, tok) in builds.items():
        path = Path(root) / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Random-weight models of other families, each with a tokenizer of its kind trained here:
    ``bert`` (WordPiece, uncased masked LM), ``gpt2`` (byte-level BPE, no pad token) and ``llama``
    (sentencepiece-style BPE, BOS added, grouped-query attention, rotary positions)."""
    import os

    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, SentencePieceBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertTokenizerFast,
        GPT2Config,
        GPT2LMHeadModel,
        GPT2TokenizerFast,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaTokenizerFast,
    )

    root = Path(tmp_path_factory.mktemp("families"))
    corpus = synthetic_pretraining_corpus(num_sentences=2000, seed=0)
    torch.manual_seed(0)
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        corpus, vocab_size=1200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    wordpiece.save_model(str(root))
    bert_tok = BertTokenizerFast(os.path.join(root, "vocab.txt"))
    bert = BertForMaskedLM(BertConfig(vocab_size=len(bert_tok), max_position_embeddings=256, **small))

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=1200, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(root))
    gpt2_tok = GPT2TokenizerFast(os.path.join(root, "vocab.json"), os.path.join(root, "merges.txt"))
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(gpt2_tok), n_embd=64, n_layer=2, n_head=4, n_positions=256)
    )

    piece = SentencePieceBPETokenizer()
    piece.train_from_iterator(corpus, vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"])
    piece.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    llama_tok = LlamaTokenizerFast(
        tokenizer_object=piece, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(llama_tok), num_key_value_heads=2, max_position_embeddings=256, **small)
    )
    paths = {}
    for name, model, tok in (("bert", bert, bert_tok), ("gpt2", gpt2, gpt2_tok), ("llama", llama, llama_tok)):
        path = root / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="session")
def tiny(tiny_models) -> dict[str, str]:
    """Paths of the cached pretrained tiny models (tests/conftest.py; first use on a machine builds them)."""
    return {"mlm": tiny_models.mlm, "causal": tiny_models.causal}


@pytest.fixture(scope="session")
def sst2_examples() -> list:
    """A few labelled synthetic reviews, both classes."""
    return synthetic_sst2_examples(num=6, seed=3)


def load(micro: dict[str, str], family: str, mode: str = "full", **kwargs):
    """Loads the micro model of ``family`` in ``mode``."""
    return load_model(ModelSpec(micro[family], family, mode=mode, **kwargs))


def task_for(family: str):
    return get_task(FAMILY_TASKS[family])
