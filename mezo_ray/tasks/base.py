"""What every task shares: the `Example` record, where its data comes from, label parsing and scoring.

A task is data, not code: a frozen dataclass naming its fields, labels, prompt and data source. The two
families add their prompt machinery in `mlm.py` (RoBERTa, LM-BFF templates) and `causal.py` (OPT prompts).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mezo_ray.tasks.metrics import max_exact_match, max_token_f1, mean

Family = Literal["mlm", "causal"]
Kind = Literal["classification", "multiple_choice", "generation"]
Metric = Literal["accuracy", "f1", "exact_match"]
#: Where a generated answer ends: at its first newline, or (the paper's code) where generation stopped.
AnswerEnd = Literal["newline", "stop_token"]


@dataclass(frozen=True)
class Example:
    """One task input: its raw text `fields`, the gold class / candidate index, and gold strings.

    `label` is None for generation tasks; `answers` is empty for classification and holds the gold strings
    for generation (SQuAD, DROP) and ReCoRD (any of them counts as correct).
    """

    fields: Mapping[str, Any]
    label: int | None = None
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubSource:
    """Where `datasets.load_dataset(path, name)` finds a task, and how its columns map onto task fields."""

    path: str
    name: str | None = None
    train_split: str = "train"
    test_split: str = "validation"
    # task field (or target key) -> hub column, where they differ
    columns: Mapping[str, str] = field(default_factory=dict)
    # hub class id -> the task's label name; None when the hub ids already are the task's label indices
    label_names: tuple[str, ...] | None = None
    # rows of the train split as published: a dry run derives epoch lengths from it without loading data
    train_rows: int | None = None


@dataclass(frozen=True)
class LocalSource:
    """A task's own files (CSV, TSV, JSONL or parquet): `columns` maps task fields to file columns."""

    train_file: str
    test_file: str
    columns: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticSource:
    """A generated data set: `make(num, seed)` returns `num` examples; `seed` fixes the data set itself."""

    make: Callable[[int, int], list[Example]]
    num_train: int = 4000
    num_test: int = 1000
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class Task:
    """A prompted task: fields, gold target, data source and metric. Subclasses add the prompt."""

    family: ClassVar[Family]

    name: str
    kind: Kind = "classification"
    input_fields: tuple[str, ...]
    source: HubSource | LocalSource | SyntheticSource
    # Classification: the label values as data files spell them, in logit / candidate order.
    label_names: tuple[str, ...] = ()
    # Record key holding the gold: "label", "answer" (BoolQ's bool) or "answers" (strings).
    target_field: str = "label"
    # None: token F1 for generation tasks, accuracy otherwise.
    metric: Metric | None = None

    @property
    def metric_name(self) -> Metric:
        """What `score` computes: accuracy, "f1" (SQuAD-normalised token F1, max over the gold answers;
        the default for generation) or "exact_match" (of the normalised answers)."""
        if self.metric is not None:
            return self.metric
        return "f1" if self.kind == "generation" else "accuracy"

    @property
    def record_fields(self) -> tuple[str, ...]:
        """Keys a raw record must have: the input fields and the gold target."""
        return (*self.input_fields, self.target_field)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Readable class names for messages (label words where the family has them)."""
        return self.label_names

    def parse_label(self, value: Any) -> int:
        """Label index of a raw label value (hub, LM-BFF or local file spelling)."""
        key = _label_key(value)
        if key not in self.label_names:
            raise ValueError(
                f"task {self.name}: label {value!r} is not one of the allowed values "
                f"{list(self.label_names)} (in logit order)"
            )
        return self.label_names.index(key)

    def example_from_record(self, record: Mapping[str, Any]) -> Example:
        """Build an `Example` from a record whose keys are this task's field names."""
        fields = {name: record[name] for name in self.input_fields}
        gold = record[self.target_field]
        if self.kind != "classification" and not self.label_names:  # gold strings (generation, ReCoRD)
            return Example(fields=fields, answers=as_answers(gold))
        return Example(fields=fields, label=self.parse_label(gold))

    def is_correct(self, prediction: int, example: Example) -> bool:
        """Whether a predicted class / candidate index is right."""
        return int(prediction) == example.label

    def score(self, predictions: Sequence[int | str], examples: Sequence[Example]) -> float:
        """Task metric in [0, 1]: accuracy for int predictions, max-over-golds token F1 for str ones."""
        if len(predictions) != len(examples):
            raise ValueError(
                f"task {self.name}: {len(predictions)} predictions for {len(examples)} examples; "
                f"they must pair up"
            )
        if self.metric_name in ("f1", "exact_match"):
            match = max_token_f1 if self.metric_name == "f1" else max_exact_match
            return mean([match(str(p), ex.answers) for p, ex in zip(predictions, examples, strict=True)])
        return mean([float(self.is_correct(p, ex)) for p, ex in zip(predictions, examples, strict=True)])


def _label_key(value: Any) -> str:
    """Spell a raw label the way `label_names` do: 1 / 1.0 / "1 " -> "1", True -> "True"."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return str(value).strip()


def as_answers(value: Any) -> tuple[str, ...]:
    """Gold answers as a tuple of strings, from a str, a list, or a hub dict with a "text" / "spans" list."""
    if isinstance(value, Mapping):
        for key in ("text", "spans"):
            if key in value:
                return as_answers(value[key])
        raise ValueError(f"answers dict {value!r} has neither a 'text' nor a 'spans' list")
    if isinstance(value, str):
        return (value,)
    answers = tuple(str(v) for v in value)
    if not answers:
        raise ValueError("an example needs at least one gold answer; got an empty list")
    return answers
