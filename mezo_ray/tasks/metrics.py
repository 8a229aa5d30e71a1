"""Task metrics: accuracy, SQuAD-normalised token F1 and exact match (max over gold answers).

No installed library does exactly this (``evaluate`` is not a dependency), so the SQuAD v1.1 normalisation is
written out here; it matches MeZO's ``large_models/metrics.py`` (which is the official SQuAD script's).
"""

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between the normalised prediction and one normalised gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:  # also when both normalise to "" (SQuAD v1.1 and MeZO score that 0)
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token F1 against the best-matching gold answer."""
    if not golds:
        raise ValueError(
            f"max_token_f1 needs at least one gold answer; got none for prediction {prediction!r}"
        )
    return max(token_f1(prediction, gold) for gold in golds)


def max_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    if not golds:
        raise ValueError(f"max_exact_match needs at least one gold answer; got none for {prediction!r}")
    return float(any(normalize_answer(prediction) == normalize_answer(gold) for gold in golds))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; a clear error instead of ZeroDivisionError for an empty evaluation set."""
    if not values:
        raise ValueError("cannot compute a metric over zero examples")
    return float(sum(values)) / len(values)
