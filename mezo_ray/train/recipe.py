"""The trial recipe: one validated ``TrialConfig`` -> task data and model -> MeZO steps -> reports.

Read it top to bottom: ``run_trial`` is the whole trial.

Features and the flags that control them:
- MeZO (``method=mezo``): ZO-SGD / momentum / Adam / sign (``zo_variant``), n-SPSA
  (``n_perturbations``, ``perturbation_schedule``), constant or linear LR (``lr_schedule``),
  ``micro_batch_size`` (the loss at each +-eps point is averaged over micro-batches: a batch of 64 at
  the memory of the micro-batch), a forward-pass budget (``max_forward_passes``), and
  non-differentiable objectives (``objective=metric`` minimises -accuracy / -F1).
- The first-order baseline (``method=ft``): AdamW + backprop, linear decay, grad clipping, dropout
  on; ``dtype`` float16 / bfloat16 means mixed precision over float32 weights, as the paper's ``--fp16``.
- Baselines without training: ``zero_shot``, ``icl`` (causal family), ``lp`` (linear probing).
- Data parallel across the trial's workers (``num_workers``): losses are all-reduced, every rank
  applies the same update; FSDP2 (``fsdp=true``) also shards the weights.
- Length: ``max_steps``, or ``epochs`` over the sampled train split (steps derived from its size as
  HF Trainer counts them, an evaluation each epoch: the paper's OPT FT).
- Every ``eval_steps``: dev evaluation and a report (dev_acc, best_dev_acc, dev_loss, train_loss,
  step, forward_passes, lr, eps, peak memory, steps/s) with a checkpoint (``checkpoint_mode``:
  safetensors weights, or MeZO's seed log since the last weight snapshot, one every ``snapshot_every``
  checkpoints); a restarted worker resumes the same trajectory.
- At the end: the test metric of the best-dev weights (``selection``: dev_acc, or dev_loss as the
  paper's OPT code did), or of the final ones (``final``, its non-differentiable runs), reported with
  ``done: true``.

Errors: ``NonFiniteLossError`` when the loss is non-finite ``nonfinite_patience`` times in a row,
after a last report that says why (``FAILURE_KEY``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from mezo_ray.models import (
    CausalLMHead,
    MaskedLMHead,
    SequenceClassificationHead,
    init_head_from_probe,
    linear_probe,
    load_model,
    make_head,
)
from mezo_ray.models.baselines import icl_evaluate
from mezo_ray.models.loading import DTYPES, LoadedModel, ModelSpec
from mezo_ray.models.modes import merge_lora_and_restart
from mezo_ray.models.tiny import ensure_tiny_models
from mezo_ray.tasks import Example, Splits, load_pool, load_splits
from mezo_ray.train import checkpoint as ckpt
from mezo_ray.train.config import (
    TINY_MODELS,
    FtMethod,
    IclMethod,
    LpMethod,
    MezoMethod,
    Schedule,
    TrialConfig,
)
from mezo_ray.train.distributed import (
    all_reduce_sums,
    check_noise_agrees,
    is_distributed,
    rank_shard,
    shard_model,
)
from mezo_ray.train.memory_log import memory_log
from mezo_ray.train.progress import method_name, progress_line
from mezo_ray.train.session import FAILURE_KEY, Session
from mezo_ray.zo import NonFiniteLossError, ZeroOrderOptimizer, mix_seed, saved_setting

Head = MaskedLMHead | CausalLMHead | SequenceClassificationHead
Params = list[tuple[str, torch.nn.Parameter]]


@dataclass(frozen=True)
class Worker:
    """Where this worker runs: its rank among the trial's workers, on which device, sharded or not."""

    rank: int
    world: int
    device: torch.device
    fsdp: bool = False


def run_trial(cfg: TrialConfig, session: Session) -> dict[str, Any]:
    """Run one trial; returns the final metrics (also reported with ``done: true``)."""
    tracked = [ckpt.Progress()]  # whose step the memory log notes: the trial's, once restored
    where = os.path.join(session.log_dir, f"memory-rank{session.rank}.csv") if session.log_dir else None
    with memory_log(where, cfg.resources.memory_log_every_s, lambda: tracked[0].step):
        return _run_trial(cfg, session, tracked)


def _run_trial(cfg: TrialConfig, session: Session, tracked: list[ckpt.Progress]) -> dict[str, Any]:
    transformers.utils.logging.disable_progress_bar()  # one bar per model load floods trial logs
    worker = Worker(
        session.rank, session.world_size, _device(cfg.resources.gpus_per_worker), cfg.resources.fsdp
    )
    torch.manual_seed(cfg.training_seed)
    method = cfg.method

    # 1. Data
    splits, dev, test = _setup_data(cfg)
    if not isinstance(method, MezoMethod | FtMethod):
        head = _setup_head(cfg, load_model(_model_spec(cfg, worker.device)))
        return _run_baseline(cfg, head, splits, dev, test, session, worker)
    schedule = cfg.schedule.for_train_size(len(splits.train))  # a length in epochs becomes steps
    with session.latest_checkpoint() as resume_dir:
        resumed = ckpt.load(resume_dir, worker.rank)
    if resumed and FAILURE_KEY in resumed.progress.last_metrics:  # a retry after a non-finite stop (Tune
        # retries every error, a lost node's too): the same seeds would give the same losses; fail at once
        raise NonFiniteLossError(resumed.progress.last_metrics[FAILURE_KEY])
    check_noise_agrees(worker.device)  # before the model: a mismatched cluster fails at once

    # 2. Model, head and optimizer
    loaded, head = _setup_model(cfg, worker, splits.train)
    params = loaded.trainable_named_parameters()
    optimizer = _setup_optimizer(cfg, schedule, params, len(splits.train), loaded, resumed)
    scaler = torch.amp.GradScaler(
        worker.device.type, enabled=isinstance(method, FtMethod) and cfg.model.dtype == "float16"
    )
    boost = _booster(method, schedule, cfg.training_seed, loaded)

    # 3. Resume: the weight snapshot, then a replay of the seed log since it
    progress, best_weights = ckpt.restore(
        resumed, session, params, optimizer, schedule.selection, after_step=boost
    )
    tracked[0] = progress

    # 4. The loop
    clock, steps_at_clock = time.perf_counter(), progress.step
    budget = schedule.max_forward_passes
    for step in range(progress.step + 1, schedule.max_steps + 1):
        if _out_of_budget(budget, optimizer, step - 1):
            break
        batch = batch_at(splits.train, step, schedule.batch_size, cfg.training_seed)
        _set_lr(optimizer, method.lr, method.lr_schedule, step, schedule.max_steps)
        if isinstance(method, MezoMethod):
            loss = _mezo_step(cfg, optimizer, head, batch, worker)
        else:
            loss = _ft_step(cfg, optimizer, scaler, head, batch, step, worker)
        boost(step)
        progress.step = step
        try:
            _count_loss(progress, loss, step, schedule.nonfinite_patience)
        except NonFiniteLossError as err:  # the reason goes in the trial's results, then the trial fails
            progress.last_metrics = _failure_metrics(progress, optimizer, step, str(err))
            ckpt.write(session, cfg, progress, optimizer, params, best_weights)
            raise
        if (
            step % schedule.eval_steps
            and step != schedule.max_steps
            and not _out_of_budget(budget, optimizer, step)
        ):
            continue
        steps_per_s = (step - steps_at_clock) / (time.perf_counter() - clock)
        best_weights = _evaluate_and_report(
            cfg, schedule, session, head, dev, optimizer, params, progress, best_weights, steps_per_s, worker
        )
        clock, steps_at_clock = time.perf_counter(), step

    # 5. The test metric of the selected (best-dev) weights
    if best_weights is not None:
        ckpt.copy_into(params, best_weights, "best weights")
    test_acc, _ = evaluate(head, test, cfg.schedule.eval_batch_size, worker)
    final = {
        **progress.last_metrics,
        "dev_acc": progress.best_dev_acc,  # of the selected checkpoint
        "dev_loss": progress.best_dev_loss,
        "test_acc": test_acc,
        "selected_step": progress.best_step,
        "selection": schedule.selection,
        "peak_mem_bytes": peak_memory_bytes(worker.device),
        "done": True,
    }
    session.report(final, None)
    return final


# ----------------------------------------------------------------------------------------------------
# Setup
def _setup_data(cfg: TrialConfig) -> tuple[Splits, list[Example], list[Example]]:
    """The sampled splits, and dev and test capped at ``max_eval_examples``."""
    splits = load_splits(cfg.task.resolved, cfg.data.spec)
    cap = cfg.data.max_eval_examples
    return splits, splits.dev[:cap] if cap else splits.dev, splits.test[:cap] if cap else splits.test


def _setup_head(cfg: TrialConfig, loaded: LoadedModel) -> Head:
    """The task's head on the model, generating answers the way ``answer_end`` says."""
    head = make_head(cfg.task.resolved, loaded)
    if isinstance(head, CausalLMHead):
        head.answer_end = cfg.task.answer_end
    return head


def _setup_model(cfg: TrialConfig, worker: Worker, train: list[Example]) -> tuple[LoadedModel, Head]:
    """The model (sharded under FSDP) and its head, the label words' rows from a probe for LP-MeZO
    (before a resume: a snapshot's weights then override it, a replay starts from it)."""
    loaded = load_model(_model_spec(cfg, worker.device))
    if worker.fsdp:
        shard_model(loaded, worker.device)
    head = _setup_head(cfg, loaded)
    if cfg.method.lp_init:
        init_head_from_probe(linear_probe(head, train, early_stopping=True))
    if worker.fsdp:
        head.lm_head = loaded.fsdp_root.project
    return loaded, head


def _setup_optimizer(
    cfg: TrialConfig,
    schedule: Schedule,
    params: Params,
    num_train: int,
    loaded: LoadedModel,
    resumed: ckpt.Checkpoint | None,
) -> torch.optim.Optimizer:
    """MeZO's estimator from the registry (perturbing in the forward where the config or the resumed
    run says so), or AdamW for the first-order baseline."""
    method = cfg.method
    if isinstance(method, FtMethod):
        decay = [p for n, p in params if "bias" not in n.lower() and "norm" not in n.lower()]
        rest = [p for n, p in params if "bias" in n.lower() or "norm" in n.lower()]
        groups = [
            {"params": decay, "weight_decay": method.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=method.lr)
    assert isinstance(method, MezoMethod)
    rounding = method.stochastic_rounding
    optimizer = method.entry.build(
        params,
        method.estimator,
        max_steps=schedule.max_steps,
        steps_per_epoch=math.ceil(num_train / schedule.batch_size),
        lr=method.lr,
        eps=method.eps,
        seed=cfg.training_seed,
        stochastic_rounding=rounding if rounding is not None else _saved(resumed, "stochastic_rounding"),
        weight_decay=method.weight_decay,
    )
    if method.entry.batched:  # before a resume: the model its probes' forward wraps
        optimizer.attach(loaded.model)
    low_precision = any(p.dtype in (torch.bfloat16, torch.float16) for _, p in params)
    if cfg.placement(low_precision, _saved(resumed, "perturbation")) == "forward":
        optimizer.perturb_in_forward(loaded.model)  # before a resume: the state dict records it
    return optimizer


def _model_spec(cfg: TrialConfig, device: torch.device) -> ModelSpec:
    model, task = cfg.model, cfg.task
    path = model.name
    if path in TINY_MODELS:
        tiny = ensure_tiny_models()
        path = tiny.mlm if TINY_MODELS[path] == "mlm" else tiny.causal
    return ModelSpec(
        name_or_path=path,
        family=task.family if task.prompt else "seq_cls",
        num_labels=None if task.prompt else len(task.resolved.class_names),
        # FT: float32 (or float64) weights, autocast to a 16-bit dtype
        dtype="float32" if isinstance(cfg.method, FtMethod) and model.dtype != "float64" else model.dtype,
        mode=PUBLISHED_LORA[cfg.method.name] if model.mode == "lora_as_published" else model.mode,
        lora_r=model.lora_r,
        lora_alpha=model.lora_alpha,
        num_prefix=model.num_prefix,
        trust_remote_code=model.trust_remote_code,
        device=str(device),
        init_seed=cfg.training_seed,
        opt_bos_quirk=model.name not in TINY_MODELS,  # the tiny OPT was pretrained with its own BOS
        arithmetic=model.arithmetic,
    )


#: What the paper's RoBERTa code trained with --apply_lora (models/modes.py): loralib's merge on eval()
#: left MeZO the LM head alone; FT steps call train(), which unmerges, so FT trained LoRA too.
PUBLISHED_LORA = {"mezo": "lm_head", "ft": "lora+lm_head"}


def _device(gpus_per_worker: float) -> torch.device:
    if gpus_per_worker > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(f"gpus_per_worker={gpus_per_worker} but this worker sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _saved(resumed: ckpt.Checkpoint | None, key: str) -> Any:
    """A MeZO setting of the run being resumed, for settings the config leaves unset (None: a new
    run, or not MeZO)."""
    extra = (resumed.optimizer or {}).get("mezo") if resumed is not None else None
    return None if extra is None else saved_setting(extra, key)


def _booster(
    method: MezoMethod | FtMethod, schedule: Schedule, seed: int, loaded: LoadedModel
) -> Callable[[int], None]:
    """XGBLoRA: after every ``xgblora_steps_per_iteration``-th step (not the last), fold LoRA into the
    base weights and start a fresh adapter, seeded by the step (a replay redoes it identically)."""
    every = getattr(method, "xgblora_steps_per_iteration", None)

    def after_step(step: int) -> None:
        if every and step % every == 0 and step < schedule.max_steps:
            merge_lora_and_restart(loaded.model, mix_seed(seed, step, 0xB0057))

    return after_step


# ----------------------------------------------------------------------------------------------------
# One training step
def _mezo_step(
    cfg: TrialConfig, optimizer: ZeroOrderOptimizer, head: Head, batch: list[Example], worker: Worker
) -> float:
    """One step of the estimator; every worker scores its shard of each probe's batch."""
    local = rank_shard(batch, worker.rank, worker.world)
    forwards = _forwards_per_loss(cfg.schedule.micro_batch_size, len(batch), worker.world)
    objective = cfg.method.objective
    round_to = DTYPES[cfg.model.dtype] if cfg.model.arithmetic == "model" else None
    if cfg.method.entry.batched:
        members = cfg.method.estimator.members
        return optimizer.step(lambda: member_losses(head, local, members, forwards, worker, round_to))
    return optimizer.step(lambda: batch_loss(head, local, batch[0], forwards, worker, objective, round_to))


def member_losses(
    head: Head,
    local: list[Example],
    members: int,
    forwards: int,
    worker: Worker,
    round_to: torch.dtype | None,
) -> list[float]:
    """Each member's mean loss over the whole batch, for an estimator whose probes share one batched
    forward: every worker scores its shard, copied once per member (member-major, as that forward
    reads it), in ``forwards`` micro-batches; only the N (sum, count) pairs cross the wire."""
    sums, counts = torch.zeros(members, dtype=torch.float64), torch.zeros(members, dtype=torch.float64)
    for i in range(forwards):
        micro = local[i::forwards]
        if micro:
            s, c = head.example_loss_terms(micro * members)
            sums += s.detach().double().cpu().view(members, -1).sum(1)
            counts += c.detach().double().cpu().view(members, -1).sum(1)
    reduced = all_reduce_sums([*sums.tolist(), *counts.tolist()], worker.device)
    means = [total / count for total, count in zip(reduced[:members], reduced[members:], strict=True)]
    return [torch.tensor(m, dtype=round_to).item() for m in means] if round_to is not None else means


def _ft_step(
    cfg: TrialConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    head: Head,
    batch: list[Example],
    step: int,
    worker: Worker,
) -> float:
    """One backprop + AdamW step; returns the loss, the same on every worker (a non-finite loss skips
    the update on all of them)."""
    local = rank_shard(batch, worker.rank, worker.world)
    forwards = _forwards_per_loss(cfg.schedule.micro_batch_size, len(batch), worker.world)
    torch.manual_seed(mix_seed(cfg.training_seed, step))  # dropout masks as a function of the step
    head.loaded.model.train()
    try:
        with _autocast(cfg.model.dtype, worker.device):
            total, count = batch_loss_terms(head, local, batch[0], forwards, worker.fsdp)
        (count,) = all_reduce_sums([count], worker.device)
        if torch.is_tensor(total):  # an empty data-parallel shard has nothing to backprop
            # the gradient of the mean over the whole batch, whatever each worker's share of it;
            # FSDP averages over the workers when it reduces, hence the factor
            scale = worker.world / count if worker.fsdp else 1 / count
            scaler.scale(total * scale).backward()
            total = total.detach()
        (loss_sum,) = all_reduce_sums([float(total)], worker.device)
        loss = loss_sum / count
        if not math.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            return loss
        if is_distributed() and not worker.fsdp:
            _sum_gradients(optimizer)
        scaler.unscale_(optimizer)
        if cfg.method.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(_all_params(optimizer), cfg.method.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    finally:
        head.loaded.model.eval()
    return loss


def batch_loss(
    head: Head,
    local: list[Example],
    filler: Example,
    forwards: int,
    worker: Worker,
    objective: str = "loss",
    round_to: torch.dtype | None = None,
) -> float:
    """The mean loss (or -metric) over the whole batch: each worker scores its shard, and only the
    (sum, count) scalars cross the wire. ``round_to``: the paper's fp16 runs took the mean loss in
    the model's dtype (``arithmetic: model``)."""
    if objective == "metric":
        predictions = head.predict(local) if local else []
        scores = [head.task.score([p], [ex]) for p, ex in zip(predictions, local, strict=True)]
        total, count = all_reduce_sums([-sum(scores), len(local)], worker.device)
        return total / count
    total, count = batch_loss_terms(head, local, filler, forwards, worker.fsdp)
    total, count = all_reduce_sums([float(total), count], worker.device)
    if round_to is not None:
        return torch.tensor(total / count, dtype=round_to).item()
    return total / count


def batch_loss_terms(
    head: Head, local: list[Example], filler: Example, forwards: int, fsdp: bool
) -> tuple[Any, int]:
    """(loss sum, count) over this worker's examples in exactly ``forwards`` forward passes (micro-
    batches). Under FSDP every worker must run as many forwards as the others: one with fewer
    examples runs a zero-weight forward on ``filler``."""
    total: Any = 0.0
    count = 0
    for i in range(forwards):
        micro = local[i::forwards]
        if micro:
            s, c = head.loss_terms(micro)
            total, count = total + s, count + c
        elif fsdp:
            total = total + 0.0 * head.loss_terms([filler])[0]
    return total, count


def _forwards_per_loss(micro_batch_size: int | None, batch_size: int, world: int) -> int:
    """Forward passes per loss evaluation: one per micro-batch of the largest worker shard."""
    largest_shard = math.ceil(batch_size / world)
    return math.ceil(largest_shard / micro_batch_size) if micro_batch_size else 1


def batch_at(train: list[Example], step: int, batch_size: int, seed: int) -> list[Example]:
    """The batch of step ``step`` (1-based): epochs are seeded shuffles, the last batch of an epoch may
    be short (the paper's RandomSampler with drop_last=False). A pure function of (seed, step)."""
    n = len(train)
    per_epoch = math.ceil(n / batch_size)
    epoch, index = divmod(step - 1, per_epoch)
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 0xBA7C))
    order = torch.randperm(n, generator=g)[index * batch_size : (index + 1) * batch_size]
    return [train[i] for i in order.tolist()]


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, rule: str, step: int, max_steps: int) -> None:
    """Constant, or linear decay to 0 over max_steps (HF's schedule without warm-up)."""
    lr = lr if rule == "constant" else lr * (max_steps - (step - 1)) / max_steps
    for group in optimizer.param_groups:
        group["lr"] = lr


def _autocast(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    if dtype in ("float32", "float64"):  # mixed precision is for the 16-bit dtypes
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def optimizer_state_multiple(optimizer: torch.optim.Optimizer) -> float:
    """The optimizer's state in multiples of the trainable parameters: MeZO's update rule's (0 for
    the paper's SGD), AdamW's 2 for the first-order baseline (whose gradients add 1 more)."""
    return optimizer.state_multiple if isinstance(optimizer, ZeroOrderOptimizer) else 2


def forward_passes(optimizer: torch.optim.Optimizer, step: int) -> int:
    return optimizer.forward_passes if isinstance(optimizer, ZeroOrderOptimizer) else step


def _out_of_budget(budget: int | None, optimizer: torch.optim.Optimizer, step: int) -> bool:
    return bool(budget) and forward_passes(optimizer, step) >= budget


def _count_loss(progress: ckpt.Progress, loss: float, step: int, patience: int) -> None:
    if math.isfinite(loss):
        progress.train_loss_sum += loss
        progress.train_loss_count += 1
        progress.consecutive_nonfinite = 0
        return
    progress.nonfinite_steps += 1
    progress.consecutive_nonfinite += 1
    if progress.consecutive_nonfinite >= patience:
        raise NonFiniteLossError(
            f"the training loss was non-finite {progress.consecutive_nonfinite} times in a row (at step "
            f"{step}); the trial stops instead of training on (nonfinite_patience={patience}). "
            f"Lower lr or eps, or use float32"
        )


def _failure_metrics(
    progress: ckpt.Progress, optimizer: torch.optim.Optimizer, step: int, reason: str
) -> dict[str, Any]:
    """The last report of a trial that stops on non-finite losses: its last eval's metrics, where it
    stopped, and why (``FAILURE_KEY``); the trial process raises on it (see ``ray_trial``)."""
    return {
        "best_dev_acc": progress.max_dev_acc if math.isfinite(progress.max_dev_acc) else math.nan,
        **progress.last_metrics,
        "step": step,
        "forward_passes": forward_passes(optimizer, step),
        "nonfinite_steps": progress.nonfinite_steps,
        FAILURE_KEY: reason,
    }


def _all_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _sum_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Sum the data-parallel workers' gradients (each already divided by the whole batch's count); a
    worker whose shard was empty has none and sends zeros, so the collectives still pair up."""
    import torch.distributed as dist

    for p in _all_params(optimizer):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


# ----------------------------------------------------------------------------------------------------
# Evaluation
def _evaluate_and_report(
    cfg: TrialConfig,
    schedule: Schedule,
    session: Session,
    head: Head,
    dev: list[Example],
    optimizer: torch.optim.Optimizer,
    params: Params,
    progress: ckpt.Progress,
    best_weights: dict[str, torch.Tensor] | None,
    steps_per_s: float,
    worker: Worker,
) -> dict[str, torch.Tensor] | None:
    """Evaluate on dev, keep the weights the selection rule picks, report with a checkpoint; returns
    the selected weights (None: the current ones, or not kept)."""
    method, step = cfg.method, progress.step
    ft = isinstance(method, FtMethod)
    with _autocast(cfg.model.dtype, worker.device) if ft else contextlib.nullcontext():
        # FT's dev loss, which selects its checkpoint, in its training precision: HF's prediction_step
        # under the paper's --fp16. Test scores stay float32, as the paper's run.py scored test.
        dev_acc, dev_loss = evaluate(head, dev, schedule.eval_batch_size, worker)
    progress.max_dev_acc = max(progress.max_dev_acc, dev_acc)
    if _improves(schedule.selection, dev_acc, dev_loss, progress):
        progress.best_dev_acc, progress.best_dev_loss, progress.best_step = dev_acc, dev_loss, step
        best_weights = None if schedule.selection == "final" else ckpt.trainable_copy(params)
    progress.last_metrics = {
        "step": step,
        "forward_passes": forward_passes(optimizer, step),
        "dev_acc": dev_acc,
        "best_dev_acc": progress.max_dev_acc,
        "dev_loss": dev_loss,
        "train_loss": progress.train_loss_sum / max(progress.train_loss_count, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "eps": method.eps if isinstance(method, MezoMethod) else 0.0,
        "peak_mem_bytes": peak_memory_bytes(worker.device),
        "steps_per_s": steps_per_s,
        "nonfinite_steps": progress.nonfinite_steps,
        "optimizer_state_multiple": optimizer_state_multiple(optimizer),
    }
    progress.train_loss_sum, progress.train_loss_count = 0.0, 0
    if worker.rank == 0:  # the trial's log: Tune shows it in the terminal and keeps it per trial
        estimator = method.estimator.name if isinstance(method, MezoMethod) else None
        label = f"{cfg.task.name} {method_name(method.name, estimator)} lr={method.lr:g}"
        print(progress_line(label, progress.last_metrics, schedule.max_steps), flush=True)
    ckpt.write(session, cfg, progress, optimizer, params, best_weights)
    return best_weights


@torch.no_grad()
def evaluate(head: Head, examples: list[Example], batch_size: int, worker: Worker) -> tuple[float, float]:
    """(metric, loss) over ``examples``, each worker scoring its shard; with FSDP every worker runs
    the same number of forwards (the collectives inside them must pair up)."""
    shard = rank_shard(examples, worker.rank, worker.world)
    metric_sum, loss_sum, batches = 0.0, 0.0, 0
    for start in range(0, len(shard), batch_size):
        chunk = shard[start : start + batch_size]
        result = head.evaluate(chunk, batch_size=len(chunk))
        metric_sum += result["metric"] * len(chunk)
        loss_sum += result["loss"] * len(chunk)
        batches += 1
    if worker.fsdp:  # pad this worker's forwards up to the longest shard's
        longest = math.ceil(math.ceil(len(examples) / worker.world) / batch_size)
        for _ in range(longest - batches):
            head.evaluate(examples[:1], batch_size=1)
    metric_sum, loss_sum, n = all_reduce_sums([metric_sum, loss_sum, len(shard)], worker.device)
    return metric_sum / n, loss_sum / n


def _improves(selection: str, dev_acc: float, dev_loss: float, progress: ckpt.Progress) -> bool:
    if selection == "final":  # every evaluation: the last one is of the weights tested at the end
        return True
    if selection == "dev_loss":
        return dev_loss < progress.best_dev_loss
    return dev_acc > progress.best_dev_acc


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


# ----------------------------------------------------------------------------------------------------
# Baselines without training
def _run_baseline(
    cfg: TrialConfig,
    head: Head,
    splits: Splits,
    dev: list[Example],
    test: list[Example],
    session: Session,
    worker: Worker,
) -> dict[str, Any]:
    """Zero-shot, ICL (demonstrations from the whole train split, as the paper drew them) or a linear
    probe (written into the head, then scored, as the paper's codes tested one)."""
    batch_size = cfg.schedule.eval_batch_size
    if isinstance(cfg.method, IclMethod):
        pool = load_pool(head.task, cfg.data.spec).train
        dev_result = icl_evaluate(head, dev, pool, num_demos=cfg.method.icl_demos, seed=0)
        test_result = icl_evaluate(head, test, pool, num_demos=cfg.method.icl_demos, seed=0)
        dev_acc, dev_loss, test_acc = dev_result["metric"], dev_result["loss"], test_result["metric"]
    else:
        if isinstance(cfg.method, LpMethod):
            init_head_from_probe(linear_probe(head, splits.train))
        dev_acc, dev_loss = evaluate(head, dev, batch_size, worker)
        test_acc, _ = evaluate(head, test, batch_size, worker)
    final = {
        "step": 0,
        "forward_passes": 0,
        "dev_acc": dev_acc,
        "best_dev_acc": dev_acc,
        "dev_loss": dev_loss,
        "test_acc": test_acc,
        "selected_step": 0,
        "selection": cfg.schedule.selection,
        "peak_mem_bytes": peak_memory_bytes(worker.device),
        "nonfinite_steps": 0,
        "done": True,
    }
    session.report(final, None)
    return final
