"""The offline synthetic SST-2 task and its pretraining corpus."""

import inspect
import math
import statistics
from collections import Counter

from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mezo_ray.tasks import (
    DataSpec,
    Example,
    get_task,
    load_pool,
    load_splits,
    synthetic_pretraining_corpus,
    synthetic_sst2_examples,
    synthetic_vocabulary,
)


def test_examples_are_a_pure_function_of_the_seed():
    assert synthetic_sst2_examples(50, seed=3) == synthetic_sst2_examples(50, seed=3)
    assert synthetic_sst2_examples(50, seed=3) != synthetic_sst2_examples(50, seed=4)
    assert synthetic_pretraining_corpus(50, seed=3) == synthetic_pretraining_corpus(50, seed=3)
    assert synthetic_pretraining_corpus(50, seed=3) != synthetic_pretraining_corpus(50, seed=4)


def test_corpus_signature_is_the_agreed_one():
    signature = inspect.signature(synthetic_pretraining_corpus)
    assert str(signature) == "(num_sentences: int, seed: int) -> list[str]"
    corpus = synthetic_pretraining_corpus(num_sentences=7, seed=0)
    assert len(corpus) == 7 and all(isinstance(line, str) and line for line in corpus)


def test_splits_sample_like_the_roberta_tasks():
    task = get_task("synthetic-sst2")
    splits = load_splits(task, DataSpec(k=16, seed=13))
    assert [len(s) for s in splits] == [32, 32, 1000]
    assert sorted(ex.label for ex in splits.train) == [0] * 16 + [1] * 16
    assert load_splits(task, DataSpec(k=16, seed=13)) == splits
    assert load_splits(task, DataSpec(k=16, seed=21)).train != splits.train


def test_causal_twin_uses_sst2_prompt_and_opt_sampling():
    task = get_task("synthetic-sst2-causal")
    splits = load_splits(task)
    assert [len(s) for s in splits] == [1000, 500, 1000]
    ex = Example({"sentence": "a lovely film ."}, label=1)
    assert (task.prompt(ex), task.candidates(ex)) == ("a lovely film . It was", [" terrible", " great"])


def test_mlm_twin_renders_with_sst2_template(roberta_tokenizer):
    task = get_task("synthetic-sst2")
    assert task.render_mlm(Example({"sentence": "a great film ."}), roberta_tokenizer) == (
        "<s>a great film . It was<mask>.</s>"
    )


def test_vocabulary_is_small_and_closed():
    vocabulary = set(synthetic_vocabulary())
    used = {word for line in synthetic_pretraining_corpus(3000, seed=1) for word in line.split()}
    used |= {word for ex in synthetic_sst2_examples(3000, seed=1) for word in ex.fields["sentence"].split()}
    assert used <= vocabulary
    assert {"It", "was", "great", "terrible", "."} <= used
    assert 150 <= len(vocabulary) <= 500


def _sentences(examples):
    return [ex.fields["sentence"] for ex in examples]


def test_labels_are_learnable_but_noisy():
    pool = load_pool(get_task("synthetic-sst2"))
    vectorizer = CountVectorizer(token_pattern=r"\S+")
    features = vectorizer.fit_transform(_sentences(pool.train))
    model = LogisticRegression(max_iter=1000).fit(features, [ex.label for ex in pool.train])
    accuracy = model.score(vectorizer.transform(_sentences(pool.test)), [ex.label for ex in pool.test])
    assert 0.8 < accuracy < 0.97  # well above chance; 5% label noise keeps it below perfect


def test_corpus_label_words_rank_sentiment_but_favour_great():
    """A count model of "It was <label word>" in the corpus (a zero-shot proxy): its log-odds rank test
    reviews by sentiment well (AUC), but read at 0 they answer "great" too often (accuracy well below)."""
    counts = {word: Counter() for word in ("terrible", "great")}  # label word -> document frequencies
    totals = Counter()  # label word -> number of lines ending "It was <label word> ."
    for line in synthetic_pretraining_corpus(20_000, seed=1):
        words = line.split()
        if words[-4:-2] == ["It", "was"] and words[-2] in counts:
            counts[words[-2]].update(set(words[:-4]))
            totals[words[-2]] += 1

    def log_odds(sentence: str) -> float:  # naive Bayes over word presence: great over terrible
        score = {
            word: math.log(totals[word])
            + sum(math.log((counts[word][w] + 1) / (totals[word] + 2)) for w in set(sentence.split()))
            for word in counts
        }
        return score["great"] - score["terrible"]

    test = load_pool(get_task("synthetic-sst2")).test
    scores = [log_odds(ex.fields["sentence"]) for ex in test]
    labels = [ex.label for ex in test]

    def accuracy(threshold: float) -> float:
        return sum((s > threshold) == bool(y) for s, y in zip(scores, labels, strict=True)) / len(test)

    zero_shot, calibrated = accuracy(0.0), accuracy(statistics.median(scores))
    said_great = sum(s > 0 for s in scores) / len(test)
    assert roc_auc_score(labels, scores) > 0.85  # the sentiment is in there,
    assert said_great > 0.6  # read off at 0 it answers "great" too often (half the reviews are positive),
    assert calibrated > zero_shot + 0.05  # and a shifted threshold gains (the fix MeZO can find)
