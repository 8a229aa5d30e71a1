"""Model families beyond RoBERTa and OPT: BERT (WordPiece), GPT-2 (byte BPE, no pad token) and Llama-style
(sentencepiece, BOS, rotary positions) score as a hand computation on the whole model does, one unpadded
sequence at a time."""

from __future__ import annotations

import pytest
import torch

from mezo_ray.models import ModelSpec, load_model, make_head
from mezo_ray.tasks import Example, get_task
from tests.models.test_heads import full_logits, option_logprob

CAUSAL = ["gpt2", "llama"]


def load(family_models, name: str, mode: str = "full"):
    family = "mlm" if name == "bert" else "causal"
    return load_model(ModelSpec(family_models[name], family, mode=mode))


def test_bert_prompt_loss_and_label_words_equal_hand_computation(family_models, sst2_examples):
    loaded = load(family_models, "bert")
    task = get_task("synthetic-sst2")
    tok = loaded.tokenizer
    ids = task.label_word_ids(tok)
    assert ids == [tok.convert_tokens_to_ids(w) for w in task.label_words]  # WordPiece: no space marker
    losses = []
    for ex in sst2_examples:
        encoded = task.encode_mlm(ex, tok)
        assert encoded[0] == tok.cls_token_id and encoded[-1] == tok.sep_token_id
        logits = full_logits(loaded, encoded)[encoded.index(tok.mask_token_id), ids]
        losses.append(-logits.log_softmax(-1)[ex.label])
    with torch.no_grad():
        batched = make_head(task, loaded).loss(sst2_examples)
    torch.testing.assert_close(batched, torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_candidates_score_as_alone_in_a_left_padded_batch(family_models, sst2_examples, name):
    """GPT-2 has no pad token (it gets EOS, masked) and absolute positions: counted over real tokens,
    padding changes no score. Llama-style prompts start with BOS; the OPT BOS quirk is OPT's alone."""
    loaded = load(family_models, name)
    task = get_task("synthetic-sst2-causal")
    head = make_head(task, loaded)
    examples = [*sst2_examples, Example(fields={"sentence": "ok ."}, label=1)]
    assert loaded.encode("ok .") == loaded.tokenizer("ok .")["input_ids"]
    if name == "llama":
        assert loaded.encode("ok .")[0] == loaded.tokenizer.bos_token_id
    expected = [
        [option_logprob(loaded, task.prompt(ex), c)[0] for c in task.candidates(ex)] for ex in examples
    ]
    with torch.no_grad():
        scores = head.option_scores(examples)
    torch.testing.assert_close(torch.stack(scores), torch.tensor(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "targets"),
    [("bert", ("query", "value")), ("gpt2", ("c_attn",)), ("llama", ("q_proj", "v_proj"))],
)
def test_lora_adapts_each_familys_attention_and_starts_as_the_base(
    family_models, sst2_examples, name, targets
):
    loaded = load(family_models, name, "lora")
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in loaded.trainable_named_parameters()}
    assert adapted == set(targets)
    task = get_task("synthetic-sst2" if name == "bert" else "synthetic-sst2-causal")
    with torch.no_grad():
        base = make_head(task, load(family_models, name)).loss(sst2_examples)
        lora = make_head(task, loaded).loss(sst2_examples)
    torch.testing.assert_close(lora, base)


@pytest.mark.parametrize("name", CAUSAL)
def test_prefix_mode_refuses_architectures_it_cannot_initialise(family_models, name):
    with pytest.raises(ValueError, match=r"mode='prefix' supports model types \['roberta', 'bert', 'opt'\]"):
        load(family_models, name, "prefix")


@pytest.mark.parametrize(
    ("name", "rule"), [("bert", "WordPiece"), ("gpt2", "byte-level BPE"), ("llama", "sentencepiece")]
)
def test_a_split_label_word_is_explained_in_its_tokenizers_own_spelling(family_models, name, rule):
    from transformers import AutoTokenizer

    from mezo_ray.tasks.custom import parse_task_spec

    task = parse_task_spec(
        {
            "name": "t",
            "family": "mlm",
            "input_fields": ["text"],
            "labels": {"a": "great", "b": "zzyzxqq"},
            "template": "{text} {mask}",
            "data": {"train_file": "a.csv", "test_file": "b.csv"},
        }
    ).build()
    # split into pieces (BPE, sentencepiece) or unknown (WordPiece): either way not one label token
    with pytest.raises(
        ValueError, match=rf"label word ' zzyzxqq' is (\d+ tokens|not in the vocabulary).*{rule}"
    ):
        task.label_word_ids(AutoTokenizer.from_pretrained(family_models[name]))
