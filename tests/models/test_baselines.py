"""Zero-shot, in-context learning and linear probing, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mezo_ray.models import (
    ModelSpec,
    icl_contexts,
    icl_evaluate,
    init_head_from_probe,
    linear_probe,
    load_model,
    make_head,
    zero_shot,
)
from mezo_ray.tasks import Example, get_task, sample_icl_demonstrations, synthetic_sst2_examples
from mezo_ray.tasks.synthetic import LABEL_WORDS
from tests.models.conftest import FAMILY_TASKS, load, task_for


def _review(sentence: str, label: int) -> Example:
    return Example(fields={"sentence": sentence}, label=label)


def test_icl_prompt_is_gold_demos_blank_lines_then_the_test_prompt():
    task = get_task("SST2")
    pool = [_review("a warm film .", 1), _review("dull and flat .", 0)]
    test = [_review("the plot is clever .", 1)]
    (demos,) = sample_icl_demonstrations(pool, num_test=1, num_demos=2, seed=0)
    shown = [f"{d.fields['sentence']} It was {('terrible', 'great')[d.label]}" for d in demos]
    expected = f"{shown[0]}\n\n{shown[1]}\n\nthe plot is clever . It was"
    assert icl_contexts(task, test, pool, num_demos=2) == [expected]


def test_icl_demonstrations_differ_per_test_example():
    task = task_for("causal")
    pool = synthetic_sst2_examples(num=50, seed=1)
    contexts = icl_contexts(task, synthetic_sst2_examples(num=3, seed=2), pool, num_demos=4)
    assert len({c.split("\n\n")[0] for c in contexts}) > 1


def test_icl_prompt_is_what_the_head_scores(micro):
    """icl_evaluate scores candidates after the ICL prompt, not after the bare prompt."""
    loaded = load(micro, "causal")
    task = task_for("causal")
    head = make_head(task, loaded)
    pool, test = synthetic_sst2_examples(num=40, seed=1), synthetic_sst2_examples(num=4, seed=2)
    contexts = icl_contexts(task, test, pool, num_demos=3)
    assert icl_evaluate(head, test, pool, num_demos=3) == head.evaluate(test, batch_size=4, contexts=contexts)
    assert head.evaluate(test, contexts=contexts) != head.evaluate(test)


def test_icl_is_refused_for_the_masked_lm_family(micro, sst2_examples):
    head = make_head(task_for("mlm"), load(micro, "mlm"))
    with pytest.raises(ValueError, match="causal"):
        icl_evaluate(head, sst2_examples, sst2_examples)


@pytest.mark.parametrize("family", ["mlm", "causal"])
def test_zero_shot_icl_and_linear_probe_run_on_the_tiny_models(tiny, family):
    task = get_task(FAMILY_TASKS[family])
    head = make_head(task, load_model(ModelSpec(tiny[family], family)))
    train, test = synthetic_sst2_examples(num=64, seed=0), synthetic_sst2_examples(num=32, seed=1)
    results = [zero_shot(head, test, batch_size=16), linear_probe(head, train).evaluate(test)]
    if family == "causal":
        results.append(icl_evaluate(head, test, train, num_demos=4, batch_size=8))
    for result in results:
        assert 0.0 <= result["metric"] <= 1.0


def test_linear_probe_beats_chance_on_the_synthetic_task(tiny):
    head = make_head(task_for("causal"), load_model(ModelSpec(tiny["causal"], "causal")))
    probe = linear_probe(head, synthetic_sst2_examples(num=512, seed=0), batch_size=64)
    assert probe.evaluate(synthetic_sst2_examples(num=400, seed=1))["metric"] > 0.58


@pytest.mark.parametrize("task_name", ["synthetic-sst2", "sst-5"])
def test_a_probe_written_into_the_label_words_rows_gives_the_probes_logits(tiny, task_name):
    """LP-MeZO's start (paper Table 19): the prompt head's label-word logits are the probe's decision
    function (binary: its one direction split as -w/2, w/2, so the logit difference is w x + b)."""
    from mezo_ray.tasks import MLMTask

    task = get_task("synthetic-sst2")
    if task_name == "sst-5":  # five classes on the same words: exercise the multinomial layout
        words = ("terrible", "awful", "boring", "wonderful", "great")
        task = MLMTask(
            name="five",
            input_fields=("sentence",),
            label_names=tuple("01234"),
            label_words=words,
            template=task.template,
            source=task.source,
        )
    head = make_head(task, load_model(ModelSpec(tiny["mlm"], "mlm")))
    train = [
        ex if task_name != "sst-5" else Example(ex.fields, i % 5)
        for i, ex in enumerate(synthetic_sst2_examples(num=60, seed=0))
    ]
    test = synthetic_sst2_examples(num=16, seed=1)
    probe = linear_probe(head, train, early_stopping=True)
    init_head_from_probe(probe)
    with torch.no_grad():
        logits = head.logits(test).double()
    decision = torch.as_tensor(probe.classifier.decision_function(head.features(test)))
    if decision.ndim == 1:
        torch.testing.assert_close(logits[:, 1] - logits[:, 0], decision, rtol=1e-4, atol=1e-4)
    else:  # multinomial: equal up to a per-example constant
        torch.testing.assert_close(
            logits - logits.mean(1, keepdim=True),
            decision - decision.mean(1, keepdim=True),
            rtol=1e-4,
            atol=1e-4,
        )
    assert head.predict(test) == probe.predict(test)


def test_opts_probe_is_written_into_lm_head_rows_that_its_input_embeddings_share(tiny):
    """The paper's OPT linear probe (large_models/trainer.py): its classes are the option tokens, their
    lm_head rows become the probe, and OPT ties those rows to embed_tokens (no --untie_emb). The head
    then scores as the probe does where no label word is in the context, and otherwise reads the probe
    as the label word's input embedding."""
    loaded = load_model(ModelSpec(tiny["causal"], "causal"))
    head = make_head(task_for("causal"), loaded)
    train = synthetic_sst2_examples(num=128, seed=0)
    probe = linear_probe(head, train, early_stopping=True)
    tok = loaded.tokenizer
    assert probe.label_word_ids == tuple(tok.encode(f" {w}")[-1] for w in ("terrible", "great"))
    plain = [ex for ex in synthetic_sst2_examples(num=40, seed=1) if not set(LABEL_WORDS) & set(_words(ex))]
    mentions = [Example({"sentence": "a great cast , a dull plot ."}, 0)]
    before = head.features(mentions)
    init_head_from_probe(probe)

    rows = list(probe.label_word_ids)
    w = torch.as_tensor(probe.classifier.coef_, dtype=torch.float32)
    written = loaded.hf_model.get_output_embeddings().weight[rows]
    torch.testing.assert_close(written, torch.cat([-w / 2, w / 2]), rtol=0, atol=0)
    torch.testing.assert_close(loaded.hf_model.get_input_embeddings().weight[rows], written, rtol=0, atol=0)
    with torch.no_grad():
        margin = torch.stack([s[1] - s[0] for s in head.option_scores(plain)]).double()
    decision = torch.as_tensor(probe.classifier.decision_function(head.features(plain)))
    torch.testing.assert_close(margin, decision, rtol=1e-4, atol=1e-4)
    assert head.predict(plain) == probe.predict(plain)
    assert not np.allclose(head.features(mentions), before, atol=1e-3)  # " great" reads as the probe now


def _words(ex: Example) -> list[str]:
    return ex.fields["sentence"].split()


def test_masked_lm_probe_features_are_the_decoder_input_at_the_mask(micro, sst2_examples):
    """LP features = what lm_head.decoder receives at <mask>: decoder(features) are the MLM logits."""
    loaded = load(micro, "mlm")
    head = make_head(task_for("mlm"), loaded)
    features = torch.tensor(head.features(sst2_examples))
    decoder = loaded.hf_model.lm_head.decoder
    with torch.no_grad():
        logits = decoder(features)[:, head.label_word_ids]
        torch.testing.assert_close(logits, head.logits(sst2_examples), rtol=1e-5, atol=1e-5)


def test_linear_probe_is_refused_for_generation_tasks(micro):
    head = make_head(get_task("SQuAD"), load(micro, "causal"))
    with pytest.raises(ValueError, match="classification"):
        linear_probe(head, [])


def test_tiny_causal_model_is_above_chance_zero_shot(tiny):
    head = make_head(task_for("causal"), load_model(ModelSpec(tiny["causal"], "causal")))
    assert zero_shot(head, synthetic_sst2_examples(num=400, seed=1), batch_size=64)["metric"] > 0.56
