"""LM-BFF templates, label words and truncation of the six RoBERTa tasks (protocol §1.1)."""

import dataclasses

import pytest

from mezo_ray.tasks import Example, encode_template, get_task

# (task, fields, rendered string exactly as the protocol's "rendered" column spells it)
RENDERED = [
    ("SST-2", {"sentence": "a gripping , funny movie ."}, "<s>a gripping , funny movie . It was<mask>.</s>"),
    ("sst-5", {"sentence": "the plot is thin ."}, "<s>the plot is thin . It was<mask>.</s>"),
    (
        "trec",
        {"sentence": "What is the capital of France ?"},
        "<s><mask>: What is the capital of France ?</s>",
    ),
    (
        "MNLI",
        {"premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting."},
        "<s>The cat sat on the mat?<mask>, a cat is sitting.</s>",
    ),
    (
        "SNLI",
        {"premise": "Two dogs run in a field.", "hypothesis": "Some animals are outside."},
        "<s>Two dogs run in a field?<mask>, some animals are outside.</s>",
    ),
    (
        "RTE",
        {"premise": "Paris is the capital of France.", "hypothesis": "France has a capital."},
        "<s>Paris is the capital of France?<mask>, france has a capital.</s>",
    ),
]

LABEL_WORDS = {
    "SST-2": ("terrible", "great"),
    "sst-5": ("terrible", "bad", "okay", "good", "great"),
    "trec": ("Description", "Entity", "Expression", "Human", "Location", "Number"),
    "MNLI": ("No", "Yes", "Maybe"),  # contradiction, entailment, neutral
    "SNLI": ("No", "Yes", "Maybe"),
    "RTE": ("Yes", "No"),  # entailment, not_entailment
}


@pytest.mark.parametrize(("name", "fields", "expected"), RENDERED, ids=[r[0] for r in RENDERED])
def test_template_renders_as_reference(roberta_tokenizer, name, fields, expected):
    task = get_task(name, family="mlm")
    assert task.render_mlm(Example(fields, label=0), roberta_tokenizer) == expected


def test_parts_are_tokenized_piecewise(roberta_tokenizer):
    tok = roberta_tokenizer
    ids = get_task("SST-2").encode_mlm(Example({"sentence": "a gripping , funny movie ."}), tok)

    def enc(text):
        return tok.encode(text, add_special_tokens=False)

    expected = [0, *enc("a gripping , funny movie ."), *enc(" It was"), 4, tok.convert_tokens_to_ids("."), 2]
    assert ids == expected
    assert ids.count(tok.mask_token_id) == 1


def test_nli_template_drops_last_char_and_lowercases_second_sentence(roberta_tokenizer):
    tok = roberta_tokenizer
    ids = get_task("MNLI").encode_mlm(Example({"premise": "The cat sat.", "hypothesis": "A cat."}), tok)

    def enc(text):
        return tok.encode(text, add_special_tokens=False)

    single = tok.convert_tokens_to_ids
    assert ids == [0, *enc("The cat sat"), single("?"), 4, single(","), *enc(" a cat."), 2]


@pytest.mark.parametrize("name", list(LABEL_WORDS))
def test_label_words_are_single_space_prefixed_tokens(roberta_tokenizer, name):
    task = get_task(name, family="mlm")
    assert task.label_words == LABEL_WORDS[name]
    vocab = roberta_tokenizer.get_vocab()
    assert task.label_word_ids(roberta_tokenizer) == [vocab["Ġ" + word] for word in LABEL_WORDS[name]]


def test_multi_token_label_word_raises_naming_word_and_tokenizer(roberta_tokenizer):
    task = dataclasses.replace(get_task("SST-2"), label_words=("terrible", "supercalifragilistic"))
    with pytest.raises(
        ValueError, match=r"' supercalifragilistic' is \d+ tokens .* RobertaTokenizer.*single tokens"
    ):
        task.label_word_ids(roberta_tokenizer)


def test_label_words_must_pair_with_labels():
    with pytest.raises(ValueError, match="2 label words"):
        dataclasses.replace(get_task("sst-5"), label_words=("terrible", "great"))


def test_first_sent_limit_cuts_sentence_zero(roberta_tokenizer):
    sentence = "great" + " great" * 150  # 151 tokens; sst-5 keeps the first 110
    rendered = get_task("sst-5").render_mlm(Example({"sentence": sentence}), roberta_tokenizer)
    assert rendered == "<s>great" + " great" * 109 + " It was<mask>.</s>"


def test_long_pair_is_cut_to_max_length_at_the_tail(roberta_tokenizer):
    task = get_task("MNLI")  # first_sent_limit 240, max_length 256
    ex = Example({"premise": "great" + " great" * 299 + ".", "hypothesis": "Great" + " great" * 29})
    ids = task.encode_mlm(ex, roberta_tokenizer)
    assert len(ids) == 256
    # 1 <s> + 240 premise + "?" + <mask> + "," leaves 12 hypothesis tokens; </s> is cut off
    assert task.render_mlm(ex, roberta_tokenizer) == "<s>great" + " great" * 239 + "?<mask>," + " great" * 12


def test_other_sent_limit_cuts_later_sentences(roberta_tokenizer):
    ids = encode_template(
        "*cls**sent_0**sep**+sent_1**sep*",
        ["great great great", "good good good good"],
        roberta_tokenizer,
        max_length=128,
        first_sent_limit=2,
        other_sent_limit=3,
    )
    vocab = roberta_tokenizer.get_vocab()
    assert ids == [0, vocab["great"], vocab["Ġgreat"], 2, vocab["Ġgood"], vocab["Ġgood"], vocab["Ġgood"], 2]


def test_mask_truncated_away_raises(roberta_tokenizer):
    task = dataclasses.replace(get_task("trec"), template="*cls**sent_0**mask**sep+*", first_sent_limit=None)
    with pytest.raises(ValueError, match="0 mask tokens"):
        task.encode_mlm(Example({"sentence": "great" * 1 + " great" * 200}), roberta_tokenizer)


def test_per_task_lengths_follow_run_fewshot():
    limits = {
        name: (t.max_length, t.first_sent_limit, t.other_sent_limit)
        for name in LABEL_WORDS
        for t in [get_task(name, family="mlm")]
    }
    assert limits == {
        "SST-2": (128, None, None),
        "sst-5": (128, 110, 20),
        "trec": (128, 110, None),
        "MNLI": (256, 240, None),
        "SNLI": (256, None, None),
        "RTE": (256, 240, None),
    }
