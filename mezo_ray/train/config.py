"""One trial's configuration: validated once at the edge (``TrialConfig.from_flat``) into typed
sections that flow down unchanged.

A trial is written flat (search spaces, ``--set``, Tune's config, ``params.json``; see
docs/CONTRACTS.md): every setting has one flat key, which is its field's alias in its section.
``from_flat`` / ``to_flat`` translate; values derived at validation (the family, an epoch schedule's
steps) are stored as fields.

The sections: ``task``, ``data``, ``model``, ``method`` (a discriminated union on ``method``; MeZO's
branch holds its estimator's own settings, a union on ``estimator`` from ``mezo_ray/estimators.py``),
``schedule``, ``checkpoint`` and ``resources``. A setting the trial's method or estimator does not
read is ignored (a zero-shot row in a grid that sets lr), except the switches of ``SWITCHES`` and
MeZO's own options under another estimator: set away from their defaults there, they are refused by
name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from mezo_ray.estimators import ENTRIES, ESTIMATOR_NAMES, EstimatorEntry, MezoSettings
from mezo_ray.tasks import DataSpec, MLMTask, Task, expected_train_size, get_task
from mezo_ray.tasks.base import AnswerEnd
from mezo_ray.tasks.custom import TaskSpec, load_task_file, parse_task_spec

Method = Literal["mezo", "ft", "zero_shot", "icl", "lp"]
METHODS: tuple[str, ...] = Method.__args__
TINY_MODELS = {"tiny-mlm": "mlm", "tiny-causal": "causal"}  # embedded offline models (mezo_ray.models.tiny)
_MLM_HINTS = ("roberta", "bert", "electra", "deberta")
_CAUSAL_HINTS = ("opt", "gpt", "llama", "mistral", "qwen", "pythia", "bloom", "phi", "gemma")

#: Fields holding paths: made absolute where the search starts (see ``absolute_path``).
PATH_FIELDS = ("data_dir", "train_file", "test_file", "model")
#: Options that change what a trial trains: the methods that read each, and the values that leave it
#: off. Set to another value on another method, one is refused by name (other settings a method does
#: not read, such as lr for zero-shot, are ignored).
SWITCHES: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {
    "estimator": (("mezo",), ("mezo",)),
    "perturbation_scale": (("mezo",), ("none",)),
    "layer_wise": (("mezo",), (False,)),
    "perturbation": (("mezo",), (None, "in_place")),
    "xgblora_steps_per_iteration": (("mezo",), (None,)),
    "lp_init": (("mezo", "ft"), (False,)),
}


def absolute_path(field: str, path: Any) -> Any:
    """Trials run in folders of their own: a relative path is made absolute where it is validated first,
    on the machine that starts the search (a model only when it is written as a path, ./ or ~/)."""
    if not isinstance(path, str) or "://" in path or (field == "model" and not path.startswith((".", "~"))):
        return path
    return os.path.abspath(os.path.expanduser(path))


def task_definition(raw: dict[str, Any]) -> dict[str, Any]:
    """``task`` given as a YAML file or a mapping -> its name in ``task`` and the validated definition in
    ``task_spec`` (so a bad task fails like any other bad field, and trials carry it to any machine)."""
    task = raw.get("task")
    if isinstance(task, str) and task.endswith((".yaml", ".yml")):
        task = load_task_file(os.path.abspath(os.path.expanduser(task)))
    if isinstance(task, Mapping):
        spec = parse_task_spec(task, where="task")
    elif isinstance(raw.get("task_spec"), Mapping):
        spec = parse_task_spec(raw["task_spec"], where="task_spec")
        if task not in (None, spec.name):
            raise ValueError(f"task={task!r} but task_spec defines {spec.name!r}; give one of them")
    else:
        return raw
    return {**raw, "task": spec.name, "task_spec": spec}


class Section(BaseModel):
    """A part of the trial config; a field's alias (or name) is its flat key."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    nested: ClassVar[tuple[str, ...]] = ()  # fields that hold settings of their own


def flat_fields(cls: type[BaseModel]) -> dict[str, FieldInfo]:
    """A section's (or an estimator's settings') fields by flat key."""
    nested = getattr(cls, "nested", ())
    return {f.alias or name: f for name, f in cls.model_fields.items() if name not in nested}


class TaskSection(Section):
    """What is learned, and how the model reads it."""

    name: str = Field(
        alias="task", description="a built-in task's name; a task file (.yaml) or mapping becomes task_spec"
    )
    spec: TaskSpec | None = Field(None, alias="task_spec", description="your own task (tasks/custom.py)")
    family: Literal["mlm", "causal"] = Field(description="derived from task and model if unset")
    prompt: bool = Field(True, description="false: no template, a classification head (Table 5; mlm tasks)")
    answer_end: AnswerEnd = Field(
        "newline",
        description="generated answers (SQuAD, DROP) end at their first newline; stop_token: the paper's "
        "code, generation stops at the newline or EOS token and the whole text is the answer",
    )

    @cached_property
    def resolved(self) -> Task:
        """The task object: your own (``spec``), or the built-in one of this family."""
        return self.spec.build() if self.spec is not None else get_task(self.name, self.family)


class DataSection(Section):
    """Where the data comes from and how it is sampled (the paper: k=16/512 per class and seeds
    13/21/42/87/100 for MLM; 1000/500/1000 from seed 0 causal)."""

    k: int | None = Field(None, gt=0)
    seed: int | None = Field(None, alias="data_seed")
    source: Literal["hub", "local", "lmbff", "lmbff-original", "synthetic"] | None = Field(
        None, alias="data_source"
    )
    data_dir: str | None = None
    train_file: str | None = None
    test_file: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    num_train: int = Field(1000, ge=0)
    num_dev: int | None = Field(None, ge=0)
    num_test: int = Field(1000, ge=0)
    fix_wsc: bool = False
    strict_k: bool = Field(
        True, description="refuse a k the data cannot give (the paper's TREC k=512 took fewer: false there)"
    )
    max_eval_examples: int | None = Field(None, gt=0, description="cap dev and test (speed)")

    @field_validator("data_dir", "train_file", "test_file")
    @classmethod
    def _absolute(cls, path: str | None, info: Any) -> str | None:
        return absolute_path(info.field_name, path)

    @cached_property
    def spec(self) -> DataSpec:
        """What the task layer loads by."""
        return DataSpec(**self.model_dump(exclude={"max_eval_examples"}))


class ModelSection(Section):
    """The checkpoint, its precision and what of it is trained."""

    name: str = Field(alias="model", description="hub name, local path, or tiny-mlm / tiny-causal (offline)")
    mode: Literal["full", "lora", "prefix", "head", "lora_as_published"] = Field(
        "full",
        description="head: the LM head alone; lora_as_published: what the paper's RoBERTa code trained with "
        "--apply_lora (MeZO: the LM head alone, FT: LoRA and the LM head; see models/modes.py)",
    )
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = Field(
        "float32", description="float64: for checks whose paths round differently (it is not fast)"
    )
    arithmetic: Literal["float32", "model"] = Field(
        "float32",
        description="MeZO in float16 / bfloat16: float32 computes losses from float32 logits and keeps LoRA "
        "and prefix parameters in float32; model keeps both in dtype, and rounds each loss to it, as the "
        "paper's float16 OPT runs (the first-order baseline is mixed precision either way)",
    )
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    num_prefix: int = Field(5, gt=0)
    trust_remote_code: bool = False

    @field_validator("name")
    @classmethod
    def _absolute(cls, path: str) -> str:
        return absolute_path("model", path)


class _Trained(Section):
    """What the two training methods share."""

    lr: float = Field(1e-6, gt=0)
    lr_schedule: Literal["constant", "linear"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    lp_init: bool = Field(
        False,
        description="LP-MeZO (paper Table 19): the label words' decoder rows start from a linear probe on "
        "the train split (the paper's --lp_early_stopping: max_iter 1000, tol 0.01); mlm prompt tasks",
    )


_EstimatorChoice = Annotated[
    Union[tuple(entry.settings for entry in ENTRIES.values())],  # noqa: UP007 (a tuple of classes)
    Field(discriminator="name"),
]


class MezoMethod(_Trained):
    """MeZO: zeroth-order steps by the chosen estimator."""

    nested: ClassVar[tuple[str, ...]] = ("estimator",)

    name: Literal["mezo"] = Field("mezo", alias="method")
    eps: float = Field(1e-3, gt=0)
    estimator: _EstimatorChoice = Field(default_factory=MezoSettings, description="mezo_ray/estimators.py")
    objective: Literal["loss", "metric"] = Field("loss", description="metric: minimise -accuracy / -F1")
    stochastic_rounding: bool | None = Field(
        None,
        description="bfloat16 / float16 weights: round the updates stochastically (unset: on), so updates "
        "below half an ulp survive on average; false: round to nearest, the paper's fp16 runs",
    )
    perturbation: Literal["in_place", "forward"] | None = Field(
        None,
        description="where theta + eps z is made: in_place (the paper's sweeps; the weights come back to "
        "theta to rounding) or forward (inside each module's forward, the weights untouched until the "
        "update: restores exact in every dtype, a replay one sweep a step; costs a copy of one module's "
        "weights while it runs). Unset: forward for MeZO's own estimate on trained bfloat16 / float16 "
        "weights (where the sweeps walk them by ulps every step), in_place otherwise; a resumed trial keeps "
        "where it perturbed",
    )
    xgblora_steps_per_iteration: int | None = Field(
        None,
        gt=0,
        description="XGBLoRA: every N steps the LoRA update is merged into the base weights and a fresh "
        "adapter starts (mode lora; the final weights are tested, and a resume replays the seed log from "
        "the base model, merges included)",
    )

    @property
    def entry(self) -> EstimatorEntry:
        return ENTRIES[self.estimator.name]


class FtMethod(_Trained):
    """The first-order baseline: AdamW and backprop, dropout on, mixed precision under ``dtype``."""

    name: Literal["ft"] = Field("ft", alias="method")
    max_grad_norm: float | None = Field(1.0, gt=0)


class ZeroShotMethod(Section):
    name: Literal["zero_shot"] = Field("zero_shot", alias="method")


class IclMethod(Section):
    name: Literal["icl"] = Field("icl", alias="method")
    icl_demos: int = Field(32, ge=0)


class LpMethod(Section):
    name: Literal["lp"] = Field("lp", alias="method")


_METHODS: dict[str, type[Section]] = {
    "mezo": MezoMethod,
    "ft": FtMethod,
    "zero_shot": ZeroShotMethod,
    "icl": IclMethod,
    "lp": LpMethod,
}
MethodChoice = Annotated[
    MezoMethod | FtMethod | ZeroShotMethod | IclMethod | LpMethod, Field(discriminator="name")
]


class Schedule(Section):
    """How long a trial trains, in which batches, and how it is evaluated and selected."""

    batch_size: int = Field(64, gt=0)
    micro_batch_size: int | None = Field(None, gt=0, description="split each +-eps forward (memory)")
    eval_batch_size: int = Field(32, gt=0)
    max_steps: int = Field(1000, ge=0)
    max_forward_passes: int | None = Field(
        None, gt=0, description="stop on a forward-pass budget (a step is not split: the last may cross it)"
    )
    eval_steps: int = Field(100, gt=0)
    epochs: int | None = Field(
        None,
        gt=0,
        description="train this many passes over the sampled train split, evaluating once an epoch (the "
        "paper's OPT FT: 5): max_steps and eval_steps are derived from the split's size, at validation "
        "where it is known without data (the causal paper tasks), else when the trial loads its data",
    )
    seed: int | None = Field(None, description="training seed; None = the data seed, as the paper")
    selection: Literal["dev_acc", "dev_loss", "final"] = Field(
        "dev_acc", description="which weights are tested: the best dev_acc or dev_loss, or the final ones"
    )
    nonfinite_patience: int = Field(5, gt=0, description="fail after this many non-finite losses in a row")

    def for_train_size(self, num_train: int) -> Schedule:
        """An epoch schedule in steps, as HF Trainer counts them (the paper's FT): ceil(n / batch) steps
        an epoch (the last batch short), an evaluation at the end of each; unchanged given steps."""
        if not self.epochs:
            return self
        per_epoch = math.ceil(num_train / self.batch_size)
        return self.model_copy(update={"max_steps": self.epochs * per_epoch, "eval_steps": per_epoch})


class Checkpointing(Section):
    checkpoint_mode: Literal["weights", "seed_log"] = Field(
        "seed_log",
        description="weights: trainable weights (and optimizer state) at every eval; seed_log (MeZO): the "
        "seed log since the last weight snapshot, replayed on resume (kB per checkpoint, 3 sweeps per "
        "replayed step); first-order trials always save weights",
    )
    snapshot_every: int | None = Field(
        5, gt=0, description="seed_log: every n-th checkpoint holds the weights; None: replay from the base"
    )


class Resources(Section):
    """What each trial takes of the cluster (per trial)."""

    num_workers: int = Field(1, ge=0, description="Ray Train workers; 0 runs in the Tune trial process")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    fsdp: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="where Ray puts the trial's Train workers; STRICT_SPREAD: each on its own node"
    )
    max_worker_failures: int = Field(2, ge=0, description="Train restarts workers from the last checkpoint")
    memory_log_every_s: float | None = Field(
        None,
        gt=0,
        description="sample memory every this many seconds into memory-rank<r>.csv beside the results",
    )

    def total(self) -> dict[str, float]:
        """Resources the trial's Train workers take, in total."""
        workers = max(self.num_workers, 1)
        return {"CPU": workers * self.cpus_per_worker, "GPU": workers * self.gpus_per_worker}


class TrialConfig(Section):
    """Everything one trial needs, in sections; every setting has the paper's default where the paper
    has one. Build it with ``from_flat`` (``parse_trial_config``), which also checks the sections
    against each other."""

    task: TaskSection
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection
    method: MethodChoice = Field(default_factory=MezoMethod)
    schedule: Schedule = Field(default_factory=Schedule)
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    resources: Resources = Field(default_factory=Resources)

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> TrialConfig:
        """Validate a flat trial (a grid point, ``params.json``) into sections, derive the family and an
        epoch schedule's steps, and check the sections against each other."""
        raw = task_definition(dict(flat))
        unknown = sorted(set(raw) - set(FLAT_FIELDS))
        if unknown:
            raise ValueError(
                "; ".join(f"unknown key {key!r} (value {raw[key]!r})" for key in unknown)
                + f"; known keys: {', '.join(sorted(FLAT_FIELDS))}"
            )
        method = _choice(raw, "method", METHODS)
        estimator = _choice(raw, "estimator", ESTIMATOR_NAMES)
        _refuse_unread(raw, method, estimator)
        if raw.get("family") is None and "task" in raw and "model" in raw:
            raw["family"] = _family_of(str(raw["task"]), raw.get("task_spec"), str(raw["model"]))
        sections: dict[str, Any] = {}
        for name, section in _SECTIONS.items():
            if name == "method":
                section = _METHODS[method]
            sections[name] = {key: raw[key] for key in flat_fields(section) if key in raw}
        sections["method"]["method"] = method  # the unions' tags, also where the defaults name them
        if method == "mezo":
            own = flat_fields(ENTRIES[estimator].settings)
            sections["method"]["estimator"] = {**{k: raw[k] for k in own if k in raw}, "estimator": estimator}
        cfg = cls.model_validate(sections)
        if cfg.schedule.epochs and (n := expected_train_size(cfg.task.resolved, cfg.data.spec)):
            cfg = cfg.model_copy(update={"schedule": cfg.schedule.for_train_size(n)})
        _check_consistent(cfg)
        return cfg

    def to_flat(self) -> dict[str, Any]:
        """The flat form (``params.json``, Tune's config): every known key, those the trial's method or
        estimator does not read at their defaults; ``from_flat`` reads it back to this config."""
        flat = {key: _default(f) for key, f in FLAT_FIELDS.items()}
        for name in _SECTIONS:
            section = getattr(self, name)
            flat.update(section.model_dump(mode="json", by_alias=True, exclude={"estimator"}))
        if isinstance(self.method, MezoMethod):
            flat.update(self.method.estimator.model_dump(mode="json", by_alias=True))
        return flat

    # ------------------------------------------------------------------------------------------------
    @property
    def training_seed(self) -> int:
        seed = self.schedule.seed if self.schedule.seed is not None else self.data.seed
        return seed if seed is not None else 0

    def placement(self, low_precision: bool, saved: str | None = None) -> str:
        """Where MeZO perturbs: ``perturbation`` where set; else where a resumed run perturbed
        (``saved``, from its checkpoint); else in the forward for MeZO's own estimate when some trained
        weights are bfloat16 / float16 (``low_precision``: in-place sweeps walk them by ulps every step;
        LoRA and prefix parameters stay float32 unless ``arithmetic: model``), in place otherwise."""
        method = self.method
        if not isinstance(method, MezoMethod):
            return "in_place"
        if method.perturbation is not None:
            return method.perturbation
        if saved is not None:
            return saved
        forward_ok = method.entry.in_forward and getattr(method.estimator, "scale", None) != "grad_norm"
        return "forward" if forward_ok and low_precision else "in_place"

    def forward_passes(self) -> int:
        """Training forward passes this trial will run (for dry runs and budgets)."""
        if isinstance(self.method, MezoMethod):
            passes = self.method.estimator.forward_passes(self.schedule.max_steps)
            budget = self.schedule.max_forward_passes
            return min(passes, budget) if budget else passes
        return self.schedule.max_steps if isinstance(self.method, FtMethod) else 0


_SECTIONS: dict[str, type[Section]] = {
    "task": TaskSection,
    "data": DataSection,
    "model": ModelSection,
    "method": MezoMethod,
    "schedule": Schedule,
    "checkpoint": Checkpointing,
    "resources": Resources,
}


def _flat_fields() -> dict[str, FieldInfo]:
    out: dict[str, FieldInfo] = {}
    estimators = [entry.settings for entry in ENTRIES.values()]  # what is trained, then how
    classes = [TaskSection, DataSection, ModelSection, *estimators, *_METHODS.values()]
    classes += [Schedule, Checkpointing, Resources]
    for cls in classes:
        for key, field in flat_fields(cls).items():
            out.setdefault(key, field)
    return out


#: Every flat key a trial may set, with its field (type, default, bounds, description).
FLAT_FIELDS: dict[str, FieldInfo] = _flat_fields()


def _default(field: FieldInfo) -> Any:
    value = None if field.is_required() else field.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def flat_default(key: str) -> Any:
    """A flat key's value in a trial that does not set it (None: required or derived)."""
    return _default(FLAT_FIELDS[key])


def _choice(raw: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = raw.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(f"{key}={value!r}: allowed: {', '.join(allowed)}")
    return value


def _refuse_unread(raw: dict[str, Any], method: str, estimator: str) -> None:
    """A switch set on a method that does not read it, or one of MeZO's own options set for another
    estimator, is refused by name (a grid would otherwise run something else than it says)."""
    bad = [
        f"{key}={raw[key]!r} (read by method {' / '.join(methods)})"
        for key, (methods, off) in SWITCHES.items()
        if method not in methods and raw.get(key, off[0]) not in off
    ]
    if bad:
        raise ValueError(f"method={method!r} does not read {', '.join(bad)}; leave them unset")
    if method == "mezo" and estimator != "mezo":
        own = [
            f"{key}={raw[key]!r}"
            for key in flat_fields(MezoSettings)
            if key != "estimator" and raw.get(key, flat_default(key)) != flat_default(key)
        ]
        if own:
            theirs = ", ".join(ENTRIES[estimator].flat_keys) or "none"
            raise ValueError(
                f"{', '.join(own)}: MeZO's own options; estimator={estimator!r} brings its own probes and "
                f"update rule (its settings: {theirs}; mezo_ray/estimators.py)"
            )


def _family_of(name: str, spec: Any, model: str) -> str:
    """The family of a trial that does not set it: its own task's, or the built-in task's that the
    model's name points at (same-named tasks such as RTE exist in both families)."""
    if isinstance(spec, TaskSpec):
        return spec.build().family
    try:
        return get_task(name, None).family
    except ValueError:
        family = model_family_hint(model)
        if family is None:
            raise
        return get_task(name, family).family


def _check_consistent(cfg: TrialConfig) -> None:
    """The checks that read several sections; each error names the settings and what is allowed."""
    task, method, schedule, res = cfg.task.resolved, cfg.method, cfg.schedule, cfg.resources
    name, prompt, fsdp, mode = method.name, cfg.task.prompt, res.fsdp, cfg.model.mode
    trained = isinstance(method, MezoMethod | FtMethod)
    if trained and schedule.max_steps == 0:
        raise ValueError(f"max_steps=0 with method={name!r} trains nothing; use method='zero_shot'")
    if res.num_workers > 1 and 0 < res.gpus_per_worker < 1:
        raise ValueError(
            f"gpus_per_worker={res.gpus_per_worker:g} with num_workers={res.num_workers}: NCCL needs a "
            f"whole GPU per worker; use gpus_per_worker=1 or fewer workers"
        )
    if trained and schedule.eval_steps > schedule.max_steps:
        raise ValueError(
            f"eval_steps={schedule.eval_steps} is larger than max_steps={schedule.max_steps}; the trial "
            f"would never evaluate. Set eval_steps <= max_steps"
        )
    if name == "lp" and task.kind != "classification":
        raise ValueError(
            f"method='lp' (linear probing) needs a classification task; task {task.name!r} is "
            f"{task.kind} (the paper head-tuned those, which mezo_ray does not implement)"
        )
    if not prompt and (task.family != "mlm" or name in ("lp", "icl") or fsdp):
        raise ValueError(
            f"prompt=false (a sequence classification head, the paper's no-prompt ablation) needs an "
            f"mlm-family task, method mezo / ft / zero_shot and no fsdp; got task {task.name!r} "
            f"({task.family}), method={name!r}, fsdp={fsdp}"
        )
    if prompt and isinstance(task, MLMTask) and not (task.template and task.label_words):
        raise ValueError(
            f"task {task.name!r} has no template or no label words (labels given as a list): a prompt "
            "reads a label word at the mask. Give template and labels as value: word, or use prompt=false"
        )
    if name == "icl" and task.family != "causal":
        raise ValueError(f"method='icl' is a causal-family baseline; task {task.name!r} is {task.family}")
    if fsdp and res.num_workers < 1:
        raise ValueError("fsdp=true needs num_workers >= 1 (FSDP shards across Ray Train workers)")
    if mode == "lora_as_published" and (task.family != "mlm" or not prompt or not trained):
        raise ValueError(
            f"mode='lora_as_published' reproduces the paper's RoBERTa LoRA rows: it needs an mlm-family "
            f"task with its prompt and method mezo or ft; got task {task.name!r} ({task.family}), "
            f"prompt={prompt}, method={name!r}. Use mode='lora' for LoRA itself"
        )
    if cfg.data.k is not None and task.family != "mlm":
        raise ValueError(f"k={cfg.data.k} applies to the mlm family (k-shot); task {task.name!r} is causal")
    if schedule.micro_batch_size and schedule.micro_batch_size > schedule.batch_size:
        raise ValueError(f"micro_batch_size={schedule.micro_batch_size} > batch_size={schedule.batch_size}")
    if trained and method.lp_init and (not isinstance(task, MLMTask) or not prompt or fsdp):
        raise ValueError(
            f"lp_init=true (LP-MeZO) writes a linear probe into the label words' decoder rows: it needs "
            f"an mlm-family prompt task and no fsdp; got task {task.name!r} ({task.family}), "
            f"prompt={prompt}, fsdp={fsdp}"
        )
    if isinstance(method, MezoMethod):
        _check_mezo(cfg, method)


def _check_mezo(cfg: TrialConfig, method: MezoMethod) -> None:
    est = method.estimator
    if method.xgblora_steps_per_iteration is not None and (
        cfg.model.mode != "lora"
        or cfg.schedule.selection != "final"
        or cfg.checkpoint.checkpoint_mode != "seed_log"
        or cfg.checkpoint.snapshot_every is not None
        or cfg.resources.fsdp
    ):
        raise ValueError(
            "xgblora_steps_per_iteration merges LoRA into frozen base weights, which neither a best-dev "
            "copy nor a weight snapshot holds: it needs mode='lora', selection='final', "
            "checkpoint_mode='seed_log', snapshot_every=null and no fsdp; got "
            f"mode={cfg.model.mode!r}, selection={cfg.schedule.selection!r}, "
            f"checkpoint_mode={cfg.checkpoint.checkpoint_mode!r}, "
            f"snapshot_every={cfg.checkpoint.snapshot_every}, fsdp={cfg.resources.fsdp}"
        )
    if isinstance(est, MezoSettings) and est.layer_wise and est.variant == "adam":
        raise ValueError("layer_wise=true is for the stateless and momentum rules; got zo_variant='adam'")
    if method.perturbation == "forward" and (
        not method.entry.in_forward or getattr(est, "scale", None) == "grad_norm"
    ):
        raise ValueError(
            f"perturbation='forward' is built for estimators that perturb inside the forward "
            f"({', '.join(n for n, e in ENTRIES.items() if e.in_forward)}; mezo_ray/estimators.py) and "
            f"not with perturbation_scale grad_norm; got estimator={est.name!r}"
            + (f", perturbation_scale={est.scale!r}" if isinstance(est, MezoSettings) else "")
        )
    entry = method.entry
    if method.weight_decay and not entry.weight_decay:
        raise ValueError(
            f"weight_decay={method.weight_decay:g}: estimator={est.name!r} has no weight decay in its update "
            f"(mezo_ray/estimators.py); leave weight_decay 0"
        )
    if entry.batched and method.objective == "metric":
        raise ValueError(
            f"objective='metric': estimator={est.name!r} scores its probes in one batched forward, from "
            "each member's loss; use objective='loss'"
        )
    if cfg.resources.fsdp and not entry.shards:
        raise ValueError(
            f"fsdp=true: estimator={est.name!r} needs whole (unsharded) weights (mezo_ray/estimators.py); "
            "use data parallel workers (fsdp=false)"
        )
    if method.stochastic_rounding and cfg.model.dtype in ("float32", "float64"):
        raise ValueError(
            f"stochastic_rounding=true rounds bfloat16 / float16 weights; dtype={cfg.model.dtype!r} keeps "
            "updates exact to its precision (set dtype, or leave stochastic_rounding unset)"
        )


def model_family_hint(model: str) -> str | None:
    """mlm / causal guessed from a model name (tiny-mlm, roberta-large, facebook/opt-13b), else None."""
    if model in TINY_MODELS:
        return TINY_MODELS[model]
    lowered = model.lower().rsplit("/", 1)[-1]
    if any(h in lowered for h in _MLM_HINTS):
        return "mlm"
    if any(h in lowered for h in _CAUSAL_HINTS):
        return "causal"
    return None


def parse_trial_config(raw: Mapping[str, Any], where: str = "trial config") -> TrialConfig:
    """Validate a flat dict into a TrialConfig; errors name the field, the bad value and what is allowed."""
    try:
        return TrialConfig.from_flat(raw)
    except ValidationError as err:
        raise ValueError(f"{where}: {format_validation_error(err)}") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        in_trial = bool(loc) and loc[0] in _SECTIONS  # a trial's sections: the flat key is the last name
        field = (loc[-1] if in_trial else ".".join(loc)) or "config"
        value = e.get("input")
        if e["type"] == "extra_forbid" or e["type"] == "extra_forbidden":
            lines.append(f"unknown key {field!r} (value {value!r})")
        elif e["type"] == "missing":
            lines.append(f"{field}: required (no default)")
        elif field == "config":
            lines.append(str(e["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"{field}={value!r}: {e['msg']}")
    return "; ".join(lines)
