"""An offline stand-in for SST-2: generated movie-review sentences and a matching pretraining corpus.

`synthetic-sst2` (MLM, SST-2's template and label words) and `synthetic-sst2-causal` (SST2's OPT prompt)
label short lower-cased sentences by sentiment. Each sentence carries 1-3 sentiment words, each agreeing
with the sentence's label with probability 0.9, and 5% of labels are flipped: a bag-of-words classifier
learns it well (about 85-90% accuracy), but not perfectly.

`synthetic_pretraining_corpus` is plain text for pretraining tiny models offline. Label words follow reviews
("... It was great .") and track their sentiment, but skewed: "great" follows 90% of positive reviews and
also 35% of negative ones, "terrible" 35% of negative ones (the rest end in a neutral adjective). A tiny LM
pretrained on it ranks reviews by sentiment but says "great" too often, so its zero-shot accuracy is only
about 0.65: the miscalibrated label words of real LMs (Zhao et al. 2021, "Calibrate before use") in small.
Prompt-based fine-tuning has a low-dimensional fix to find, as in the paper's tasks, and MeZO finds it
within a few hundred steps (about 0.87 after 600).

The vocabulary is a few hundred words (`synthetic_vocabulary()`), so a word-level tokenizer covers it.
Text is GLUE-tokenized: lower case except "It", punctuation separated by spaces.
"""

import random

from mezo_ray.tasks.base import Example, SyntheticSource
from mezo_ray.tasks.causal import CausalTask, sst2_prompt
from mezo_ray.tasks.mlm import SST2_TEMPLATE, MLMTask


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


POSITIVE = _words(
    "wonderful brilliant charming delightful excellent superb moving gorgeous clever funny fresh "
    "beautiful touching thrilling engaging stunning warm witty lovely powerful smart inspired joyful "
    "elegant vivid heartfelt masterful splendid sharp graceful playful rich tender uplifting remarkable "
    "fantastic enjoyable marvelous compelling sincere"
)
NEGATIVE = _words(
    "awful boring dull tedious bland clumsy stupid lifeless dreary weak messy shallow painful annoying "
    "flat tiresome predictable sloppy hollow lame pointless silly ugly cheap forgettable bloated confused "
    "irritating stale mediocre horrible dismal grating inept sluggish overlong pretentious muddled "
    "joyless wooden"
)
NOUNS = _words(
    "movie film story plot script cast actor actress director scene ending music score camera dialogue "
    "character hero villain picture drama comedy thriller sequel premise pace performance screenplay "
    "soundtrack audience studio family city house road river night morning summer winter war school "
    "friend father mother child dog town island train letter storm"
)
VERBS = _words(
    "feels seems looks sounds becomes remains stays turns plays moves runs shows tells follows finds "
    "keeps gives takes leaves brings makes meets watches opens ends"
)
ADVERBS = _words("very quite really rather mostly truly often always sometimes simply almost fairly deeply")
NEUTRAL_ADJECTIVES = _words(
    "long short old new young quiet loud dark bright small large early late slow fast familiar strange "
    "simple modern classic french american local final first second main other recent serious"
)
PREPOSITIONS = _words("with about in on at for from by near after before")
LABEL_WORDS = ("terrible", "great")  # SST-2's, in label order (0 negative, 1 positive)
# P(label word | review sentiment) in the pretraining corpus; the rest of the mass is a neutral adjective.
LABEL_WORD_ODDS = {True: {"great": 0.90, "terrible": 0.02}, False: {"great": 0.35, "terrible": 0.35}}

_SENTIMENT_CLAUSES = (
    "the {noun} is {adverb} {sentiment}",
    "a {sentiment} {noun}",
    "the {noun} {verb} {sentiment}",
    "{adverb} {sentiment} and {adjective}",
)
_NEUTRAL_CLAUSES = (
    "the {adjective} {noun} {verb} {preposition} the {noun}",
    "a {adjective} {noun} {preposition} a {noun}",
    "it {verb} {preposition} the {adjective} {noun}",
    "the {noun} of the {noun}",
)
_CONNECTORS = (" , ", " and ", " but ", " , and ", " while ")


def _fill(rng: random.Random, pattern: str, sentiment: str = "") -> str:
    """Fill a clause pattern; each placeholder draws its own word."""
    words = {
        "noun": NOUNS,
        "verb": VERBS,
        "adverb": ADVERBS,
        "adjective": NEUTRAL_ADJECTIVES,
        "preposition": PREPOSITIONS,
    }
    out = pattern.replace("{sentiment}", sentiment)
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        out = out[:start] + rng.choice(words[out[start + 1 : end]]) + out[end + 1 :]
    return out


def _review(rng: random.Random, positive: bool, num_sentiment: int) -> tuple[str, list[str]]:
    """A review sentence leaning `positive`, and the sentiment words it used."""
    sentiment_words = [
        rng.choice(POSITIVE if (rng.random() < 0.9) == positive else NEGATIVE) for _ in range(num_sentiment)
    ]
    clauses = [_fill(rng, rng.choice(_SENTIMENT_CLAUSES), word) for word in sentiment_words]
    clauses += [_fill(rng, rng.choice(_NEUTRAL_CLAUSES)) for _ in range(rng.choice((0, 1, 1, 2)))]
    rng.shuffle(clauses)
    sentence = clauses[0]
    for clause in clauses[1:]:
        sentence += rng.choice(_CONNECTORS) + clause
    return sentence + " .", sentiment_words


def synthetic_sst2_examples(num: int, seed: int) -> list[Example]:
    """`num` labelled review sentences (label 1 = positive), a pure function of `seed`."""
    rng = random.Random(seed)
    examples = []
    for _ in range(num):
        positive = rng.random() < 0.5
        sentence, _ = _review(rng, positive, num_sentiment=rng.choices((1, 2, 3), weights=(2, 4, 4))[0])
        label = int(positive) if rng.random() >= 0.05 else int(not positive)  # 5% label noise
        examples.append(Example(fields={"sentence": sentence}, label=label))
    return examples


def _word_after_review(rng: random.Random, positive: bool) -> str:
    """The word after "It was" that ends a pretraining review: a skewed label word, else a neutral one."""
    roll = rng.random()
    for word, odds in LABEL_WORD_ODDS[positive].items():
        if roll < odds:
            return word
        roll -= odds
    return rng.choice(NEUTRAL_ADJECTIVES)


def _generic_sentence(rng: random.Random) -> str:
    """Neutral text; sometimes uses a label word or a sentiment word outside any review."""
    clauses = [_fill(rng, rng.choice(_NEUTRAL_CLAUSES)) for _ in range(rng.choice((1, 2)))]
    roll = rng.random()
    if roll < 0.2:
        clauses.append(f"the {rng.choice(LABEL_WORDS)} {rng.choice(NOUNS)} {rng.choice(VERBS)}")
    elif roll < 0.4:
        clauses.append(f"a {rng.choice(POSITIVE + NEGATIVE)} {rng.choice(NOUNS)}")
    return rng.choice(_CONNECTORS).join(clauses) + " ."


def synthetic_pretraining_corpus(num_sentences: int, seed: int) -> list[str]:
    """`num_sentences` lines of plain text where label words follow sentiment, skewed toward "great"."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_sentences):
        roll = rng.random()
        if roll < 0.5:
            positive = rng.random() < 0.5
            review, _ = _review(rng, positive, num_sentiment=rng.choice((1, 2, 3)))
            lines.append(f"{review} It was {_word_after_review(rng, positive)} .")
        elif roll < 0.6:
            lines.append(f"{_generic_sentence(rng)} It was {rng.choice(NEUTRAL_ADJECTIVES)} .")
        else:
            lines.append(_generic_sentence(rng))
    return lines


def synthetic_vocabulary() -> tuple[str, ...]:
    """Every word and punctuation token that the synthetic task or corpus can produce."""
    words = {"the", "a", "is", "it", "and", "but", "while", "of", "It", "was", ".", ","}
    for group in (POSITIVE, NEGATIVE, NOUNS, VERBS, ADVERBS, NEUTRAL_ADJECTIVES, PREPOSITIONS, LABEL_WORDS):
        words.update(group)
    return tuple(sorted(words))


_SOURCE = SyntheticSource(make=synthetic_sst2_examples)

SYNTHETIC_TASKS = (
    MLMTask(
        name="synthetic-sst2",
        input_fields=("sentence",),
        label_names=("0", "1"),
        label_words=LABEL_WORDS,
        template=SST2_TEMPLATE,
        source=_SOURCE,
    ),
    CausalTask(
        name="synthetic-sst2-causal",
        input_fields=("sentence",),
        label_names=("0", "1"),
        prompt_fn=sst2_prompt,
        answer_sep=" ",
        verbalizer=LABEL_WORDS,
        source=_SOURCE,
    ),
)
