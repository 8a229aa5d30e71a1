"""Your own task as data: YAML -> a validated ``TaskSpec`` -> an ``MLMTask`` / ``CausalTask``.

```yaml
name: tweet-sentiment
family: mlm                   # mlm (masked-LM prompt, label words) | causal (prompt + candidates)
kind: classification          # classification | multiple_choice | generation
input_fields: [text]          # in prompt order
label_field: label            # the gold field (generation: answers; multiple_choice: answer, the choice)
labels: {negative: terrible, positive: great}   # value as the data spells it -> label word / candidate
template: "{text} It was {mask}."                # mlm; or LM-BFF's own language ("*cls**sent_0*...")
prompt: "{text}\\nSentiment:"                     # causal: the candidate / answer follows after a space
data: {source: local, train_file: train.csv, test_file: test.csv, columns: {text: tweet}}
```

An mlm template is turned into LM-BFF's language, so it is tokenized piece by piece as the paper's tasks
are: ``{field}`` becomes ``*sent_i*`` (``*+sent_i*`` after a space), the space before ``{mask}`` is left to
the label word (" great" is one token, "great" after "was " would not be), and the tokenizer's own
start and end tokens go around it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mezo_ray.tasks.base import HubSource, Kind, LocalSource, Metric, Task
from mezo_ray.tasks.causal import CausalTask
from mezo_ray.tasks.mlm import MLMTask

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_DATA_FILES = ("train_file", "test_file")


class TaskData(BaseModel):
    """Where a task's data is: its own files (``local``) or a hub data set (``hub``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["local", "hub"] = "local"
    train_file: str | None = None
    test_file: str | None = None
    path: str | None = Field(None, description="hub: the data set's repo id")
    name: str | None = Field(None, description="hub: its configuration")
    train_split: str = "train"
    test_split: str = "test"
    columns: dict[str, str] = Field(default_factory=dict, description="task field -> column")

    @model_validator(mode="after")
    def _complete(self) -> TaskData:
        if self.source == "local" and not (self.train_file and self.test_file):
            raise ValueError(
                f"data.source='local' needs train_file and test_file; got train_file={self.train_file!r}, "
                f"test_file={self.test_file!r}"
            )
        if self.source == "hub" and not self.path:
            raise ValueError("data.source='hub' needs path (the data set's repo id, e.g. 'stanfordnlp/imdb')")
        return self


class TaskSpec(BaseModel):
    """A task defined in YAML; ``build()`` makes the task object the rest of mezo_ray uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    family: Literal["mlm", "causal"]
    kind: Kind = "classification"
    input_fields: tuple[str, ...] = Field(min_length=1)
    label_field: str | None = Field(None, description="default: label (generation: answers)")
    labels: dict[str, str] | tuple[str, ...] | None = None
    template: str | None = None
    prompt: str | None = None
    metric: Metric | None = None
    max_length: int = Field(128, gt=0, description="mlm: the prompted input is cut here (tokens)")
    data: TaskData

    @model_validator(mode="before")
    @classmethod
    def _label_keys_as_text(cls, raw: Any) -> Any:
        """YAML reads ``0: terrible`` with an int key; data files spell labels as text."""
        if isinstance(raw, Mapping) and isinstance(raw.get("labels"), Mapping):
            raw = {**raw, "labels": {_text(k): _text(v) for k, v in raw["labels"].items()}}
        elif isinstance(raw, Mapping) and isinstance(raw.get("labels"), list):
            raw = {**raw, "labels": [_text(v) for v in raw["labels"]]}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        where = f"task {self.name!r}"
        if self.kind == "classification" and not self.labels:
            raise ValueError(
                f"{where}: a classification task needs labels (value: word, or a list of values)"
            )
        if self.kind != "classification" and self.labels:
            raise ValueError(f"{where}: labels are for classification; kind={self.kind!r} has none")
        if self.metric in ("f1", "exact_match") and self.kind != "generation":
            raise ValueError(f"{where}: metric={self.metric!r} scores generated answers; use accuracy")
        if self.family == "mlm":
            if self.kind != "classification":
                raise ValueError(
                    f"{where}: family 'mlm' reads a label word at the mask: kind must be classification"
                )
            if self.prompt is not None:
                raise ValueError(f"{where}: 'prompt' is the causal family's; an mlm task has a 'template'")
            if self.template is not None:
                mlm_template(self.template, self.input_fields, where)  # raises naming the problem
        else:
            if self.template is not None:
                raise ValueError(f"{where}: 'template' is the mlm family's; a causal task has a 'prompt'")
            if self.prompt is None:
                raise ValueError(
                    f"{where}: a causal task needs a prompt, e.g. '{{{self.input_fields[0]}}}\\nAnswer:'"
                )
            if isinstance(self.labels, tuple):
                raise ValueError(
                    f"{where}: a causal task scores its labels' candidates: give labels as value: word"
                )
            unknown = sorted({f for f in _fields_of(self.prompt) if f not in self.input_fields})
            if unknown:
                raise ValueError(
                    f"{where}: prompt uses {unknown}, not among input_fields {list(self.input_fields)}"
                )
            if self.kind == "multiple_choice" and "choices" not in self.input_fields:
                raise ValueError(
                    f"{where}: a multiple_choice task reads its candidates from an input field 'choices'"
                )
        return self

    @property
    def target_field(self) -> str:
        defaults = {"classification": "label", "multiple_choice": "answer", "generation": "answers"}
        return self.label_field or defaults[self.kind]

    def build(self) -> Task:
        """The task object (built anew: tasks are small frozen dataclasses)."""
        label_names = tuple(self.labels) if self.labels else ()
        words = tuple(self.labels.values()) if isinstance(self.labels, dict) else ()
        common = {
            "name": self.name,
            "kind": self.kind,
            "input_fields": self.input_fields,
            "label_names": label_names,
            "target_field": self.target_field,
            "metric": self.metric,
            "source": self._source(),
        }
        if self.family == "mlm":
            template = mlm_template(self.template, self.input_fields, self.name) if self.template else ""
            return MLMTask(**common, template=template, label_words=words, max_length=self.max_length)
        prompt_fn = functools.partial(_render, self.prompt)
        verbalize_fn = functools.partial(_answer_line, self.prompt) if self.kind == "generation" else None
        choices_fn = _choices if self.kind == "multiple_choice" else None
        return CausalTask(
            **common,
            prompt_fn=prompt_fn,
            verbalize_fn=verbalize_fn,
            answer_sep=" ",
            verbalizer=words,
            choices_fn=choices_fn,
            train_as_classification=self.kind == "classification",
        )

    def _source(self) -> HubSource | LocalSource:
        data = self.data
        if data.source == "hub":
            return HubSource(data.path, data.name, data.train_split, data.test_split, columns=data.columns)
        return LocalSource(data.train_file, data.test_file, data.columns)


def mlm_template(template: str, input_fields: tuple[str, ...], where: str) -> str:
    """``"{text} It was {mask}."`` -> LM-BFF's ``"*cls**sent_0*_It_was*mask*.*sep+*"`` (see the module
    docstring); a template in LM-BFF's language (no braces) is returned as it is."""
    if "{" not in template:
        if "*mask*" not in template:
            raise ValueError(f"{where}: template {template!r} has no *mask*")
        return template
    if template.count("{mask}") != 1:
        raise ValueError(
            f"{where}: template {template!r} needs exactly one {{mask}} (the label word's place)"
        )
    parts, position = ["cls"], 0
    for match in _PLACEHOLDER.finditer(template):
        literal, name = template[position : match.start()], match[1]
        position = match.end()
        space = literal.endswith(" ")
        parts += _literal_parts(literal.rstrip(" ") if space else literal, template, where)
        if name == "mask":
            parts.append("mask")  # the label word carries the space (" great")
            continue
        if name not in input_fields:
            raise ValueError(
                f"{where}: template field {{{name}}} is not among input_fields {list(input_fields)} "
                "(or {mask})"
            )
        parts.append(("+" if space else "") + f"sent_{input_fields.index(name)}")
    parts += [*_literal_parts(template[position:], template, where), "sep+"]
    return "*" + "*".join(parts) + "*"


def _literal_parts(text: str, template: str, where: str) -> list[str]:
    if not text:
        return []
    if "*" in text or "_" in text:
        raise ValueError(
            f"{where}: template {template!r}: text {text!r} holds '*' or '_', which LM-BFF's template "
            f"language reads as part separators and spaces; write the template in that language instead"
        )
    return [text.replace(" ", "_")]


def load_task_file(path: str) -> dict[str, Any]:
    """A task YAML file as a mapping, its data files made absolute relative to the file."""
    if not os.path.isfile(path):
        raise ValueError(f"task file {path!r} does not exist")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ValueError(f"task file {path}: malformed YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"task file {path}: expected a mapping with name, family, input_fields, ...")
    return with_data_paths_from(raw, os.path.dirname(os.path.abspath(path)))


def with_data_paths_from(raw: Mapping[str, Any], folder: str) -> dict[str, Any]:
    """A task mapping whose relative data files are made absolute under ``folder``."""
    data = raw.get("data")
    if not isinstance(data, Mapping):
        return dict(raw)
    files = {
        key: os.path.join(folder, os.path.expanduser(data[key]))
        for key in _DATA_FILES
        if isinstance(data.get(key), str)
    }
    return {**raw, "data": {**data, **files}}


def parse_task_spec(raw: Any, where: str = "task") -> TaskSpec:
    """Validate a task mapping; errors name the key, the bad value and what is allowed."""
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                model = TaskData if key.startswith("data.") else TaskSpec
                problems.append(f"unknown key {key!r}; known keys: {sorted(model.model_fields)}")
            elif not key:
                problems.append(str(e["msg"]).removeprefix("Value error, "))
            else:
                problems.append(f"{key}={e.get('input')!r}: {e['msg']}")
        raise ValueError(f"{where}: {'; '.join(problems)}") from None


def _text(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _fields_of(prompt: str) -> list[str]:
    return [m[1] for m in _PLACEHOLDER.finditer(prompt)]


def _render(prompt: str, fields: Mapping[str, Any]) -> str:
    return prompt.format_map({k: v for k, v in fields.items() if k != "choices"})


def _answer_line(prompt: str, fields: Mapping[str, Any], answer: str) -> str:
    """A generation example's training text: the prompt, a space, the answer and a newline (which ends
    generated answers)."""
    return f"{_render(prompt, fields)} {answer}\n"


def _choices(fields: Mapping[str, Any]) -> list[str]:
    import json

    value = fields["choices"]
    return list(json.loads(value) if isinstance(value, str) else value)
