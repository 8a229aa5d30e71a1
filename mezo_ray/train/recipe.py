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
from typing import Any

import torch
import transformers

from mezo_ray.estimators import ESTIMATORS
from mezo_ray.models import CausalLMHead, init_head_from_probe, linear_probe, load_model, make_head
from mezo_ray.models.baselines import icl_evaluate
from mezo_ray.models.loading import DTYPES, ModelSpec
from mezo_ray.models.modes import merge_lora_and_restart
from mezo_ray.models.tiny import ensure_tiny_models
from mezo_ray.tasks import Example, load_pool, load_splits
from mezo_ray.train import checkpoint as ckpt
from mezo_ray.train.config import TINY_MODELS, TrialConfig
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
from mezo_ray.zo import MeZO, NonFiniteLossError, ZeroOrderOptimizer, mix_seed, saved_setting


def run_trial(cfg: TrialConfig, session: Session) -> dict[str, Any]:
    """Run one trial; returns the final metrics (also reported with ``done: true``)."""
    tracked = [ckpt.Progress()]  # whose step the memory log notes: the trial's, once restored
    where = os.path.join(session.log_dir, f"memory-rank{session.rank}.csv") if session.log_dir else None
    with memory_log(where, cfg.memory_log_every_s, lambda: tracked[0].step):
        return _run_trial(cfg, session, tracked)


def _run_trial(cfg: TrialConfig, session: Session, tracked: list[ckpt.Progress]) -> dict[str, Any]:
    rank, world = session.rank, session.world_size
    transformers.utils.logging.disable_progress_bar()  # one bar per model load floods trial logs
    device = _device(cfg)
    torch.manual_seed(cfg.training_seed)

    # 1. Data and model
    task = cfg.resolved_task()
    splits = load_splits(task, cfg.data_spec())
    cfg = cfg.with_train_size(len(splits.train))  # a length in epochs becomes steps
    dev, test = _cap(splits.dev, cfg), _cap(splits.test, cfg)
    if cfg.method in ("zero_shot", "icl", "lp"):
        return _run_baseline(
            cfg, load_model(_model_spec(cfg, device)), splits.train, dev, test, session, device
        )
    with session.latest_checkpoint() as resume_dir:
        resumed = ckpt.load(resume_dir, rank)
    if resumed and FAILURE_KEY in resumed.progress.last_metrics:  # a retry after a non-finite stop (Tune
        # retries every error, a lost node's too): the same seeds would give the same losses; fail at once
        raise NonFiniteLossError(resumed.progress.last_metrics[FAILURE_KEY])
    check_noise_agrees(device)  # before the model: a mismatched cluster fails at once
    loaded = load_model(_model_spec(cfg, device))
    if cfg.fsdp:
        shard_model(loaded, device)
    head = _make_head(cfg, task, loaded)
    if cfg.lp_init:  # before a resume: a snapshot's weights then override it, a replay starts from it
        init_head_from_probe(linear_probe(head, splits.train, early_stopping=True))
    if cfg.fsdp:
        head.lm_head = loaded.fsdp_root.project
    params = loaded.trainable_named_parameters()
    optimizer = _build_optimizer(cfg, params, len(splits.train), _saved(resumed, "stochastic_rounding"))
    low_precision = any(p.dtype in (torch.bfloat16, torch.float16) for _, p in params)
    if cfg.method == "mezo" and cfg.placement(low_precision, _saved(resumed, "perturbation")) == "forward":
        optimizer.perturb_in_forward(loaded.model)  # before a resume: the state dict records it
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.method == "ft" and cfg.dtype == "float16")

    # 2. Resume: the weight snapshot, then a replay of the seed log since it
    progress, best_weights = ckpt.restore(
        resumed, session, params, optimizer, cfg.selection, after_step=lambda step: _boost(cfg, loaded, step)
    )
    tracked[0] = progress

    # 3. The loop
    clock, steps_at_clock = time.perf_counter(), progress.step
    for step in range(progress.step + 1, cfg.max_steps + 1):
        if _out_of_budget(cfg, optimizer, step - 1):
            break
        batch = batch_at(splits.train, step, cfg)
        _set_lr(optimizer, cfg, step)
        loss = _train_step(cfg, optimizer, scaler, head, batch, step, rank, world, device)
        _boost(cfg, loaded, step)
        progress.step = step
        try:
            _count_loss(cfg, progress, loss, step)
        except NonFiniteLossError as err:  # the reason goes in the trial's results, then the trial fails
            progress.last_metrics = _failure_metrics(progress, optimizer, step, str(err))
            ckpt.write(session, cfg, progress, optimizer, params, best_weights)
            raise
        if step % cfg.eval_steps and step != cfg.max_steps and not _out_of_budget(cfg, optimizer, step):
            continue
        steps_per_s = (step - steps_at_clock) / (time.perf_counter() - clock)
        best_weights = _evaluate_and_report(
            cfg, session, head, dev, optimizer, params, progress, best_weights, steps_per_s, device
        )
        clock, steps_at_clock = time.perf_counter(), step

    # 4. The test metric of the selected (best-dev) weights
    if best_weights is not None:
        ckpt.copy_into(params, best_weights, "best weights")
    test_acc, _ = evaluate(head, test, cfg, rank, world, device)
    final = {
        **progress.last_metrics,
        "dev_acc": progress.best_dev_acc,  # of the selected checkpoint
        "dev_loss": progress.best_dev_loss,
        "test_acc": test_acc,
        "selected_step": progress.best_step,
        "selection": cfg.selection,
        "peak_mem_bytes": peak_memory_bytes(device),
        "done": True,
    }
    session.report(final, None)
    return final


def _evaluate_and_report(
    cfg: TrialConfig,
    session: Session,
    head: Any,
    dev: list[Example],
    optimizer: torch.optim.Optimizer,
    params: list[tuple[str, torch.nn.Parameter]],
    progress: ckpt.Progress,
    best_weights: dict[str, torch.Tensor] | None,
    steps_per_s: float,
    device: torch.device,
) -> dict[str, torch.Tensor] | None:
    """Evaluate on dev, keep the weights the selection rule picks, report with a checkpoint; returns
    the selected weights (None: the current ones, or not kept)."""
    rank, world, step = session.rank, session.world_size, progress.step
    with _autocast(cfg, device) if cfg.method == "ft" else contextlib.nullcontext():
        # FT's dev loss, which selects its checkpoint, in its training precision: HF's prediction_step
        # under the paper's --fp16. Test scores stay float32, as the paper's run.py scored test.
        dev_acc, dev_loss = evaluate(head, dev, cfg, rank, world, device)
    progress.max_dev_acc = max(progress.max_dev_acc, dev_acc)
    if _improves(cfg, dev_acc, dev_loss, progress):
        progress.best_dev_acc, progress.best_dev_loss, progress.best_step = dev_acc, dev_loss, step
        best_weights = None if cfg.selection == "final" else ckpt.trainable_copy(params)
    progress.last_metrics = {
        "step": step,
        "forward_passes": forward_passes(optimizer, step),
        "dev_acc": dev_acc,
        "best_dev_acc": progress.max_dev_acc,
        "dev_loss": dev_loss,
        "train_loss": progress.train_loss_sum / max(progress.train_loss_count, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "eps": cfg.eps if cfg.method == "mezo" else 0.0,
        "peak_mem_bytes": peak_memory_bytes(device),
        "steps_per_s": steps_per_s,
        "nonfinite_steps": progress.nonfinite_steps,
        "optimizer_state_multiple": optimizer_state_multiple(optimizer),
    }
    progress.train_loss_sum, progress.train_loss_count = 0.0, 0
    if rank == 0:  # the trial's log: Tune shows it in the terminal and keeps it per trial
        label = f"{cfg.task} {method_name(cfg.method, cfg.estimator)} lr={cfg.lr:g}"
        print(progress_line(label, progress.last_metrics, cfg.max_steps), flush=True)
    ckpt.write(session, cfg, progress, optimizer, params, best_weights)
    return best_weights


# ----------------------------------------------------------------------------------------------------
# One training step
def _train_step(
    cfg: TrialConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    head: Any,
    batch: list[Example],
    step: int,
    rank: int,
    world: int,
    device: torch.device,
) -> float:
    """One MeZO step (two forwards per perturbation) or one backprop + AdamW step; returns the loss,
    the same on every worker (a non-finite FT loss skips the update on all of them)."""
    local = rank_shard(batch, rank, world)
    forwards = _forwards_per_loss(cfg, len(batch), world)
    if cfg.method == "mezo":
        return optimizer.step(lambda: batch_loss(head, local, batch[0], forwards, cfg, device))
    torch.manual_seed(mix_seed(cfg.training_seed, step))  # dropout masks as a function of the step
    head.loaded.model.train()
    try:
        with _autocast(cfg, device):
            total, count = batch_loss_terms(head, local, batch[0], forwards, cfg)
        (count,) = all_reduce_sums([count], device)
        if torch.is_tensor(total):  # an empty data-parallel shard has nothing to backprop
            # the gradient of the mean over the whole batch, whatever each worker's share of it;
            # FSDP averages over the workers when it reduces, hence the factor
            scale = world / count if cfg.fsdp else 1 / count
            scaler.scale(total * scale).backward()
            total = total.detach()
        (loss_sum,) = all_reduce_sums([float(total)], device)
        loss = loss_sum / count
        if not math.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            return loss
        if is_distributed() and not cfg.fsdp:
            _sum_gradients(optimizer)
        scaler.unscale_(optimizer)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(_all_params(optimizer), cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    finally:
        head.loaded.model.eval()
    return loss


def _boost(cfg: TrialConfig, loaded: Any, step: int) -> None:
    """XGBLoRA: after every ``xgblora_steps_per_iteration``-th step (not the last), fold LoRA into the
    base weights and start a fresh adapter, seeded by the step (a replay redoes it identically)."""
    every = cfg.xgblora_steps_per_iteration
    if every and step % every == 0 and step < cfg.max_steps:
        merge_lora_and_restart(loaded.model, mix_seed(cfg.training_seed, step, 0xB0057))


def batch_loss(
    head: Any, local: list[Example], filler: Example, forwards: int, cfg: TrialConfig, device: torch.device
) -> float:
    """The mean loss (or -metric) over the whole batch: each worker scores its shard, and only the
    (sum, count) scalars cross the wire."""
    if cfg.objective == "metric":
        predictions = head.predict(local) if local else []
        scores = [head.task.score([p], [ex]) for p, ex in zip(predictions, local, strict=True)]
        total, count = all_reduce_sums([-sum(scores), len(local)], device)
        return total / count
    total, count = batch_loss_terms(head, local, filler, forwards, cfg)
    total, count = all_reduce_sums([float(total), count], device)
    if cfg.arithmetic == "model":  # the paper's fp16 runs took the mean loss in the model's dtype
        return torch.tensor(total / count, dtype=DTYPES[cfg.dtype]).item()
    return total / count


def batch_loss_terms(
    head: Any, local: list[Example], filler: Example, forwards: int, cfg: TrialConfig
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
        elif cfg.fsdp:
            total = total + 0.0 * head.loss_terms([filler])[0]
    return total, count


def _forwards_per_loss(cfg: TrialConfig, batch_size: int, world: int) -> int:
    """Forward passes per loss evaluation: one per micro-batch of the largest worker shard."""
    largest_shard = math.ceil(batch_size / world)
    return math.ceil(largest_shard / cfg.micro_batch_size) if cfg.micro_batch_size else 1


def batch_at(train: list[Example], step: int, cfg: TrialConfig) -> list[Example]:
    """The batch of step ``step`` (1-based): epochs are seeded shuffles, the last batch of an epoch may
    be short (the paper's RandomSampler with drop_last=False). A pure function of (seed, step)."""
    n = len(train)
    per_epoch = math.ceil(n / cfg.batch_size)
    epoch, index = divmod(step - 1, per_epoch)
    g = torch.Generator().manual_seed(mix_seed(cfg.training_seed, epoch, 0xBA7C))
    order = torch.randperm(n, generator=g)[index * cfg.batch_size : (index + 1) * cfg.batch_size]
    return [train[i] for i in order.tolist()]


def optimizer_state_multiple(optimizer: torch.optim.Optimizer) -> float:
    """The optimizer's state in multiples of the trainable parameters: MeZO's update rule's (0 for
    the paper's SGD), AdamW's 2 for the first-order baseline (whose gradients add 1 more)."""
    return optimizer.state_multiple if isinstance(optimizer, ZeroOrderOptimizer) else 2


def forward_passes(optimizer: torch.optim.Optimizer, step: int) -> int:
    return optimizer.forward_passes if isinstance(optimizer, ZeroOrderOptimizer) else step


def _out_of_budget(cfg: TrialConfig, optimizer: torch.optim.Optimizer, step: int) -> bool:
    return bool(cfg.max_forward_passes) and forward_passes(optimizer, step) >= cfg.max_forward_passes


def _count_loss(cfg: TrialConfig, progress: ckpt.Progress, loss: float, step: int) -> None:
    if math.isfinite(loss):
        progress.train_loss_sum += loss
        progress.train_loss_count += 1
        progress.consecutive_nonfinite = 0
        return
    progress.nonfinite_steps += 1
    progress.consecutive_nonfinite += 1
    if progress.consecutive_nonfinite >= cfg.nonfinite_patience:
        raise NonFiniteLossError(
            f"the training loss was non-finite {progress.consecutive_nonfinite} times in a row (at step "
            f"{step}); the trial stops instead of training on (nonfinite_patience={cfg.nonfinite_patience}). "
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


# ----------------------------------------------------------------------------------------------------
# Evaluation
@torch.no_grad()
def evaluate(
    head: Any, examples: list[Example], cfg: TrialConfig, rank: int, world: int, device: torch.device
) -> tuple[float, float]:
    """(metric, loss) over ``examples``, each worker scoring its shard; with FSDP every worker runs
    the same number of forwards (the collectives inside them must pair up)."""
    shard = rank_shard(examples, rank, world)
    metric_sum, loss_sum, batches = 0.0, 0.0, 0
    for start in range(0, len(shard), cfg.eval_batch_size):
        chunk = shard[start : start + cfg.eval_batch_size]
        result = head.evaluate(chunk, batch_size=len(chunk))
        metric_sum += result["metric"] * len(chunk)
        loss_sum += result["loss"] * len(chunk)
        batches += 1
    if cfg.fsdp:  # pad this worker's forwards up to the longest shard's
        longest = math.ceil(math.ceil(len(examples) / world) / cfg.eval_batch_size)
        for _ in range(longest - batches):
            head.evaluate(examples[:1], batch_size=1)
    metric_sum, loss_sum, n = all_reduce_sums([metric_sum, loss_sum, len(shard)], device)
    return metric_sum / n, loss_sum / n


def _improves(cfg: TrialConfig, dev_acc: float, dev_loss: float, progress: ckpt.Progress) -> bool:
    if cfg.selection == "final":  # every evaluation: the last one is of the weights tested at the end
        return True
    if cfg.selection == "dev_loss":
        return dev_loss < progress.best_dev_loss
    return dev_acc > progress.best_dev_acc


# ----------------------------------------------------------------------------------------------------
# Baselines without training
def _make_head(cfg: TrialConfig, task: Any, loaded: Any) -> Any:
    """The task's head on the model, generating answers the way ``cfg.answer_end`` says."""
    head = make_head(task, loaded)
    if isinstance(head, CausalLMHead):
        head.answer_end = cfg.answer_end
    return head


def _run_baseline(
    cfg: TrialConfig,
    loaded: Any,
    train: list[Example],
    dev: list[Example],
    test: list[Example],
    session: Session,
    device: torch.device,
) -> dict[str, Any]:
    head = _make_head(cfg, cfg.resolved_task(), loaded)
    if cfg.method == "icl":  # demonstrations from the whole train split, as the paper drew them
        pool = load_pool(head.task, cfg.data_spec()).train
        dev_result = icl_evaluate(head, dev, pool, num_demos=cfg.icl_demos, seed=0)
        test_result = icl_evaluate(head, test, pool, num_demos=cfg.icl_demos, seed=0)
        dev_acc, dev_loss, test_acc = dev_result["metric"], dev_result["loss"], test_result["metric"]
    else:
        if cfg.method == "lp":  # as the paper's codes tested a probe: written into the head, then scored
            init_head_from_probe(linear_probe(head, train))
        dev_acc, dev_loss = evaluate(head, dev, cfg, session.rank, session.world_size, device)
        test_acc, _ = evaluate(head, test, cfg, session.rank, session.world_size, device)
    final = {
        "step": 0,
        "forward_passes": 0,
        "dev_acc": dev_acc,
        "best_dev_acc": dev_acc,
        "dev_loss": dev_loss,
        "test_acc": test_acc,
        "selected_step": 0,
        "selection": cfg.selection,
        "peak_mem_bytes": peak_memory_bytes(device),
        "nonfinite_steps": 0,
        "done": True,
    }
    session.report(final, None)
    return final


# ----------------------------------------------------------------------------------------------------
# Setup helpers
def _device(cfg: TrialConfig) -> torch.device:
    if cfg.gpus_per_worker > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(f"gpus_per_worker={cfg.gpus_per_worker} but this worker sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _model_spec(cfg: TrialConfig, device: torch.device) -> ModelSpec:
    path = cfg.model
    if path in TINY_MODELS:
        tiny = ensure_tiny_models()
        path = tiny.mlm if TINY_MODELS[path] == "mlm" else tiny.causal
    return ModelSpec(
        name_or_path=path,
        family=cfg.family if cfg.prompt else "seq_cls",
        num_labels=None if cfg.prompt else len(cfg.resolved_task().class_names),
        dtype="float32" if cfg.method == "ft" else cfg.dtype,  # FT: fp32 weights, autocast (as --fp16)
        mode=PUBLISHED_LORA[cfg.method] if cfg.mode == "lora_as_published" else cfg.mode,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        num_prefix=cfg.num_prefix,
        trust_remote_code=cfg.trust_remote_code,
        device=str(device),
        init_seed=cfg.training_seed,
        opt_bos_quirk=cfg.model not in TINY_MODELS,  # the tiny OPT was pretrained with its own BOS
        arithmetic=cfg.arithmetic,
    )


#: What the paper's RoBERTa code trained with --apply_lora (models/modes.py): loralib's merge on eval()
#: left MeZO the LM head alone; FT steps call train(), which unmerges, so FT trained LoRA too.
PUBLISHED_LORA = {"mezo": "lm_head", "ft": "lora+lm_head"}


def _autocast(cfg: TrialConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[cfg.dtype])


def _cap(examples: list[Example], cfg: TrialConfig) -> list[Example]:
    return examples[: cfg.max_eval_examples] if cfg.max_eval_examples else examples


def _saved(resumed: ckpt.Checkpoint | None, key: str) -> Any:
    """A MeZO setting of the run being resumed, for settings the config leaves unset (None: a new
    run, or not MeZO)."""
    extra = (resumed.optimizer or {}).get("mezo") if resumed is not None else None
    return None if extra is None else saved_setting(extra, key)


def _build_optimizer(
    cfg: TrialConfig,
    params: list[tuple[str, torch.nn.Parameter]],
    num_train: int,
    saved_rounding: bool | None = None,
) -> torch.optim.Optimizer:
    if cfg.method == "mezo":
        rounding = cfg.stochastic_rounding if cfg.stochastic_rounding is not None else saved_rounding
        common = {"lr": cfg.lr, "eps": cfg.eps, "seed": cfg.training_seed, "stochastic_rounding": rounding}
        if cfg.estimator in ESTIMATORS:  # its own settings, from the registry
            return ESTIMATORS[cfg.estimator].build(params, cfg.model_dump(), **common)
        steps_per_epoch = math.ceil(num_train / cfg.batch_size)
        return MeZO(
            params,
            **common,
            weight_decay=cfg.weight_decay,
            variant=cfg.zo_variant,
            momentum=cfg.momentum,
            n_perturbations=cfg.n_perturbations,
            perturbation_schedule=cfg.perturbation_schedule,
            max_steps=cfg.max_steps,
            layer_wise=cfg.layer_wise,
            scale=cfg.perturbation_scale,
            estimate=cfg.scale_estimate,
            rescale_every=steps_per_epoch if cfg.recompute_norms else None,
        )
    decay = [p for n, p in params if "bias" not in n.lower() and "norm" not in n.lower()]
    rest = [p for n, p in params if "bias" in n.lower() or "norm" in n.lower()]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
    )


def _set_lr(optimizer: torch.optim.Optimizer, cfg: TrialConfig, step: int) -> None:
    """Constant, or linear decay to 0 over max_steps (HF's schedule without warm-up)."""
    lr = cfg.lr if cfg.lr_schedule == "constant" else cfg.lr * (cfg.max_steps - (step - 1)) / cfg.max_steps
    for group in optimizer.param_groups:
        group["lr"] = lr


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


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
# Checkpoints
