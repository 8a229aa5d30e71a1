"""RoBERTa tasks with LM-BFF prompts: the template mini-language and the six paper tasks (protocol §1.1).

A template is parts separated by `*`, tokenized piece by piece and concatenated (LM-BFF's
`tokenize_multipart_input`, so the ids match the paper's exactly, not a re-tokenization of the joined text):

- `cls`, `mask`, `sep`, `sep+`, `bos`, `eos`: the tokenizer's special token;
- `sent_i`: input field i; modifiers combine as in LM-BFF: a `+` prefix adds a leading space, `l` / `u`
  lower- / upper-cases the first character, `-` deletes the LAST character (`sent-_0`, `+sentl_1`);
- anything else is literal text with `_` meaning space; a single-character literal (`.`, `?`, `,`, `:`) is
  looked up with `convert_tokens_to_ids`, i.e. without a leading space.

Sentence 0 is cut to `first_sent_limit` tokens, the others to `other_sent_limit`; the whole input is then cut
at the tail to `max_length`.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from mezo_ray.tasks.base import Example, Family, HubSource, Task

_SPECIAL_PARTS = {
    "cls": "cls_token_id",
    "mask": "mask_token_id",
    "sep": "sep_token_id",
    "sep+": "sep_token_id",
    "bos": "bos_token_id",
    "eos": "eos_token_id",
}
_SENTENCE_PART = re.compile(r"^(?P<space>\+?)sent(?P<case>[lu]?)(?P<drop_last>-?)_(?P<index>\d+)$")


def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def leading_space_rule(tokenizer: Any) -> str:
    """How ``tokenizer`` spells a word after a space, for messages about label words."""
    token = (tokenizer.tokenize(" a") or [""])[0]
    if token.startswith("Ġ"):
        return "byte-level BPE (RoBERTa, GPT-2): a leading space is part of the token, written 'Ġ'"
    if token.startswith("▁"):
        return "sentencepiece: a leading space is part of the token, written '▁'"
    if token.startswith("##") or token == "a":
        return "WordPiece (BERT): spaces split words and are not part of tokens; '##' marks a word's inside"
    return f"' a' is tokenized as {tokenizer.tokenize(' a')}"


def _sentence_text(part: re.Match, texts: Sequence[str]) -> tuple[int, str]:
    index = int(part["index"])
    if index >= len(texts):
        raise ValueError(f"template part {part[0]!r} refers to sentence {index}; the task has {len(texts)}")
    text = texts[index]
    if part["case"] == "l":
        text = text[:1].lower() + text[1:]
    elif part["case"] == "u":
        text = text[:1].upper() + text[1:]
    if part["drop_last"]:
        text = text[:-1]
    if part["space"]:
        text = " " + text
    return index, text


def encode_template(
    template: str,
    texts: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int,
    first_sent_limit: int | None = None,
    other_sent_limit: int | None = None,
) -> list[int]:
    """Token ids of `texts` rendered through an LM-BFF template (special tokens included, tail-truncated)."""
    input_ids: list[int] = []
    for part in template.split("*"):
        if part in _SPECIAL_PARTS:
            token_id = getattr(tokenizer, _SPECIAL_PARTS[part])
            if token_id is None:
                raise ValueError(
                    f"template part *{part}* needs a token that {_tokenizer_name(tokenizer)} lacks"
                )
            input_ids.append(token_id)
        elif sentence := _SENTENCE_PART.match(part):
            index, text = _sentence_text(sentence, texts)
            limit = first_sent_limit if index == 0 else other_sent_limit
            input_ids += tokenizer.encode(text, add_special_tokens=False)[:limit]
        elif len(literal := part.replace("_", " ")) == 1:
            token_id = tokenizer.convert_tokens_to_ids(literal)
            if token_id is None or (token_id == tokenizer.unk_token_id and literal != tokenizer.unk_token):
                raise ValueError(
                    f"template literal {literal!r} is not a token of {_tokenizer_name(tokenizer)}"
                )
            input_ids.append(token_id)
        else:
            input_ids += tokenizer.encode(literal, add_special_tokens=False)
    return input_ids[:max_length]


@dataclass(frozen=True)
class LmBffFiles:
    """How LM-BFF stores a task: GLUE TSVs (header; text and label columns by position) or header-less CSVs.

    `dev_name` / `test_name` are the file stems inside a k-shot folder `{task}/{k}-{seed}/`;
    `original_test_name` is the file of the original pack that becomes the test set (GLUE: the dev set).
    """

    format: Literal["tsv", "csv"]
    text_columns: tuple[int, ...]
    label_column: int
    dev_name: str = "dev"
    test_name: str = "test"
    original_test_name: str = "dev"


@dataclass(frozen=True, kw_only=True)
class MLMTask(Task):
    """A RoBERTa prompt task: the label is read off the MLM logits of `label_words` at the mask."""

    family: ClassVar[Family] = "mlm"

    template: str
    label_words: tuple[str, ...]
    max_length: int = 128
    first_sent_limit: int | None = None
    other_sent_limit: int | None = None
    lmbff: LmBffFiles | None = None

    def __post_init__(self) -> None:
        if self.label_words and len(self.label_words) != len(self.label_names):
            raise ValueError(
                f"task {self.name}: {len(self.label_words)} label words {self.label_words} for "
                f"{len(self.label_names)} labels {self.label_names}; they must pair up in logit order"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        """The label words, or the labels where a task lists them without words (``prompt: false``)."""
        return self.label_words or self.label_names

    def label_word_ids(self, tokenizer: Any) -> list[int]:
        """Vocabulary id of " " + word for each label word, in logit order; each must be ONE token."""
        if not self.label_words:
            raise ValueError(
                f"task {self.name} has no label words (its labels are a list): a prompt reads the label "
                f"off a label word at the mask; give labels as value: word, or use prompt: false"
            )
        ids = []
        for word in self.label_words:
            # LM-BFF adds the space except before words that start with a special/punctuation character.
            spelled = word if word[0] in "<[.," else " " + word
            tokens = tokenizer.tokenize(spelled)
            if len(tokens) != 1:
                raise ValueError(
                    f"task {self.name}: label word {spelled!r} is {len(tokens)} tokens {tokens} under "
                    f"tokenizer {_tokenizer_name(tokenizer)} ({leading_space_rule(tokenizer)}); label "
                    f"words must be single tokens: pick a word that is one token after a space"
                )
            token_id = tokenizer.convert_tokens_to_ids(tokens[0])
            if token_id == tokenizer.unk_token_id:
                raise ValueError(
                    f"task {self.name}: label word {spelled!r} is not in the vocabulary of tokenizer "
                    f"{_tokenizer_name(tokenizer)}: it becomes the unknown token {tokens[0]!r} "
                    f"({leading_space_rule(tokenizer)}); pick a word the tokenizer knows"
                )
            ids.append(token_id)
        return ids

    def encode_mlm(self, ex: Example, tokenizer: Any) -> list[int]:
        """Full input ids of the prompted example: special tokens included, exactly one mask id."""
        texts = [ex.fields[name] for name in self.input_fields]
        ids = encode_template(
            self.template,
            texts,
            tokenizer,
            max_length=self.max_length,
            first_sent_limit=self.first_sent_limit,
            other_sent_limit=self.other_sent_limit,
        )
        if ids.count(tokenizer.mask_token_id) != 1:
            raise ValueError(
                f"task {self.name}: the prompted input has {ids.count(tokenizer.mask_token_id)} mask tokens, "
                f"needs exactly 1 (truncated at max_length={self.max_length}, or the text contains "
                f"{tokenizer.mask_token!r}): {texts!r}"
            )
        return ids

    def render_mlm(self, ex: Example, tokenizer: Any) -> str:
        """The prompted example as text, e.g. "<s>great movie It was<mask>.</s>"."""
        return tokenizer.decode(self.encode_mlm(ex, tokenizer), clean_up_tokenization_spaces=False)


SST2_TEMPLATE = "*cls**sent_0*_It_was*mask*.*sep+*"
NLI_TEMPLATE = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
NLI_LABELS = ("contradiction", "entailment", "neutral")  # LM-BFF's label (= logit) order
HUB_NLI_LABELS = ("entailment", "neutral", "contradiction")  # class ids of glue/mnli and snli on the hub

MLM_TASKS: tuple[MLMTask, ...] = (
    MLMTask(
        name="SST-2",
        input_fields=("sentence",),
        label_names=("0", "1"),
        label_words=("terrible", "great"),
        template=SST2_TEMPLATE,
        source=HubSource("nyu-mll/glue", "sst2"),
        lmbff=LmBffFiles("tsv", text_columns=(0,), label_column=-1),
    ),
    MLMTask(
        name="sst-5",
        input_fields=("sentence",),
        label_names=("0", "1", "2", "3", "4"),
        label_words=("terrible", "bad", "okay", "good", "great"),
        template=SST2_TEMPLATE,
        first_sent_limit=110,
        other_sent_limit=20,
        source=HubSource("SetFit/sst5", test_split="test", columns={"sentence": "text"}),
        lmbff=LmBffFiles("csv", text_columns=(1,), label_column=0, original_test_name="test"),
    ),
    MLMTask(
        name="trec",
        input_fields=("sentence",),
        # LM-BFF's csv ids: 0 DESC, 1 ENTY, 2 ABBR ("Expression"), 3 HUM, 4 LOC, 5 NUM.
        label_names=("0", "1", "2", "3", "4", "5"),
        label_words=("Description", "Entity", "Expression", "Human", "Location", "Number"),
        template="*cls**mask*:*+sent_0**sep+*",
        first_sent_limit=110,
        # The hub's coarse_label ids are ABBR, ENTY, DESC, HUM, LOC, NUM.
        source=HubSource(
            "CogComp/trec",
            test_split="test",
            columns={"sentence": "text", "label": "coarse_label"},
            label_names=("2", "1", "0", "3", "4", "5"),
        ),
        lmbff=LmBffFiles("csv", text_columns=(1,), label_column=0, original_test_name="test"),
    ),
    MLMTask(
        name="MNLI",
        input_fields=("premise", "hypothesis"),
        label_names=NLI_LABELS,
        label_words=("No", "Yes", "Maybe"),
        template=NLI_TEMPLATE,
        max_length=256,
        first_sent_limit=240,
        source=HubSource("nyu-mll/glue", "mnli", test_split="validation_matched", label_names=HUB_NLI_LABELS),
        lmbff=LmBffFiles(
            "tsv",
            text_columns=(8, 9),
            label_column=-1,
            dev_name="dev_matched",
            test_name="test_matched",
            original_test_name="dev_matched",
        ),
    ),
    MLMTask(
        name="SNLI",
        input_fields=("premise", "hypothesis"),
        label_names=NLI_LABELS,
        label_words=("No", "Yes", "Maybe"),
        template=NLI_TEMPLATE,
        max_length=256,
        source=HubSource("stanfordnlp/snli", label_names=HUB_NLI_LABELS),
        lmbff=LmBffFiles("tsv", text_columns=(7, 8), label_column=-1),
    ),
    MLMTask(
        name="RTE",
        input_fields=("premise", "hypothesis"),
        label_names=("entailment", "not_entailment"),
        label_words=("Yes", "No"),
        template=NLI_TEMPLATE,
        max_length=256,
        first_sent_limit=240,
        source=HubSource(
            "nyu-mll/glue",
            "rte",
            columns={"premise": "sentence1", "hypothesis": "sentence2"},
            label_names=("entailment", "not_entailment"),
        ),
        lmbff=LmBffFiles("tsv", text_columns=(1, 2), label_column=-1),
    ),
)
