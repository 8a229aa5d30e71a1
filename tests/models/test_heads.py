"""Heads against hand computations on full logits, one unpadded sequence at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mezo_ray.models import ModelSpec, load_model, make_head
from mezo_ray.tasks import Example, get_task
from tests.models.conftest import load, task_for

MODES = ["full", "lora", "prefix"]


def full_logits(loaded, ids: list[int]) -> torch.Tensor:
    """Logits of one unpadded sequence through the whole model ((T, V) for an LM, (labels,) for a
    classifier); in prefix mode with the prefix that tests/models/test_modes.py checks by hand."""
    x = torch.tensor([ids])
    with torch.no_grad():
        return loaded.logits(x, torch.ones_like(x))[0].float()


def option_logprob(loaded, context: str, option: str) -> tuple[float, list[float]]:
    """Mean log-prob of ``option``'s tokens after ``context``, and the per-token log-probs, by hand."""
    ids = loaded.encode(context + option)  # the tokenizer's ids, BOS as the paper's (OPT quirk)
    n = len(ids) - len(loaded.encode(context))
    logp = full_logits(loaded, ids).log_softmax(-1)
    per_token = [float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids))]
    return sum(per_token) / n, per_token


@pytest.mark.parametrize("mode", MODES)
def test_mlm_loss_and_predictions_equal_hand_computation(micro, sst2_examples, mode):
    loaded = load(micro, "mlm", mode)
    task = task_for("mlm")
    head = make_head(task, loaded)
    label_ids = [loaded.tokenizer.convert_tokens_to_ids("Ġ" + w) for w in task.label_words]
    losses, preds = [], []
    for ex in sst2_examples:
        ids = task.encode_mlm(ex, loaded.tokenizer)
        logits = full_logits(loaded, ids)[ids.index(loaded.tokenizer.mask_token_id), label_ids]
        losses.append(-logits.log_softmax(-1)[ex.label])
        preds.append(int(logits.argmax()))
    with torch.no_grad():
        batched = head.loss(sst2_examples)  # one right-padded batch
    torch.testing.assert_close(batched, torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)
    assert head.predict(sst2_examples, batch_size=4) == preds


@pytest.mark.parametrize("mode", MODES)
def test_causal_candidate_scores_equal_hand_computation(micro, sst2_examples, mode):
    """A left-padded batch of all candidates scores each one as it scores alone."""
    loaded = load(micro, "causal", mode)
    task = task_for("causal")
    head = make_head(task, loaded)
    examples = [*sst2_examples, Example(fields={"sentence": "ok ."}, label=1)]  # very different lengths
    expected = [
        [option_logprob(loaded, task.prompt(ex), c)[0] for c in task.candidates(ex)] for ex in examples
    ]
    rows_run = []
    hidden_states = loaded.hidden_states
    loaded.hidden_states = lambda ids, mask: rows_run.append(len(ids)) or hidden_states(ids, mask)
    with torch.no_grad():
        scores = head.option_scores(examples)
        loss = head.loss(examples)
    assert rows_run == [len(examples)] * 2  # single-token candidates: each context runs once, not per option
    torch.testing.assert_close(torch.stack(scores), torch.tensor(expected), rtol=1e-4, atol=1e-5)
    hand_loss = F.cross_entropy(torch.tensor(expected), torch.tensor([ex.label for ex in examples]))
    torch.testing.assert_close(loss, hand_loss, rtol=1e-4, atol=1e-5)
    assert head.predict(examples, batch_size=3) == [max((0, 1), key=lambda c, s=s: s[c]) for s in expected]


@pytest.mark.parametrize("arithmetic", ["float32", "model"])
def test_float16_losses_follow_the_arithmetic_setting(micro, sst2_examples, arithmetic):
    """``model``: the paper's fp16 OPT runs (large_models/utils.py forward_wrap_with_option_len):
    log-softmax of fp16 logits, the option tokens' mean and the cross-entropy over options all in
    fp16. ``float32``: the same from the fp16 logits upcast."""
    loaded = load(micro, "causal", "full", dtype="float16", arithmetic=arithmetic)
    head = make_head(task_for("causal"), loaded)
    dtype = torch.float16 if arithmetic == "model" else torch.float32
    for ex in sst2_examples[:3]:
        context = head.task.prompt(ex)
        scores = []
        for option in head.task.candidates(ex):
            ids = loaded.encode(context + option)
            n = len(ids) - len(loaded.encode(context))
            x = torch.tensor([ids])
            with torch.no_grad():
                logp = loaded.logits(x, torch.ones_like(x))[0].to(dtype).log_softmax(-1)
            scores.append(logp[torch.arange(len(ids) - n - 1, len(ids) - 1), ids[-n:]].mean())
        expected = F.cross_entropy(torch.stack(scores)[None], torch.tensor([ex.label]))
        with torch.no_grad():
            loss = head.loss([ex])
        assert loss.dtype == dtype
        torch.testing.assert_close(loss, expected, rtol=2e-3, atol=2e-3)


def test_multi_token_candidates_average_their_tokens(micro):
    """Copa trains on the gold choice only: token-level CE over its tokens (protocol §2.3)."""
    loaded = load(micro, "causal")
    task = get_task("Copa")
    examples = [
        Example({"premise": "The man was hungry.", "choice1": "He ate a big sandwich.",
                 "choice2": "He went to sleep.", "question": "effect"}, label=0),
        Example({"premise": "The road was wet.", "choice1": "It rained.", "choice2": "The sun came out.",
                 "question": "cause"}, label=0),
    ]  # fmt: skip
    head = make_head(task, loaded)
    per_token = []
    for ex in examples:
        per_token += option_logprob(loaded, task.prompt(ex), task.candidates(ex)[ex.label])[1]
    with torch.no_grad():
        loss = head.loss(examples)
    torch.testing.assert_close(loss, torch.tensor(-sum(per_token) / len(per_token)), rtol=1e-4, atol=1e-5)
    expected = [
        max(range(2), key=lambda c, ex=ex: option_logprob(loaded, task.prompt(ex), task.candidates(ex)[c])[0])
        for ex in examples
    ]
    assert head.predict(examples) == expected


def _squad(question: str, answer: str) -> Example:
    fields = {"title": "Film", "context": "the movie was great . the plot was dull .", "question": question}
    return Example(fields=fields, answers=(answer,))


@pytest.mark.parametrize("mode", MODES)
def test_generation_is_greedy_and_cut_at_the_first_newline(micro, mode):
    loaded = load(micro, "causal", mode)
    task = get_task("SQuAD")
    examples = [_squad("how was the movie ?", "great"), _squad("and the plot ?", "dull")]
    head = make_head(task, loaded)
    head.max_new_tokens = 12  # the paper's 50, shortened to keep the test fast
    expected = []
    for ex in examples:  # greedy decoding by hand, full forward per step, no cache, no padding
        ids = loaded.encode(task.prompt(ex))
        new: list[int] = []
        for _ in range(head.max_new_tokens):
            nxt = int(full_logits(loaded, ids + new)[-1].argmax())
            new.append(nxt)
            if nxt in head.stop_ids:
                break
        expected.append(loaded.tokenizer.decode(new, skip_special_tokens=True).split("\n")[0].strip())
    assert head.predict(examples) == expected
    # teacher-forced loss on the target " {answer}\n"
    per_token = []
    for ex in examples:
        per_token += option_logprob(loaded, task.prompt(ex), task.target(ex))[1]
    with torch.no_grad():
        torch.testing.assert_close(
            head.loss(examples), torch.tensor(-sum(per_token) / len(per_token)), rtol=1e-4, atol=1e-5
        )


def test_a_generated_answer_ends_at_its_first_newline_or_as_the_papers_code_reads_it(micro, monkeypatch):
    """OPT's "\n\n" is one token and no stop id: generation runs on past it. The paper's code keeps
    the text after it in the answer (answer_end=stop_token); by default we cut at the first newline."""
    loaded = load(micro, "causal")
    task = get_task("SQuAD")
    head = make_head(task, loaded)
    generated = loaded.tokenizer.encode(" great\n\nthe plot\n", add_special_tokens=False)
    monkeypatch.setattr(loaded, "generate", lambda *args, **kwargs: torch.tensor([generated]))
    ex = _squad("how was the movie ?", "great")
    assert head.predict([ex]) == ["great"] and head.evaluate([ex])["metric"] == 1.0
    head.answer_end = "stop_token"
    assert head.predict([ex]) == ["great\n\nthe plot"]
    # SQuAD F1 drops "the": {great, plot} against {great}, precision 1/2, recall 1
    assert head.evaluate([ex])["metric"] == pytest.approx(2 / 3)


def test_a_generated_answer_is_decoded_with_the_papers_tokenization_clean_up(micro, monkeypatch):
    """The paper's transformers (4.28) decoded with ``clean_up_tokenization_spaces`` (on by default
    before 4.45; off in 5.x): " 's", " n't", " ," and " ." lose their space, which SQuAD / DROP F1
    sees (the normalizer keeps "'s" and "n't" attached)."""
    loaded = load(micro, "causal")
    head = make_head(get_task("SQuAD"), loaded)
    generated = loaded.tokenizer.encode(" the plot 's end , and it does n't .\n", add_special_tokens=False)
    monkeypatch.setattr(loaded, "generate", lambda *args, **kwargs: torch.tensor([generated]))
    ex = _squad("how was the movie ?", "the plot's end, and it doesn't.")
    assert head.predict([ex]) == ["the plot's end, and it doesn't."]
    assert head.evaluate([ex])["metric"] == 1.0


def test_overlong_context_is_cut_from_the_left_keeping_bos(micro):
    loaded = load(micro, "causal")
    task = task_for("causal")
    long = Example(fields={"sentence": "the movie was great . " * 60}, label=1)
    head = make_head(task, loaded)
    for option in task.candidates(long):
        ids = loaded.encode(task.prompt(long) + option)
        assert len(ids) > loaded.max_length and ids[0] == 0  # OPT's BOS under the paper's quirk
        kept = ids[:1] + ids[len(ids) - loaded.max_length + 1 :]
        n = len(ids) - len(loaded.encode(task.prompt(long)))
        logp = full_logits(loaded, kept).log_softmax(-1)
        hand = sum(float(logp[t - 1, kept[t]]) for t in range(len(kept) - n, len(kept))) / n
        with torch.no_grad():
            score = head.option_scores([long])[0][task.candidates(long).index(option)]
        assert abs(float(score) - hand) < 1e-4


def test_a_generation_tasks_gold_rows_leave_room_for_the_generated_answer(micro):
    """The paper's encode_prompt cuts a generation task's rows at max_length - max_new_tokens, the
    rows it trains on and takes dev losses of too (with the gold answer): 1998 tokens for OPT."""
    loaded = load(micro, "causal")
    head = make_head(get_task("SQuAD"), loaded)
    ex = _squad("how was the movie ?", "great")
    ex.fields["context"] = "the movie was great . " * 60
    ids = loaded.encode(head.task.prompt(ex) + head.task.target(ex))
    longest = loaded.max_length - head.max_new_tokens
    assert len(ids) > loaded.max_length and ids[0] == 0
    kept = ids[:1] + ids[len(ids) - longest + 1 :]
    n = len(ids) - len(loaded.encode(head.task.prompt(ex)))
    logp = full_logits(loaded, kept).log_softmax(-1)
    hand = -sum(float(logp[t - 1, kept[t]]) for t in range(len(kept) - n, len(kept)))
    with torch.no_grad():
        total, count = head.loss_terms([ex])
    assert count == n and abs(float(total) - hand) < 1e-3


@pytest.mark.parametrize("family", ["mlm", "causal"])
def test_evaluate_reports_task_metric_and_mean_loss(micro, sst2_examples, family):
    task = task_for(family)
    head = make_head(task, load(micro, family))
    result = head.evaluate(sst2_examples, batch_size=4)  # two chunks of different sizes
    assert result["metric"] == task.score(head.predict(sst2_examples), sst2_examples)
    with torch.no_grad():
        assert abs(result["loss"] - float(head.loss(sst2_examples))) < 1e-5


@pytest.mark.parametrize("family", ["mlm", "causal"])
@pytest.mark.parametrize("mode", MODES)
def test_loss_backpropagates_to_exactly_the_trainable_parameters(micro, sst2_examples, family, mode):
    loaded = load(micro, family, mode)
    trainable = dict(loaded.trainable_named_parameters())
    with torch.no_grad():  # LoRA's B starts at 0, which zeroes A's gradient; move off that point
        for name, p in trainable.items():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    make_head(task_for(family), loaded).loss(sst2_examples).backward()
    for name, p in loaded.model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("mode", MODES)
def test_no_prompt_head_is_cross_entropy_of_the_classifier_on_the_bare_sentence(micro, sst2_examples, mode):
    loaded = load_model(ModelSpec(micro["mlm"], "seq_cls", mode=mode, num_labels=2))
    head = make_head(get_task("SST-2"), loaded)
    hand = []
    for ex in sst2_examples:
        ids = loaded.tokenizer(ex.fields["sentence"])["input_ids"]  # <s> sentence </s>, no template
        hand.append(-full_logits(loaded, ids).log_softmax(-1)[ex.label])
    with torch.no_grad():
        torch.testing.assert_close(head.loss(sst2_examples), torch.stack(hand).mean(), rtol=1e-5, atol=1e-6)
    trainable = {n for n, _ in loaded.trainable_named_parameters()}
    assert any("classifier" in n for n in trainable)  # the new head always trains


def test_no_prompt_sentence_pair_is_lm_bffs_single_separator_encoding(micro):
    """LM-BFF: ``<s>A</s>B</s>`` cut at the task's max length, not HF's ``<s>A</s></s>B</s>`` cut at 512."""
    loaded = load_model(ModelSpec(micro["mlm"], "seq_cls", num_labels=2))
    tok = loaded.tokenizer
    premise, hypothesis = "the movie was great .", "the plot was dull ."
    ex = Example(fields={"premise": premise, "hypothesis": hypothesis}, label=0)
    head = make_head(get_task("RTE", family="mlm"), loaded)
    assert tok.decode(head.encode(ex)) == f"<s>{premise}</s>{hypothesis}</s>"
    with torch.no_grad():
        hand = -full_logits(loaded, head.encode(ex)).log_softmax(-1)[0]
        torch.testing.assert_close(head.loss([ex]), hand, rtol=1e-5, atol=1e-6)
    short = make_head(dataclasses.replace(get_task("RTE", family="mlm"), max_length=8), loaded)
    assert short.encode(ex) == head.encode(ex)[:8] and len(head.encode(ex)) > 8
