"""Tasks from YAML: a YAML twin of a built-in task encodes and samples exactly as the built-in one, and
every mistake is named before anything runs."""

from __future__ import annotations

import json

import pytest
import yaml

from mezo_ray.tasks import DataSpec, Example, get_task, load_splits
from mezo_ray.tasks.custom import load_task_file, parse_task_spec

SST2_MLM = {
    "name": "my-sst2",
    "family": "mlm",
    "input_fields": ["sentence"],
    "labels": {0: "terrible", 1: "great"},
    "template": "{sentence} It was {mask}.",
    "data": {"train_file": "train.csv", "test_file": "test.csv"},
}
SST2_CAUSAL = {
    "name": "my-sst2-causal",
    "family": "causal",
    "input_fields": ["sentence"],
    "labels": {0: "terrible", 1: "great"},
    "prompt": "{sentence} It was",
    "data": {"train_file": "train.csv", "test_file": "test.csv"},
}
SENTENCES = ["a gripping movie", "the plot is thin", "funny", "What a movie"]


def test_a_yaml_template_encodes_as_the_built_in_lm_bff_template(roberta_tokenizer):
    mine, builtin = parse_task_spec(SST2_MLM).build(), get_task("SST-2")
    for sentence in SENTENCES:
        ex = Example({"sentence": sentence}, label=0)
        assert mine.encode_mlm(ex, roberta_tokenizer) == builtin.encode_mlm(ex, roberta_tokenizer)
    assert mine.label_word_ids(roberta_tokenizer) == builtin.label_word_ids(roberta_tokenizer)


def test_a_yaml_prompt_scores_the_built_in_causal_candidates():
    mine, builtin = parse_task_spec(SST2_CAUSAL).build(), get_task("SST2")
    for sentence in SENTENCES:
        ex = Example({"sentence": sentence}, label=1)
        assert mine.prompt(ex) == builtin.prompt(ex) and mine.candidates(ex) == builtin.candidates(ex)


def test_string_labels_and_column_names_come_from_the_task_file(tmp_path):
    rows = [("good film", "positive"), ("bad film", "negative")] * 20
    (tmp_path / "train.csv").write_text("review,stars\n" + "".join(f"{t},{s}\n" for t, s in rows))
    (tmp_path / "test.csv").write_text("review,stars\ngood film,positive\n")
    (tmp_path / "task.yaml").write_text(
        yaml.safe_dump(
            {
                **SST2_MLM,
                "input_fields": ["text"],
                "labels": {"negative": "terrible", "positive": "great"},
                "template": "{text} It was {mask}.",
                "data": {
                    "train_file": "train.csv",
                    "test_file": "test.csv",
                    "columns": {"text": "review", "label": "stars"},
                },
            }
        )
    )
    task = parse_task_spec(load_task_file(str(tmp_path / "task.yaml"))).build()  # files next to the task
    splits = load_splits(task, DataSpec(k=4, seed=13))
    assert [len(s) for s in splits] == [8, 8, 1] and splits.test[0].label == 1
    assert {ex.fields["text"]: ex.label for ex in splits.train} == {"good film": 1, "bad film": 0}


def test_labels_as_a_plain_list_load_local_data_for_a_no_prompt_mlm_task(tmp_path):
    """The README's ``labels: [negative, positive]`` form (no label words: ``prompt: false``) samples
    k per class and names its classes by the labels (it crashed in k-shot sampling)."""
    rows = [("good film", "positive"), ("bad film", "negative")] * 4
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{t},{s}\n" for t, s in rows))
    (tmp_path / "test.csv").write_text("text,label\ngood film,positive\n")
    spec = {**SST2_MLM, "input_fields": ["text"], "labels": ["negative", "positive"], "template": None}
    spec["data"] = {"train_file": str(tmp_path / "train.csv"), "test_file": str(tmp_path / "test.csv")}
    task = parse_task_spec(spec).build()
    assert task.class_names == ("negative", "positive")
    splits = load_splits(task, DataSpec(k=2, seed=13))
    assert [len(s) for s in splits] == [4, 4, 1]
    with pytest.warns(UserWarning, match=r"classes \['negative', 'positive'\] have fewer than 2k=8"):
        load_splits(task, DataSpec(k=4, seed=13))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, r"unknown key 'colour'; known keys: \['data', 'family'"),
        ({"data": {"train_file": "a.csv", "test_file": "b.csv", "colums": {}}}, "unknown key 'data.colums'"),
        ({"template": "{sentence} It was great."}, r"needs exactly one \{mask\}"),
        (
            {"template": "{text} It was {mask}."},
            r"template field \{text\} is not among input_fields \['sentence'\]",
        ),
        ({"template": "{sentence} a_b {mask}"}, "LM-BFF's template language"),
        ({"labels": None}, "a classification task needs labels"),
        ({"kind": "generation", "labels": None}, "family 'mlm' reads a label word at the mask"),
        ({"family": "causal"}, "a causal task has a 'prompt'"),
        ({"data": {"source": "hub"}}, "data.source='hub' needs path"),
        ({"data": {"train_file": "a.csv"}}, "needs train_file and test_file"),
    ],
)
def test_bad_task_definitions_name_the_key_and_value(change, message):
    with pytest.raises(ValueError, match=message):
        parse_task_spec({**SST2_MLM, **change})


def test_causal_prompt_fields_must_exist():
    with pytest.raises(ValueError, match=r"prompt uses \['review'\], not among input_fields"):
        parse_task_spec({**SST2_CAUSAL, "prompt": "{review} It was"})


def test_a_label_the_task_does_not_name_is_reported_with_file_row_and_value(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\ngood,1\nbad,neutral\n")
    (tmp_path / "test.csv").write_text("sentence,label\ngood,1\n")
    task = parse_task_spec(
        {
            **SST2_MLM,
            "data": {"train_file": str(tmp_path / "train.csv"), "test_file": str(tmp_path / "test.csv")},
        }
    ).build()
    with pytest.raises(
        ValueError, match=r"train\.csv, data row 1: .*label 'neutral' is not one of .*\['0', '1'\]"
    ):
        load_splits(task, DataSpec(k=1))


@pytest.mark.parametrize("content", ["", "sentence,label\n"])
def test_empty_files_are_named(tmp_path, content):
    (tmp_path / "train.csv").write_text(content)
    (tmp_path / "test.csv").write_text("sentence,label\ngood,1\n")
    task = parse_task_spec(
        {
            **SST2_MLM,
            "data": {"train_file": str(tmp_path / "train.csv"), "test_file": str(tmp_path / "test.csv")},
        }
    ).build()
    with pytest.raises(ValueError, match=r"train\.csv: (the file has no data rows|unreadable as csv)"):
        load_splits(task, DataSpec(k=1))


def test_a_multi_token_label_word_shows_its_tokens_and_the_leading_space_rule(roberta_tokenizer):
    task = parse_task_spec({**SST2_MLM, "labels": {0: "terrible", 1: "greatness"}}).build()
    with pytest.raises(ValueError, match=r"label word ' greatness' is \d+ tokens \[.*byte-level BPE.*'Ġ'"):
        task.label_word_ids(roberta_tokenizer)


def test_labels_as_a_list_serve_the_classification_head_only(roberta_tokenizer):
    task = parse_task_spec({**SST2_MLM, "labels": ["neg", "pos"], "template": None}).build()
    assert task.parse_label("pos") == 1 and task.label_words == ()
    with pytest.raises(ValueError, match=r"labels are a list.*prompt: false"):
        task.label_word_ids(roberta_tokenizer)


def test_parquet_and_jsonl_files_are_read(tmp_path):
    import pandas as pd

    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(8)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    task = parse_task_spec(
        {
            **SST2_MLM,
            "data": {
                "train_file": str(tmp_path / "train.parquet"),
                "test_file": str(tmp_path / "test.jsonl"),
            },
        }
    ).build()
    assert [len(s) for s in load_splits(task, DataSpec(k=2))] == [4, 4, 2]


def test_generation_answers_and_exact_match():
    task = parse_task_spec(
        {
            "name": "qa",
            "family": "causal",
            "kind": "generation",
            "input_fields": ["question"],
            "prompt": "Q: {question}\nA:",
            "metric": "exact_match",
            "data": {"train_file": "a.csv", "test_file": "b.csv"},
        }
    ).build()
    ex = task.example_from_record({"question": "2+2?", "answers": ["four", "4"]})
    assert task.prompt(ex) == "Q: 2+2?\nA:" and task.target(ex) == " four\n"
    assert task.score(["The four.", "five"], [ex, ex]) == 0.5  # normalised: articles and punctuation go


def test_multiple_choice_reads_its_candidates_from_the_choices_field():
    task = parse_task_spec(
        {
            "name": "pick",
            "family": "causal",
            "kind": "multiple_choice",
            "input_fields": ["question", "choices"],
            "prompt": "{question} The answer is",
            "data": {"train_file": "a.csv", "test_file": "b.csv"},
        }
    ).build()
    ex = task.example_from_record({"question": "Sky?", "choices": '["green", "blue"]', "answer": "blue"})
    assert ex.label == 1 and task.prompt(ex) == "Sky? The answer is"
    assert task.candidates(ex) == [" green", " blue"] and task.score([1], [ex]) == 1.0
