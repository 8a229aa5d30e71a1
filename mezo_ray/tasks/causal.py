"""OPT tasks with MeZO's prompts (protocol §2.2, `large_models/templates.py`).

Each task is a `prompt_fn` (MeZO's `encode`: the prompt without the answer) and a way to verbalize a
candidate (MeZO's `verbalize`: the prompt with it). As in MeZO's `encode_prompt`, both are stripped of spaces
at the ends, and a candidate is what the verbalized text adds to the prompt, so `prompt(ex) + candidate` is
exactly the text MeZO scores (e.g. SST2: "... It was" + " great"; RTE: "...Yes or No?\\n" + "Yes").
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mezo_ray.tasks.base import Example, Family, HubSource, Task

Fields = Mapping[str, Any]
DEMO_SEPARATOR = "\n\n"  # MeZO's train_sep between in-context demonstrations


@dataclass(frozen=True, kw_only=True)
class CausalTask(Task):
    """An OPT prompt task: classification (label words), multiple choice (per-example choices) or generation.

    `verbalize_fn(fields, value)` defaults to `prompt_fn(fields) + answer_sep + value`; `choices_fn` gives
    the candidate values of a multiple-choice example (Copa's two choices, ReCoRD's entities).
    `train_as_classification`: train with CE over the candidates' mean log-probs (True), or LM loss on the
    gold continuation only (False: Copa, ReCoRD, SQuAD, DROP).
    """

    family: ClassVar[Family] = "causal"

    prompt_fn: Callable[[Fields], str]
    verbalize_fn: Callable[[Fields, str], str] | None = None
    answer_sep: str = ""
    verbalizer: tuple[str, ...] = ()
    choices_fn: Callable[[Fields], list[str]] | None = None
    train_as_classification: bool = True
    num_dev: int = 500  # the paper's dev size (CB and Copa: 100)

    def __post_init__(self) -> None:
        if self.kind == "classification" and len(self.verbalizer) != len(self.label_names):
            raise ValueError(
                f"task {self.name}: verbalizer {self.verbalizer} must give one word per label "
                f"{self.label_names}"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.verbalizer or self.label_names

    def verbalize(self, fields: Fields, value: str) -> str:
        """MeZO's `verbalize`: the prompt followed by one candidate value / answer."""
        if self.verbalize_fn is not None:
            return self.verbalize_fn(fields, value)
        return self.prompt_fn(fields) + self.answer_sep + value

    def prompt(self, ex: Example) -> str:
        """The text the model reads before a candidate (no demonstrations)."""
        return self.prompt_fn(ex.fields).strip(" ").lstrip()

    def candidate_values(self, ex: Example) -> list[str]:
        """The raw values scored for `ex`: label words, or the example's choices."""
        if self.kind == "generation":
            raise ValueError(f"task {self.name} is a generation task; it has a target(), not candidates")
        return list(self.verbalizer) if self.choices_fn is None else list(self.choices_fn(ex.fields))

    def _continuation(self, ex: Example, value: str) -> str:
        encoded = self.prompt_fn(ex.fields).strip(" ")
        verbalized = self.verbalize(ex.fields, value).strip(" ")
        if not verbalized.startswith(encoded):
            raise ValueError(
                f"task {self.name}: verbalized text does not extend the prompt for value {value!r}"
            )
        return verbalized[len(encoded) :]

    def candidates(self, ex: Example) -> list[str]:
        """Continuations scored after `prompt(ex)`, one per candidate, in label / choice order."""
        return [self._continuation(ex, value) for value in self.candidate_values(ex)]

    def target(self, ex: Example) -> str:
        """Training continuation of a generation example: " {answers[0]}\\n"."""
        if self.kind != "generation":
            raise ValueError(f"task {self.name} is a {self.kind} task; use candidates(ex)[ex.label]")
        return self._continuation(ex, ex.answers[0])

    def gold_value(self, ex: Example) -> str:
        """The gold candidate value (label word, choice, entity) or the first gold answer."""
        if self.kind == "generation":
            return ex.answers[0]
        return self.candidate_values(ex)[ex.label]

    def demonstration(self, ex: Example) -> str:
        """`ex` verbalized with its gold answer, as an in-context demonstration."""
        return self.verbalize(ex.fields, self.gold_value(ex)).strip()

    def icl_prompt(self, ex: Example, demonstrations: Sequence[Example]) -> str:
        """Demonstrations joined by blank lines, a blank line, then the test prompt (MeZO's ICL format)."""
        demos = DEMO_SEPARATOR.join(self.demonstration(d) for d in demonstrations).strip()
        return (demos + DEMO_SEPARATOR + self.prompt_fn(ex.fields).strip(" ")).lstrip().strip(" ")

    def example_from_record(self, record: Mapping[str, Any]) -> Example:
        example = super().example_from_record(record)
        if self.kind == "multiple_choice" and example.answers:
            # ReCoRD: train on the first gold entity (MeZO: candidates.index(correct_candidate[0])).
            choices = self.candidate_values(example)
            if example.answers[0] not in choices:
                raise ValueError(
                    f"task {self.name}: gold answer {example.answers[0]!r} is not among the choices {choices}"
                )
            example = Example(example.fields, choices.index(example.answers[0]), example.answers)
        return example

    def is_correct(self, prediction: int, example: Example) -> bool:
        if example.answers:  # ReCoRD: the predicted entity is any of the gold answers
            return self.candidate_values(example)[int(prediction)] in example.answers
        return super().is_correct(prediction, example)


# -- prompts (MeZO large_models/templates.py; the default template of each task) --------------------------


def sst2_prompt(f: Fields) -> str:
    return f"{f['sentence'].strip()} It was"


def rte_prompt(f: Fields) -> str:
    return f'{f["premise"]}\nDoes this mean that "{f["hypothesis"]}" is true? Yes or No?\n'


def cb_prompt(f: Fields) -> str:
    return f'Suppose {f["premise"]} Can we infer that "{f["hypothesis"]}"? Yes, No, or Maybe?\n'


def boolq_prompt(f: Fields) -> str:  # BoolQTemplateV3, MeZO's default (get_template(template_version=2))
    question = f["question"]
    if not question.endswith("?"):
        question = question + "?"
    question = question[0].upper() + question[1:]
    return f"{f['passage']} {question}\n"


def wsc_prompt(f: Fields) -> str:
    return (
        f'{f["text"]}\nIn the previous sentence, does the pronoun "{f["span2_text"].lower()}" '
        f"refer to {f['span1_text']}? Yes or No?\n"
    )


def wic_prompt(f: Fields) -> str:
    return (
        f'Does the word "{f["word"]}" have the same meaning in these two sentences? Yes, No?\n'
        f"{f['sentence1']}\n{f['sentence2']}\n"
    )


def multirc_prompt(f: Fields) -> str:
    return (
        f'{f["paragraph"]}\nQuestion: {f["question"]}\nI found this answer "{f["answer"]}". '
        f"Is that correct? Yes or No?\n"
    )


_COPA_CONJUNCTIONS = {"effect": " so ", "cause": " because "}


def copa_prompt(f: Fields) -> str:
    premise = f["premise"].rstrip()
    if premise.endswith("."):
        premise = premise[:-1]
    if f["question"] not in _COPA_CONJUNCTIONS:
        raise ValueError(f"Copa question {f['question']!r} must be one of {list(_COPA_CONJUNCTIONS)}")
    return premise + _COPA_CONJUNCTIONS[f["question"]]


def copa_verbalize(f: Fields, choice: str) -> str:
    words = choice.split(" ")
    if words[0] != "I":  # lower-case the choice's first word, except the pronoun "I"
        words[0] = words[0].lower()
    return copa_prompt(f) + " ".join(words)


def copa_choices(f: Fields) -> list[str]:
    return [f["choice1"], f["choice2"]]


def _record_passage(f: Fields) -> str:
    return f["passage"].replace("@highlight\n", "- ")


def record_prompt(f: Fields) -> str:  # ReCoRDTemplateGPT3
    return f"{_record_passage(f)}\n-"


def record_verbalize(f: Fields, entity: str) -> str:
    return f"{_record_passage(f)}\n- {f['query'].replace('@placeholder', entity)}"


def record_choices(f: Fields) -> list[str]:
    return list(f["entities"])


def squad_prompt(f: Fields) -> str:
    return f"Title: {f['title']}\nContext: {f['context']}\nQuestion: {f['question'].strip()}\nAnswer:"


def squad_verbalize(f: Fields, answer: str) -> str:
    return f"{squad_prompt(f)} {answer}\n"


def drop_prompt(f: Fields) -> str:
    return f"Passage: {f['passage']}\nQuestion: {f['question'].strip()}\nAnswer:"


def drop_verbalize(f: Fields, answer: str) -> str:
    return f"{drop_prompt(f)} {answer}\n"


def _super_glue(config: str, train_rows: int) -> HubSource:
    return HubSource("aps/super_glue", config, train_rows=train_rows)


YES_NO = ("Yes", "No")
NO_YES = ("No", "Yes")
BINARY = ("0", "1")

CAUSAL_TASKS: tuple[CausalTask, ...] = (
    CausalTask(
        name="SST2",
        input_fields=("sentence",),
        label_names=BINARY,
        prompt_fn=sst2_prompt,
        answer_sep=" ",
        verbalizer=("terrible", "great"),
        source=HubSource("nyu-mll/glue", "sst2", train_rows=67349),
    ),
    CausalTask(
        name="RTE",
        input_fields=("premise", "hypothesis"),
        label_names=BINARY,  # super_glue: 0 entailment, 1 not_entailment
        prompt_fn=rte_prompt,
        verbalizer=YES_NO,
        source=_super_glue("rte", train_rows=2490),
    ),
    CausalTask(
        name="CB",
        input_fields=("premise", "hypothesis"),
        label_names=("0", "1", "2"),  # super_glue: entailment, contradiction, neutral
        prompt_fn=cb_prompt,
        verbalizer=("Yes", "No", "Maybe"),
        num_dev=100,
        source=_super_glue("cb", train_rows=250),
    ),
    CausalTask(
        name="BoolQ",
        input_fields=("passage", "question"),
        target_field="answer",
        label_names=("True", "False"),  # answer True -> "Yes"
        prompt_fn=boolq_prompt,
        verbalizer=YES_NO,
        source=HubSource("google/boolq", train_rows=9427),
    ),
    CausalTask(
        name="WSC",
        input_fields=("text", "span1_text", "span2_text"),
        label_names=BINARY,
        prompt_fn=wsc_prompt,
        verbalizer=NO_YES,
        source=_super_glue("wsc.fixed", train_rows=554),
    ),
    CausalTask(
        name="WIC",
        input_fields=("word", "sentence1", "sentence2"),
        label_names=BINARY,
        prompt_fn=wic_prompt,
        verbalizer=NO_YES,
        source=_super_glue("wic", train_rows=5428),
    ),
    CausalTask(
        name="MultiRC",
        input_fields=("paragraph", "question", "answer"),
        label_names=BINARY,
        prompt_fn=multirc_prompt,
        verbalizer=NO_YES,
        source=_super_glue("multirc", train_rows=27243),
    ),
    CausalTask(
        name="Copa",
        kind="multiple_choice",
        input_fields=("premise", "choice1", "choice2", "question"),
        label_names=BINARY,
        prompt_fn=copa_prompt,
        verbalize_fn=copa_verbalize,
        choices_fn=copa_choices,
        train_as_classification=False,
        num_dev=100,
        source=_super_glue("copa", train_rows=400),
    ),
    CausalTask(
        name="ReCoRD",
        kind="multiple_choice",
        input_fields=("passage", "query", "entities"),
        target_field="answers",
        prompt_fn=record_prompt,
        verbalize_fn=record_verbalize,
        choices_fn=record_choices,
        train_as_classification=False,
        source=_super_glue("record", train_rows=100730),
    ),
    CausalTask(
        name="SQuAD",
        kind="generation",
        input_fields=("title", "context", "question"),
        target_field="answers",
        prompt_fn=squad_prompt,
        verbalize_fn=squad_verbalize,
        train_as_classification=False,
        source=HubSource("rajpurkar/squad", train_rows=87599),
    ),
    CausalTask(
        name="DROP",
        kind="generation",
        input_fields=("passage", "question"),
        target_field="answers",
        prompt_fn=drop_prompt,
        verbalize_fn=drop_verbalize,
        train_as_classification=False,
        source=HubSource("ucinlp/drop", columns={"answers": "answers_spans"}, train_rows=77400),
    ),
)
