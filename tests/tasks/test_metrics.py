"""SQuAD-normalised token F1 and task scoring."""

import pytest

from mezo_ray.tasks import get_task, max_token_f1, normalize_answer, token_f1


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Cat", "cat"),  # lower-case, article dropped
        ("an apple, a pear and the plum.", "apple pear and plum"),  # punctuation and every article
        ("  many \t spaces\n here ", "many spaces here"),  # whitespace collapsed
        ("theatre anthem", "theatre anthem"),  # articles only as whole words
        ("U.S.-based", "usbased"),  # punctuation removed, not replaced by a space
        ("A", ""),
    ],
)
def test_normalize_answer_classic_cases(text, normalised):
    assert normalize_answer(text) == normalised


def test_token_f1_partial_overlap():
    # prediction {cat, sat}, gold {cat, sat, down}: precision 1, recall 2/3
    assert token_f1("The cat sat", "cat sat down") == pytest.approx(0.8)


def test_token_f1_counts_repeated_tokens_once_per_match():
    # {x: 2, y: 1} & {x: 1, y: 2} = {x: 1, y: 1}: 2 common tokens of 3 predicted and 3 gold
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)


def test_token_f1_edge_cases():
    assert token_f1("Paris!", "paris") == 1.0
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalise to nothing: 0, as SQuAD v1.1 and MeZO score it


def test_max_token_f1_takes_the_best_gold():
    assert max_token_f1("blue whale", ["the whale", "The blue whale", "shark"]) == 1.0
    with pytest.raises(ValueError, match="at least one gold answer"):
        max_token_f1("x", [])


def test_generation_task_scores_mean_f1():
    task = get_task("SQuAD")
    record = {"title": "t", "context": "c", "question": "q"}
    exs = [
        task.example_from_record({**record, "answers": gold})
        for gold in (["Paris"], ["cat sat down", "feline"])
    ]
    assert task.score(["paris", "The cat sat"], exs) == pytest.approx((1.0 + 0.8) / 2)


def test_score_of_no_examples_raises():
    with pytest.raises(ValueError, match="zero examples"):
        get_task("SST-2").score([], [])
