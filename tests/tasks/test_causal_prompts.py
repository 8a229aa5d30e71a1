"""OPT prompts, candidates, targets and ICL formatting of the eleven causal tasks (protocol §2.2, §2.3)."""

import pytest

from mezo_ray.tasks import get_task

# (task, raw record as the hub spells it, prompt, candidates, gold label)
CLASSIFICATION = [
    (
        "SST2",
        {"sentence": " a gripping movie . ", "label": 1},
        "a gripping movie . It was",
        [" terrible", " great"],
        1,
    ),
    (
        "RTE",
        {"premise": "Cats purr.", "hypothesis": "Cats make sounds.", "label": 0},
        'Cats purr.\nDoes this mean that "Cats make sounds." is true? Yes or No?\n',
        ["Yes", "No"],
        0,
    ),
    (
        "CB",
        {"premise": "It rained.", "hypothesis": "The ground is wet.", "label": 2},
        'Suppose It rained. Can we infer that "The ground is wet."? Yes, No, or Maybe?\n',
        ["Yes", "No", "Maybe"],
        2,
    ),
    (
        "BoolQ",
        {"passage": "The sky is blue.", "question": "is the sky blue", "answer": False},
        "The sky is blue. Is the sky blue?\n",
        ["Yes", "No"],
        1,
    ),
    (
        "WSC",
        {
            "text": "Mark lied to Pete about himself.",
            "span1_text": "Mark",
            "span2_text": "Himself",
            "label": 1,
        },
        'Mark lied to Pete about himself.\nIn the previous sentence, does the pronoun "himself" '
        "refer to Mark? Yes or No?\n",
        ["No", "Yes"],
        1,
    ),
    (
        "WIC",
        {"word": "bank", "sentence1": "A river bank.", "sentence2": "A bank loan.", "label": 0},
        'Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
        "A river bank.\nA bank loan.\n",
        ["No", "Yes"],
        0,
    ),
    (
        "MultiRC",
        {"paragraph": "Tom has a dog.", "question": "What does Tom have?", "answer": "a dog", "label": 1},
        'Tom has a dog.\nQuestion: What does Tom have?\nI found this answer "a dog". '
        "Is that correct? Yes or No?\n",
        ["No", "Yes"],
        1,
    ),
    (
        "Copa",
        {
            "premise": "The man broke his toe. ",
            "question": "cause",
            "label": 0,
            "choice1": "He dropped a hammer on his foot.",
            "choice2": "I kicked the wall.",
        },
        "The man broke his toe because",
        [" he dropped a hammer on his foot.", " I kicked the wall."],
        0,
    ),
    (
        "Copa",
        {
            "premise": "The sun rose.",
            "question": "effect",
            "label": 1,
            "choice1": "The night began.",
            "choice2": "The birds sang.",
        },
        "The sun rose so",
        [" the night began.", " the birds sang."],
        1,
    ),
    (
        "ReCoRD",
        {
            "passage": "Story text.\n@highlight\nFirst point\n@highlight\nSecond point",
            "query": "@placeholder won.",
            "entities": ["Alice", "Bob"],
            "answers": ["Bob"],
        },
        "Story text.\n- First point\n- Second point\n-",
        [" Alice won.", " Bob won."],
        1,
    ),
]

GENERATION = [
    (
        "SQuAD",
        {
            "title": "Paris",
            "context": "Paris is in France.",
            "question": " Where is Paris? ",
            "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
        },
        "Title: Paris\nContext: Paris is in France.\nQuestion: Where is Paris?\nAnswer:",
        " France\n",
        ("France", "in France"),
    ),
    (
        "DROP",
        {
            "passage": "They scored 3 and 9.",
            "question": "How many in total? ",
            "answers": {"spans": ["12"], "types": ["number"]},
        },
        "Passage: They scored 3 and 9.\nQuestion: How many in total?\nAnswer:",
        " 12\n",
        ("12",),
    ),
]


@pytest.mark.parametrize(
    ("name", "record", "prompt", "candidates", "label"), CLASSIFICATION, ids=[c[0] for c in CLASSIFICATION]
)
def test_prompt_and_candidates_match_reference(name, record, prompt, candidates, label):
    task = get_task(name, family="causal")
    ex = task.example_from_record(record)
    assert ex.label == label
    assert task.prompt(ex) == prompt
    assert task.candidates(ex) == candidates


@pytest.mark.parametrize(("name", "record", "prompt", "target", "answers"), GENERATION, ids=["SQuAD", "DROP"])
def test_generation_prompt_and_target(name, record, prompt, target, answers):
    task = get_task(name)
    ex = task.example_from_record(record)
    assert (task.prompt(ex), task.target(ex), ex.answers, ex.label) == (prompt, target, answers, None)
    with pytest.raises(ValueError, match="generation task"):
        task.candidates(ex)


def test_train_as_classification_and_kinds_follow_protocol():
    expected = {
        "SST2": ("classification", True, "accuracy"),
        "RTE": ("classification", True, "accuracy"),
        "CB": ("classification", True, "accuracy"),
        "BoolQ": ("classification", True, "accuracy"),
        "WSC": ("classification", True, "accuracy"),
        "WIC": ("classification", True, "accuracy"),
        "MultiRC": ("classification", True, "accuracy"),
        "Copa": ("multiple_choice", False, "accuracy"),
        "ReCoRD": ("multiple_choice", False, "accuracy"),
        "SQuAD": ("generation", False, "f1"),
        "DROP": ("generation", False, "f1"),
    }
    got = {
        name: (t.kind, t.train_as_classification, t.metric_name)
        for name in expected
        for t in [get_task(name, family="causal")]
    }
    assert got == expected


def test_icl_prompt_joins_gold_demonstrations_with_blank_lines():
    task = get_task("SST2")
    demos = [task.example_from_record({"sentence": s, "label": y}) for s, y in [("fun .", 1), ("dull .", 0)]]
    test = task.example_from_record({"sentence": "a film .", "label": 1})
    assert task.icl_prompt(test, demos) == "fun . It was great\n\ndull . It was terrible\n\na film . It was"
    assert task.icl_prompt(test, []) == task.prompt(test)


def test_icl_demonstrations_of_multiple_choice_and_generation_use_the_gold_answer():
    copa = get_task("Copa")
    demo = copa.example_from_record(CLASSIFICATION[8][1])
    assert copa.demonstration(demo) == "The sun rose so the birds sang."
    squad = get_task("SQuAD")
    demo = squad.example_from_record(GENERATION[0][1])
    test = squad.example_from_record({**GENERATION[0][1], "question": "What is Paris?"})
    assert squad.icl_prompt(test, [demo]) == (
        "Title: Paris\nContext: Paris is in France.\nQuestion: Where is Paris?\nAnswer: France\n\n"
        "Title: Paris\nContext: Paris is in France.\nQuestion: What is Paris?\nAnswer:"
    )


def test_record_counts_any_gold_entity_as_correct():
    task = get_task("ReCoRD")
    record = {
        "passage": "p",
        "query": "@placeholder.",
        "entities": ["Ann", "Bo", "Cy"],
        "answers": ["Cy", "Ann"],
    }
    ex = task.example_from_record(record)
    assert ex.label == 2  # trains on the first gold answer
    assert task.score([0, 2, 1], [ex, ex, ex]) == pytest.approx(2 / 3)


def test_record_gold_answer_must_be_an_entity():
    with pytest.raises(ValueError, match="'Dan' is not among the choices"):
        get_task("ReCoRD").example_from_record(
            {"passage": "p", "query": "q", "entities": ["Ann"], "answers": ["Dan"]}
        )


def test_classification_score_is_accuracy():
    task = get_task("CB")
    exs = [task.example_from_record({"premise": "p", "hypothesis": "h", "label": y}) for y in (0, 1, 2, 2)]
    assert task.score([0, 1, 0, 2], exs) == 0.75
    with pytest.raises(ValueError, match="3 predictions for 4 examples"):
        task.score([0, 1, 0], exs)


def test_bad_label_names_the_value_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"label 'yes' is not one of the allowed values \['True', 'False'\]"):
        get_task("BoolQ").example_from_record({"passage": "p", "question": "q", "answer": "yes"})
