"""Shared fixtures: a tiny RoBERTa-style byte-level BPE tokenizer trained here, offline."""

import json

import pytest
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast

# Words the prompt tests render, with and without a leading space, so each becomes a single BPE token.
WORDS = (
    "terrible bad okay good great Description Entity Expression Human Location Number Yes No Maybe It was "
    "a the gripping funny movie plot is thin What capital of France Paris has cat sat on mat A sitting Two "
    "dogs run in field Some animals are outside"
)


def build_roberta_tokenizer() -> RobertaTokenizerFast:
    """A byte-level BPE in RoBERTa's format: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4."""
    corpus = [f"{w} {w} the {w} . It was {w} ? {w} , {w} : {w}" for w in WORDS.split()] * 30
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=800, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    merges = json.loads(bpe._tokenizer.to_str())["model"]["merges"]  # the trained merge rules
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return RobertaTokenizerFast(vocab=bpe.get_vocab(), merges=merges)


@pytest.fixture(scope="session")
def roberta_tokenizer() -> RobertaTokenizerFast:
    return build_roberta_tokenizer()
