"""One trial's configuration, validated once at the edge into a typed object that flows down unchanged.

Tune's ``params.json`` holds exactly these fields, flat (see docs/CONTRACTS.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mezo_ray.estimators import ESTIMATOR_NAMES, ESTIMATORS, MEZO_ONLY
from mezo_ray.tasks import DataSpec, MLMTask, Task, expected_train_size, get_task
from mezo_ray.tasks.base import AnswerEnd
from mezo_ray.tasks.custom import TaskSpec, load_task_file, parse_task_spec

Method = Literal["mezo", "ft", "zero_shot", "icl", "lp"]
TRAINING_METHODS = ("mezo", "ft")
TINY_MODELS = {"tiny-mlm": "mlm", "tiny-causal": "causal"}  # embedded offline models (mezo_ray.models.tiny)
_MLM_HINTS = ("roberta", "bert", "electra", "deberta")
_CAUSAL_HINTS = ("opt", "gpt", "llama", "mistral", "qwen", "pythia", "bloom", "phi", "gemma")


#: Fields holding paths: made absolute where the search starts (see ``absolute_path``).
PATH_FIELDS = ("data_dir", "train_file", "test_file", "model")


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


class TrialConfig(BaseModel):
    """Everything one trial needs; every field has the paper's default where the paper has one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # What to train
    task: str = Field(description="a built-in task's name; a task file (.yaml) or mapping becomes task_spec")
    task_spec: TaskSpec | None = Field(None, description="your own task (tasks/custom.py); task is its name")
    model: str = Field(description="hub name, local path, or tiny-mlm / tiny-causal (offline)")
    family: Literal["mlm", "causal"] | None = Field(None, description="derived from task and model if unset")
    method: Method = "mezo"
    zo_variant: Literal["sgd", "momentum", "adam", "sign"] = "sgd"
    estimator: Literal[ESTIMATOR_NAMES] = Field(  # type: ignore[valid-type]
        "mezo",
        description="method mezo's gradient estimator: mezo (two-point, Gaussian z); fzoo (N one-sided "
        "Rademacher probes sharing one unperturbed loss, the step normalised by their spread; "
        "arXiv 2506.09034); hizoo (z scaled by a diagonal Hessian estimate, 3 forwards; arXiv 2402.15173); "
        "lozo (matrices perturbed along rank-r directions U V^T; arXiv 2410.07698)",
    )
    n_probes: int = Field(8, ge=2, description="fzoo: N probes per step (N + 1 forward passes)")
    hessian_smooth: float = Field(1e-8, ge=0, le=1, description="hizoo: the Hessian estimate's smoothing")
    lozo_rank: int = Field(4, ge=1, description="lozo: r, the perturbation's rank per matrix")
    lozo_interval: int = Field(100, ge=1, description="lozo: nu, the steps each V is kept")
    lozo_momentum: float = Field(
        0.0, ge=0, lt=1, description="lozo: 0 is LOZO; beta > 0 is LOZO-M (momentum in the rank-r factors)"
    )
    mode: Literal["full", "lora", "prefix", "head", "lora_as_published"] = Field(
        "full",
        description="head: the LM head alone; lora_as_published: what the paper's RoBERTa code trained with "
        "--apply_lora (MeZO: the LM head alone, FT: LoRA and the LM head; see models/modes.py)",
    )
    prompt: bool = Field(True, description="false: no template, a classification head (Table 5; mlm tasks)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    arithmetic: Literal["float32", "model"] = Field(
        "float32",
        description="MeZO in float16 / bfloat16: float32 computes losses from float32 logits and keeps LoRA "
        "and prefix parameters in float32; model keeps both in dtype, and rounds each loss to it, as the "
        "paper's float16 OPT runs (the first-order baseline is mixed precision either way)",
    )
    stochastic_rounding: bool | None = Field(
        None,
        description="MeZO in bfloat16 / float16: round the weight updates stochastically (unset: on), so "
        "updates below half an ulp survive on average; false: round to nearest, the paper's fp16 runs",
    )
    perturbation: Literal["in_place", "forward"] | None = Field(
        None,
        description="method mezo: where theta + eps z is made: in_place (the paper's sweeps; the weights "
        "come back to theta to rounding) or forward (inside each module's forward, the weights untouched "
        "until the update: restores exact in every dtype, a replay one sweep a step; costs a copy of one "
        "module's weights while it runs). Unset: forward for MeZO's own estimate on trained bfloat16 / "
        "float16 weights (where the sweeps walk them by ulps every step), in_place otherwise; a resumed "
        "trial keeps where it perturbed",
    )
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    num_prefix: int = Field(5, gt=0)
    trust_remote_code: bool = False

    # Data (paper: k=16/512 per class and seeds 13/21/42/87/100 for MLM; 1000/500/1000 from seed 0 causal)
    k: int | None = Field(None, gt=0)
    data_seed: int | None = None
    data_source: Literal["hub", "local", "lmbff", "lmbff-original", "synthetic"] | None = None
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

    # Optimisation
    lr: float = Field(1e-6, gt=0)
    eps: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
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
    lr_schedule: Literal["constant", "linear"] = "constant"
    n_perturbations: int = Field(1, gt=0)
    perturbation_schedule: Literal["constant", "linear"] = "constant"
    objective: Literal["loss", "metric"] = Field("loss", description="metric: minimise -accuracy / -F1")
    selection: Literal["dev_acc", "dev_loss", "final"] = Field(
        "dev_acc", description="which weights are tested: the best dev_acc or dev_loss, or the final ones"
    )
    seed: int | None = Field(None, description="training seed; None = the data seed, as the paper")
    max_grad_norm: float | None = Field(1.0, gt=0, description="first-order baseline only")
    nonfinite_patience: int = Field(5, gt=0, description="fail after this many non-finite losses in a row")
    checkpoint_mode: Literal["weights", "seed_log"] = Field(
        "seed_log",
        description="weights: trainable weights (and optimizer state) at every eval; seed_log (MeZO): the "
        "seed log since the last weight snapshot, replayed on resume (kB per checkpoint, 3 sweeps per "
        "replayed step); first-order trials always save weights",
    )
    snapshot_every: int | None = Field(
        5, gt=0, description="seed_log: every n-th checkpoint holds the weights; None: replay from the base"
    )
    icl_demos: int = Field(32, ge=0)
    perturbation_scale: Literal["none", "param_norm", "grad_norm"] = Field(
        "none",
        description="the paper code's --zo_variant: each group (embeddings, LM head, each layer) is "
        "perturbed by z / c, c its weights' norm (param_norm) or a two-forward estimate of its gradient's "
        "norm (grad_norm, with --use_zo_grad_est: 2 forwards per group)",
    )
    scale_estimate: Literal["variance", "expectation"] = Field(
        "variance",
        description="with a perturbation_scale: estimate g z c (variance) or g z (--change_grad_estimate)",
    )
    recompute_norms: bool = Field(
        False, description="with a perturbation_scale: recompute the scales each epoch (--recompute_norms)"
    )
    xgblora_steps_per_iteration: int | None = Field(
        None,
        gt=0,
        description="XGBLoRA: every N steps the LoRA update is merged into the base weights and a fresh "
        "adapter starts (mode lora, method mezo; the final weights are tested, and a resume replays "
        "the seed log from the base model, merges included)",
    )
    layer_wise: bool = Field(
        False,
        description="MeZO perturbs and updates one layer per step, cycling (the paper code's "
        "--layer_wise_optim); not with zo_variant adam",
    )
    lp_init: bool = Field(
        False,
        description="LP-MeZO (paper Table 19): the label words' decoder rows start from a linear probe on "
        "the train split (the paper's --lp_early_stopping: max_iter 1000, tol 0.01); mlm prompt tasks",
    )
    answer_end: AnswerEnd = Field(
        "newline",
        description="generated answers (SQuAD, DROP) end at their first newline; stop_token: the paper's "
        "code, generation stops at the newline or EOS token and the whole text is the answer",
    )

    # Resources (per trial)
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

    @model_validator(mode="before")
    @classmethod
    def _task_definition(cls, raw: Any) -> Any:
        return task_definition(raw) if isinstance(raw, dict) else raw

    @field_validator(*PATH_FIELDS)
    @classmethod
    def _absolute(cls, path: str | None, info: Any) -> str | None:
        return absolute_path(info.field_name, path)

    @model_validator(mode="after")
    def _consistent(self) -> TrialConfig:
        task = self.resolved_task()  # unknown task -> ValueError listing the known ones
        if self.family is None:
            object.__setattr__(self, "family", task.family)
        if self.epochs is not None and (num_train := expected_train_size(task, self.data_spec())):
            for key, value in self._epoch_schedule(num_train).items():
                object.__setattr__(self, key, value)
        if self.method in TRAINING_METHODS and self.max_steps == 0:
            raise ValueError(
                f"max_steps=0 with method={self.method!r} trains nothing; use method='zero_shot'"
            )
        if self.num_workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ValueError(
                f"gpus_per_worker={self.gpus_per_worker:g} with num_workers={self.num_workers}: NCCL needs a "
                f"whole GPU per worker; use gpus_per_worker=1 or fewer workers"
            )
        if self.method in TRAINING_METHODS and self.eval_steps > self.max_steps:
            raise ValueError(
                f"eval_steps={self.eval_steps} is larger than max_steps={self.max_steps}; the trial would "
                f"never evaluate. Set eval_steps <= max_steps"
            )
        if self.method == "lp" and task.kind != "classification":
            raise ValueError(
                f"method='lp' (linear probing) needs a classification task; task {task.name!r} is "
                f"{task.kind} (the paper head-tuned those, which mezo_ray does not implement)"
            )
        if not self.prompt and (task.family != "mlm" or self.method in ("lp", "icl") or self.fsdp):
            raise ValueError(
                f"prompt=false (a sequence classification head, the paper's no-prompt ablation) needs an "
                f"mlm-family task, method mezo / ft / zero_shot and no fsdp; got task {task.name!r} "
                f"({task.family}), method={self.method!r}, fsdp={self.fsdp}"
            )
        if self.prompt and isinstance(task, MLMTask) and not (task.template and task.label_words):
            raise ValueError(
                f"task {task.name!r} has no template or no label words (labels given as a list): a prompt "
                "reads a label word at the mask. Give template and labels as value: word, or use prompt=false"
            )
        if self.estimator != "mezo":
            bad = [f"method={self.method!r}"] if self.method != "mezo" else []
            bad += [
                f"{key}={getattr(self, key)!r}"
                for key, unused in MEZO_ONLY.items()
                if getattr(self, key) not in unused
            ]
            if bad:
                raise ValueError(
                    f"{', '.join(bad)}: estimator={self.estimator!r} brings its own probes and update "
                    f"rule; it needs method='mezo' and leaves {', '.join(MEZO_ONLY)} to MeZO's own "
                    "estimate (mezo_ray/estimators.py MEZO_ONLY)"
                )
        if self.perturbation_scale != "none" and self.method != "mezo":
            raise ValueError(
                f"perturbation_scale={self.perturbation_scale!r} is a MeZO option; method={self.method!r}"
            )
        if self.xgblora_steps_per_iteration is not None and (
            self.mode != "lora"
            or self.method != "mezo"
            or self.selection != "final"
            or self.checkpoint_mode != "seed_log"
            or self.snapshot_every is not None
            or self.fsdp
        ):
            raise ValueError(
                "xgblora_steps_per_iteration merges LoRA into frozen base weights, which neither a best-dev "
                "copy nor a weight snapshot holds: it needs mode='lora', method='mezo', selection='final', "
                "checkpoint_mode='seed_log', snapshot_every=null and no fsdp; got "
                f"mode={self.mode!r}, method={self.method!r}, selection={self.selection!r}, "
                f"checkpoint_mode={self.checkpoint_mode!r}, snapshot_every={self.snapshot_every}, "
                f"fsdp={self.fsdp}"
            )
        if self.layer_wise and (self.method != "mezo" or self.zo_variant == "adam"):
            raise ValueError(
                f"layer_wise=true is a MeZO option for the stateless and momentum rules; got "
                f"method={self.method!r}, zo_variant={self.zo_variant!r}"
            )
        if self.lp_init and (
            not isinstance(task, MLMTask)
            or not self.prompt
            or self.method not in TRAINING_METHODS
            or self.fsdp
        ):
            raise ValueError(
                f"lp_init=true (LP-MeZO) writes a linear probe into the label words' decoder rows: it needs "
                f"an mlm-family prompt task, method mezo or ft and no fsdp; got task {task.name!r} "
                f"({task.family}), prompt={self.prompt}, method={self.method!r}, fsdp={self.fsdp}"
            )
        if self.mode == "lora_as_published" and (
            task.family != "mlm" or not self.prompt or self.method not in TRAINING_METHODS
        ):
            raise ValueError(
                f"mode='lora_as_published' reproduces the paper's RoBERTa LoRA rows: it needs an mlm-family "
                f"task with its prompt and method mezo or ft; got task {task.name!r} ({task.family}), "
                f"prompt={self.prompt}, method={self.method!r}. Use mode='lora' for LoRA itself"
            )
        if self.method == "icl" and task.family != "causal":
            raise ValueError(f"method='icl' is a causal-family baseline; task {task.name!r} is {task.family}")
        if self.fsdp and self.num_workers < 1:
            raise ValueError("fsdp=true needs num_workers >= 1 (FSDP shards across Ray Train workers)")
        if self.perturbation == "forward" and (
            self.method != "mezo" or self.perturbation_scale == "grad_norm"
        ):
            raise ValueError(
                "perturbation='forward' is built for MeZO's own estimate: it needs method='mezo' and "
                f"perturbation_scale other than grad_norm; got method={self.method!r}, "
                f"perturbation_scale={self.perturbation_scale!r}"
            )
        if self.stochastic_rounding and self.dtype == "float32":
            raise ValueError(
                "stochastic_rounding=true rounds bfloat16 / float16 weights; dtype='float32' keeps updates "
                "exact to float32 (set dtype, or leave stochastic_rounding unset)"
            )
        if self.k is not None and task.family != "mlm":
            raise ValueError(f"k={self.k} applies to the mlm family (k-shot); task {task.name!r} is causal")
        if self.micro_batch_size and self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} > batch_size={self.batch_size}")
        return self

    # ------------------------------------------------------------------------------------------------
    def resolved_task(self) -> Task:
        """The task object: your own (``task_spec``), or a built-in one (the family decides between
        same-named tasks such as RTE)."""
        if self.task_spec is not None:
            return self.task_spec.build()
        try:
            return get_task(self.task, self.family)
        except ValueError:
            if self.family is not None:
                raise
            family = model_family_hint(self.model)
            if family is None:
                raise
            return get_task(self.task, family)

    def _epoch_schedule(self, num_train: int) -> dict[str, int]:
        """HF Trainer's count, which the paper's FT ran: ceil(n / batch) steps an epoch (the last batch
        short), an evaluation at the end of each."""
        per_epoch = math.ceil(num_train / self.batch_size)
        return {"max_steps": self.epochs * per_epoch, "eval_steps": per_epoch} if self.epochs else {}

    def with_train_size(self, num_train: int) -> TrialConfig:
        """This config with the epoch schedule of a train split of ``num_train`` examples (unchanged when
        the length is given in steps)."""
        schedule = self._epoch_schedule(num_train)
        return self.model_copy(update=schedule) if schedule else self

    def placement(self, low_precision: bool, saved: str | None = None) -> str:
        """Where MeZO perturbs: ``perturbation`` where set; else where a resumed run perturbed
        (``saved``, from its checkpoint); else in the forward for MeZO's own estimate when some
        trained weights are bfloat16 / float16 (``low_precision``: in-place sweeps walk them by ulps
        every step; LoRA and prefix parameters stay float32 unless ``arithmetic: model``), in place
        otherwise."""
        if self.perturbation is not None:
            return self.perturbation
        if saved is not None:
            return saved
        own_estimate = self.method == "mezo" and self.estimator == "mezo"
        forward_ok = own_estimate and self.perturbation_scale != "grad_norm"
        return "forward" if forward_ok and low_precision else "in_place"

    @property
    def training_seed(self) -> int:
        return self.seed if self.seed is not None else (self.data_seed if self.data_seed is not None else 0)

    def data_spec(self) -> DataSpec:
        return DataSpec(
            source=self.data_source,
            data_dir=self.data_dir,
            train_file=self.train_file,
            test_file=self.test_file,
            columns=self.columns,
            k=self.k,
            seed=self.data_seed,
            num_train=self.num_train,
            num_dev=self.num_dev,
            num_test=self.num_test,
            strict_k=self.strict_k,
            fix_wsc=self.fix_wsc,
        )

    def forward_passes(self) -> int:
        """Training forward passes this trial will run (for dry runs): 2K per MeZO step, 1 per FT step."""
        if self.method == "mezo" and self.estimator != "mezo":
            passes = ESTIMATORS[self.estimator].passes_per_step(self.model_dump()) * self.max_steps
            return min(passes, self.max_forward_passes) if self.max_forward_passes else passes
        if self.method == "mezo":
            if self.perturbation_schedule == "linear":  # K_t = max(1, int(t / max_steps * K))
                k = self.n_perturbations
                passes = sum(2 * max(1, int(t / self.max_steps * k)) for t in range(self.max_steps))
            else:
                passes = 2 * self.n_perturbations * self.max_steps
            return min(passes, self.max_forward_passes) if self.max_forward_passes else passes
        return self.max_steps if self.method == "ft" else 0

    def resources(self) -> dict[str, float]:
        """Resources the trial's Train workers take, in total."""
        workers = max(self.num_workers, 1)
        return {"CPU": workers * self.cpus_per_worker, "GPU": workers * self.gpus_per_worker}


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


def parse_trial_config(raw: dict[str, Any], where: str = "trial config") -> TrialConfig:
    """Validate a flat dict into a TrialConfig; errors name the field, the bad value and what is allowed."""
    try:
        return TrialConfig.model_validate(raw)
    except ValidationError as err:
        raise ValueError(f"{where}: {format_validation_error(err)}") from None


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "config"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            known = ", ".join(sorted(TrialConfig.model_fields))
            lines.append(f"unknown key {field!r} (value {value!r}); known keys: {known}")
        elif field == "config":
            lines.append(str(e["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"{field}={value!r}: {e['msg']}")
    return "; ".join(lines)
