"""The trial recipe: one validated ``TrialConfig`` -> task data and model -> MeZO steps -> reports.

Read it top to bottom: ``run_trial`` is the whole trial.

Features and the flags that control them:
- MeZO (``method=mezo``): ZO-SGD / momentum / Adam / sign (``zo_variant``), n-SPSA
  (``n_perturbations``, ``perturbation_schedule``), constant or linear LR (``lr_schedule``),
  ``micro_batch_size`` (the loss at each +-eps point is averaged over micro-batches: a batch of 64 at
  the memory of the micro-batch), a forward-pass budget (``max_forward_passes``), and
  non-differentiable objectives (``objective=metric`` minimises -accuracy / -F1).
- The first-order baseline (``method=ft``): AdamW + backprop, linear decay, grad clipping, dropout on.
- Baselines without training: ``zero_shot``, ``icl`` (causal family), ``lp`` (linear probing).
- Data parallel across the trial's workers (``num_workers``): losses are all-reduced, every rank
  applies the same update; FSDP2 (``fsdp=true``) also shards the weights.
- Every ``eval_steps``: dev evaluation and a report (dev_acc, best_dev_acc, dev_loss, train_loss,
  step, forward_passes, lr, eps, peak memory, steps/s) with a small checkpoint (seed log + periodic
  safetensors snapshots, ``snapshot_every_evals``); a restarted worker resumes the same trajectory.
- At the end: the test metric of the best-dev weights (``selection``: dev_acc, or dev_loss as the
  paper's OPT code did), reported with ``done: true``.

Errors: ``NonFiniteLossError`` when the loss is non-finite ``nonfinite_patience`` times in a row.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
import time
from typing import Any

import torch
import transformers

from mezo_ray.models import linear_probe, load_model, make_head
from mezo_ray.models.baselines import icl_evaluate
from mezo_ray.models.loading import LoadedModel, ModelSpec
from mezo_ray.models.tiny import ensure_tiny_models
from mezo_ray.tasks import Example, Splits, Task, load_splits
from mezo_ray.train import checkpoint as ckpt
from mezo_ray.train.config import TINY_MODELS, TrialConfig
from mezo_ray.train.distributed import all_reduce_sums, is_distributed, rank_shard, shard_model
from mezo_ray.train.session import Session
from mezo_ray.zo import MeZO, NonFiniteLossError, StepRecord, mix_seed


def run_trial(cfg: TrialConfig, session: Session) -> dict[str, Any]:
    """Run one trial; returns the final metrics (also reported with ``done: true``)."""
    rank, world = session.rank, session.world_size
    transformers.utils.logging.disable_progress_bar()  # one bar per model load floods trial logs
    device = _device(cfg)
    torch.manual_seed(cfg.training_seed)

    # 1. Data and model
    task = cfg.resolved_task()
    splits = load_splits(task, cfg.data_spec())
    dev, test = _cap(splits.dev, cfg), _cap(splits.test, cfg)
    loaded = load_model(_model_spec(cfg, device))
    if cfg.method in ("zero_shot", "icl", "lp"):
        return _run_baseline(cfg, task, loaded, splits, dev, test, session)

    # 2. Resume from the last checkpoint: its weights, or a replay of its seed log from the base model
    with session.latest_checkpoint() as resume_dir:
        progress, trajectory, snapshot, best_weights = _restore(resume_dir, rank)
    if cfg.fsdp:
        shard_model(loaded, device)
    head = make_head(task, loaded)
    if cfg.fsdp:
        head.lm_head = loaded.fsdp_root.project
    params = loaded.trainable_named_parameters()
    optimizer = _build_optimizer(cfg, params)
    if snapshot is not None:
        ckpt.copy_into(params, snapshot, "snapshot")
        _load_optimizer_state(optimizer, params, snapshot)
        optimizer_counters(optimizer, progress.optimizer)
    for record in trajectory:  # bit-exact: the same sweeps as the original steps
        optimizer.apply_record(record)
        if record.step + 1 == progress.best_step:
            best_weights = _trainable_copy(params)

    # 3. The loop
    clock, steps_at_clock = time.perf_counter(), progress.step
    for step in range(progress.step + 1, cfg.max_steps + 1):
        batch = rank_shard(batch_at(splits.train, step, cfg), rank, world)
        _set_lr(optimizer, cfg, step)
        loss = _train_step(cfg, optimizer, head, batch, step, device)
        progress.step = step
        if math.isfinite(loss):
            progress.train_loss_sum += loss
            progress.train_loss_count += 1
            progress.consecutive_nonfinite = 0
        else:
            progress.consecutive_nonfinite += 1
            if progress.consecutive_nonfinite >= cfg.nonfinite_patience:
                raise NonFiniteLossError(
                    f"the training loss was non-finite {progress.consecutive_nonfinite} times in a row "
                    f"(at step {step}); the trial stops instead of training on (nonfinite_patience="
                    f"{cfg.nonfinite_patience}). Lower lr or eps, or use float32"
                )
        out_of_budget = (
            bool(cfg.max_forward_passes) and forward_passes(optimizer, step) >= cfg.max_forward_passes
        )
        if step % cfg.eval_steps == 0 or step == cfg.max_steps or out_of_budget:
            dev_acc, dev_loss = evaluate(head, dev, cfg, rank, world, device)
            progress.max_dev_acc = max(progress.max_dev_acc, dev_acc)
            if _improves(cfg, dev_acc, dev_loss, progress):
                progress.best_dev_acc, progress.best_dev_loss, progress.best_step = dev_acc, dev_loss, step
                best_weights = _trainable_copy(params)
            elapsed = time.perf_counter() - clock
            metrics = {
                "step": step,
                "forward_passes": forward_passes(optimizer, step),
                "dev_acc": dev_acc,
                "best_dev_acc": progress.max_dev_acc,
                "dev_loss": dev_loss,
                "train_loss": progress.train_loss_sum / max(progress.train_loss_count, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "eps": cfg.eps if cfg.method == "mezo" else 0.0,
                "peak_mem_bytes": peak_memory_bytes(device),
                "steps_per_s": (step - steps_at_clock) / elapsed if elapsed > 0 else 0.0,
                "nonfinite_steps": getattr(optimizer, "nonfinite_steps", 0),
            }
            progress.train_loss_sum, progress.train_loss_count = 0.0, 0
            if rank == 0:  # the trial's log: Tune shows it in the terminal and keeps it per trial
                print(
                    f"[{cfg.task} {cfg.method} lr={cfg.lr:g}] step {step}/{cfg.max_steps} "
                    f"dev_acc {dev_acc:.4f} (best {progress.max_dev_acc:.4f}) dev_loss {dev_loss:.4f} "
                    f"{metrics['steps_per_s']:.2f} steps/s",
                    flush=True,
                )
            with tempfile.TemporaryDirectory(prefix="mezo-ckpt-") as directory:
                _save(directory, cfg, progress, optimizer, params, best_weights, rank, world)
                session.report(metrics, directory)
            clock, steps_at_clock = time.perf_counter(), step
        if out_of_budget:
            break

    # 4. Test metric of the selected (best-dev) weights
    if best_weights is not None:
        ckpt.copy_into(params, best_weights, "best weights")
    test_acc, _ = evaluate(head, test, cfg, rank, world, device)
    final = {
        "step": progress.step,
        "forward_passes": forward_passes(optimizer, progress.step),
        "dev_acc": progress.best_dev_acc,  # of the selected checkpoint
        "best_dev_acc": progress.max_dev_acc,
        "dev_loss": progress.best_dev_loss,
        "test_acc": test_acc,
        "selected_step": progress.best_step,
        "selection": cfg.selection,
        "peak_mem_bytes": peak_memory_bytes(device),
        "nonfinite_steps": getattr(optimizer, "nonfinite_steps", 0),
        "done": True,
    }
    session.report(final, None)
    return final


# ----------------------------------------------------------------------------------------------------
# One training step
def _train_step(
    cfg: TrialConfig,
    optimizer: torch.optim.Optimizer,
    head: Any,
    batch: list[Example],
    step: int,
    device: torch.device,
) -> float:
    """One MeZO step (two forwards per perturbation) or one backprop + AdamW step; returns the loss."""
    if cfg.method == "mezo":
        return optimizer.step(lambda: batch_loss(head, batch, cfg, device))
    torch.manual_seed(mix_seed(cfg.training_seed, step))  # dropout masks as a function of the step
    head.loaded.model.train()
    try:
        loss = batch_loss(head, batch, cfg, device, differentiable=True)
        loss.backward()
        if is_distributed():
            _all_reduce_grads(optimizer)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], cfg.max_grad_norm
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    finally:
        head.loaded.model.eval()
    return float(loss.detach())


def batch_loss(
    head: Any, batch: list[Example], cfg: TrialConfig, device: torch.device, differentiable: bool = False
) -> Any:
    """The mean loss (or -metric) over the whole batch, summed over micro-batches and workers.

    Each worker holds its shard of the batch; only the (sum, count) scalars are all-reduced.
    """
    if cfg.objective == "metric":
        predictions = head.predict(batch)
        total, count = (
            -sum(head.task.score([p], [ex]) for p, ex in zip(predictions, batch, strict=True)),
            len(batch),
        )
        total, count = all_reduce_sums([total, count], device)
        return total / count
    size = cfg.micro_batch_size or max(len(batch), 1)
    total: Any = 0.0
    count = 0
    for start in range(0, len(batch), size):
        s, c = head.loss_terms(batch[start : start + size])
        total = total + (s if differentiable else float(s))
        count += c
    if differentiable:  # backprop: each worker's mean; gradients are averaged instead
        return total / max(count, 1)
    total, count = all_reduce_sums([total, count], device)
    return total / count


def batch_at(train: list[Example], step: int, cfg: TrialConfig) -> list[Example]:
    """The batch of step ``step`` (1-based): epochs are seeded shuffles, the last batch of an epoch may
    be short (the paper's RandomSampler with drop_last=False). A pure function of (seed, step)."""
    n = len(train)
    per_epoch = math.ceil(n / cfg.batch_size)
    epoch, index = divmod(step - 1, per_epoch)
    g = torch.Generator().manual_seed(mix_seed(cfg.training_seed, epoch, 0xBA7C))
    order = torch.randperm(n, generator=g)[index * cfg.batch_size : (index + 1) * cfg.batch_size]
    return [train[i] for i in order.tolist()]


def forward_passes(optimizer: torch.optim.Optimizer, step: int) -> int:
    return optimizer.forward_passes if isinstance(optimizer, MeZO) else step


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
    if cfg.selection == "dev_loss":
        return dev_loss < progress.best_dev_loss
    return dev_acc > progress.best_dev_acc


# ----------------------------------------------------------------------------------------------------
# Baselines without training
def _run_baseline(
    cfg: TrialConfig,
    task: Task,
    loaded: LoadedModel,
    splits: Splits,
    dev: list[Example],
    test: list[Example],
    session: Session,
) -> dict[str, Any]:
    head = make_head(task, loaded)
    device = loaded.device
    if cfg.method == "zero_shot":
        dev_acc, dev_loss = evaluate(head, dev, cfg, session.rank, session.world_size, device)
        test_acc, _ = evaluate(head, test, cfg, session.rank, session.world_size, device)
    elif cfg.method == "icl":
        dev_result = icl_evaluate(head, dev, splits.train, num_demos=cfg.icl_demos, seed=0)
        test_result = icl_evaluate(head, test, splits.train, num_demos=cfg.icl_demos, seed=0)
        dev_acc, dev_loss, test_acc = dev_result["metric"], dev_result["loss"], test_result["metric"]
    else:
        probe = linear_probe(head, splits.train)
        dev_result = probe.evaluate(dev)
        dev_acc, dev_loss, test_acc = dev_result["metric"], float("nan"), probe.evaluate(test)["metric"]
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
        family=cfg.family,
        dtype=cfg.dtype,
        mode=cfg.mode,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        num_prefix=cfg.num_prefix,
        trust_remote_code=cfg.trust_remote_code,
        device=str(device),
        init_seed=cfg.training_seed,
    )


def _cap(examples: list[Example], cfg: TrialConfig) -> list[Example]:
    return examples[: cfg.max_eval_examples] if cfg.max_eval_examples else examples


def _build_optimizer(cfg: TrialConfig, params: list[tuple[str, torch.nn.Parameter]]) -> torch.optim.Optimizer:
    if cfg.method == "mezo":
        return MeZO(
            params,
            lr=cfg.lr,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            variant=cfg.zo_variant,
            momentum=cfg.momentum,
            n_perturbations=cfg.n_perturbations,
            perturbation_schedule=cfg.perturbation_schedule,
            max_steps=cfg.max_steps,
            seed=cfg.training_seed,
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
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _all_reduce_grads(optimizer: torch.optim.Optimizer) -> None:
    """Average gradients over the workers (first-order baseline without DDP)."""
    import torch.distributed as dist

    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and not hasattr(p.grad, "to_local"):
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()


# ----------------------------------------------------------------------------------------------------
# Checkpoints
def _trainable_copy(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {n: ckpt.local_tensor(p).detach().to("cpu", copy=True) for n, p in params}


def optimizer_counters(optimizer: torch.optim.Optimizer, counters: dict[str, Any]) -> dict[str, Any]:
    """Restore the optimizer's counters from ``counters`` (when given) and return the current ones."""
    if not isinstance(optimizer, MeZO):
        return {}
    names = ("step_count", "update_count", "forward_passes", "nonfinite_steps")
    for name in names:
        if name in counters:
            setattr(optimizer, name, counters[name])
    return {name: getattr(optimizer, name) for name in names}


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer, params: list[tuple[str, torch.nn.Parameter]]
) -> dict:
    out = {}
    for name, p in params:
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                out[f"optimizer/{name}/{key}"] = ckpt.local_tensor(value)
    return out


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, params: list[tuple[str, torch.nn.Parameter]], tensors: dict
) -> None:
    for name, p in params:
        prefix = f"optimizer/{name}/"
        state = {
            k[len(prefix) :]: v.to(ckpt.local_tensor(p).device)
            for k, v in tensors.items()
            if k.startswith(prefix)
        }
        if state:
            optimizer.state[p].update(state)


def _save(
    directory: str,
    cfg: TrialConfig,
    progress: ckpt.Progress,
    optimizer: torch.optim.Optimizer,
    params: list[tuple[str, torch.nn.Parameter]],
    best_weights: dict | None,
    rank: int,
    world: int,
) -> None:
    """Write a checkpoint: the trainable weights (and optimizer state) now, or MeZO's seed log."""
    progress.world_size, progress.fsdp = world, cfg.fsdp
    if cfg.method == "mezo" and cfg.checkpoint_mode == "seed_log":
        progress.snapshot_step, progress.optimizer = 0, {}
        ckpt.save(directory, progress, optimizer.trajectory, None, None, rank, writes_weights=False)
        return
    progress.snapshot_step, progress.optimizer = progress.step, optimizer_counters(optimizer, {})
    snapshot = {**{n: ckpt.local_tensor(p) for n, p in params}, **_optimizer_tensors(optimizer, params)}
    best = best_weights if progress.best_step != progress.step else None
    if isinstance(optimizer, MeZO):
        optimizer.trajectory.clear()  # the weights are saved; the log is not needed to resume
    ckpt.save(directory, progress, [], snapshot, best, rank, writes_weights=cfg.fsdp or rank == 0)


def _restore(
    directory: str | None, rank: int
) -> tuple[ckpt.Progress, list[StepRecord], dict | None, dict | None]:
    """(progress, seed log to replay, snapshot tensors, best-dev weights) of a checkpoint folder."""
    if directory is None or not os.path.exists(os.path.join(directory, ckpt.STATE_FILE)):
        return ckpt.Progress(), [], None, None
    progress, trajectory = ckpt.load_state(directory)
    shard_rank = rank if progress.fsdp else 0
    snapshot = ckpt.load_tensors(directory, "snapshot", shard_rank)
    best = ckpt.load_tensors(directory, "best", shard_rank)
    if best is None and snapshot is not None and progress.best_step == progress.snapshot_step:
        best = {k: v for k, v in snapshot.items() if not k.startswith("optimizer/")}
    return progress, trajectory, snapshot, best
