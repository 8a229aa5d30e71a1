"""The trial recipe without Ray: reports, resume, budgets, faults, and data-parallel / FSDP parity."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mezo_ray.train import recipe
from mezo_ray.train.config import parse_trial_config
from mezo_ray.train.recipe import run_trial
from mezo_ray.train.session import RAY_TRAIN_STATE_FILE, LocalSession, salvage_train_run
from mezo_ray.zo import NonFiniteLossError

SMOKE = {
    "model": "tiny-mlm",
    "task": "synthetic-sst2",
    "k": 16,
    "data_seed": 13,
    "batch_size": 16,
    "max_steps": 8,
    "eval_steps": 4,
    "max_eval_examples": 32,
    "num_workers": 0,
    "lr": 1e-3,
}
REPORT_KEYS = {
    "step",
    "forward_passes",
    "dev_acc",
    "best_dev_acc",
    "dev_loss",
    "train_loss",
    "lr",
    "eps",
    "peak_mem_bytes",
    "steps_per_s",
    "nonfinite_steps",
    "optimizer_state_multiple",
}


def trial(tmp_path, resume_from=None, **changes):
    session = LocalSession(str(tmp_path / f"ckpt-{len(os.listdir(tmp_path))}"), resume_from=resume_from)
    final = run_trial(parse_trial_config({**SMOKE, **changes}), session)
    return final, session


def same_run(metrics: dict) -> dict:
    """Metrics that must be equal between an uninterrupted and a resumed run (not speed or RSS)."""
    return {k: v for k, v in metrics.items() if k not in ("steps_per_s", "peak_mem_bytes")}


def snapshot(path: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(path, "snapshot-rank0.safetensors"))


def test_mezo_trial_reports_every_eval_then_the_test_metric(tiny_models, tmp_path):
    final, session = trial(tmp_path)
    evals, last = session.reports[:-1], session.reports[-1]
    assert [r["step"] for r in evals] == [4, 8] and all(set(r) >= REPORT_KEYS for r in evals)
    assert [r["forward_passes"] for r in evals] == [8, 16]  # two forwards per step
    assert last["done"] is True and last == final and 0.0 <= last["test_acc"] <= 1.0
    assert set(last) >= REPORT_KEYS  # the final report keeps every metric of the last evaluation
    assert last["best_dev_acc"] == max(r["dev_acc"] for r in evals)
    assert last["selected_step"] in (4, 8) and len(session.checkpoints) == 2


WEIGHTS = {"checkpoint_mode": "weights"}


@pytest.mark.parametrize(
    "changes",
    [
        WEIGHTS,
        {**WEIGHTS, "zo_variant": "adam"},
        {"snapshot_every": None},
        {"zo_variant": "adam"},
        {"method": "ft"},
    ],
    ids=["weights", "weights-adam", "seed-log-from-base", "seed-log-adam", "ft"],
)
def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_trial(tiny_models, tmp_path, changes):
    straight, whole = trial(tmp_path, **changes)
    resumed, rest = trial(tmp_path, resume_from=whole.checkpoints[0], **changes)  # as if killed after step 4
    assert [r["step"] for r in rest.reports[:-1]] == [8]
    assert same_run(rest.reports[0]) == same_run(whole.reports[1])
    assert same_run(resumed) == same_run(straight)
    if changes in (WEIGHTS, {"method": "ft"}):
        a, b = snapshot(whole.checkpoints[1]), snapshot(rest.checkpoints[0])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_a_seed_log_resumes_from_the_snapshot_in_another_checkpoint(tiny_models, tmp_path, variant):
    changes = {"max_steps": 12, "eval_steps": 2, "snapshot_every": 2, "zo_variant": variant, "lr": 1e-2}
    straight, whole = trial(tmp_path, **changes)
    files = [sorted(os.listdir(c)) for c in whole.checkpoints]  # steps 2, 4, ..., 12; weights at 4, 8, 12
    assert [len(f) > 1 for f in files] == [False, True, False, True, False, True]
    resumed, rest = trial(tmp_path, resume_from=whole.checkpoints[2], **changes)  # step 6: log since 4
    assert [r["step"] for r in rest.reports[:-1]] == [8, 10, 12]
    assert same_run(resumed) == same_run(straight)  # test_acc too: the best-dev weights came back
    a, b = snapshot(whole.checkpoints[-1]), snapshot(rest.checkpoints[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shutil.rmtree(whole.checkpoints[1])  # the snapshot lost: say so, never train from the wrong weights
    with pytest.raises(FileNotFoundError, match="holds the weights of step 4"):
        trial(tmp_path, resume_from=whole.checkpoints[2], **changes)


def test_a_train_run_left_unreadable_by_a_kill_resumes_from_its_last_complete_checkpoint(
    tiny_models, tmp_path
):
    changes = {"max_steps": 12, "eval_steps": 2, "snapshot_every": 2}
    run = tmp_path / "storage" / "train-x"  # laid out as Ray Train's run folder
    straight, whole = trial(tmp_path, **changes)
    assert salvage_train_run(str(tmp_path / "storage"), "train-x") is None  # no run there yet
    shutil.copytree(os.path.dirname(whole.checkpoints[0]), run)
    state = run / RAY_TRAIN_STATE_FILE
    state.write_text('{"ray_version": "2.60.0"}')
    assert salvage_train_run(str(tmp_path / "storage"), "train-x") is None and state.exists()  # readable
    state.write_text("")  # the driver killed while Ray rewrote it
    assert salvage_train_run(str(tmp_path / "storage"), "train-x") == str(run / "checkpoint_000005")
    assert not state.exists() and (run / f"{RAY_TRAIN_STATE_FILE}.unreadable").exists()  # kept aside
    # the last upload cut short (its weights half written): the seed log before it is the one to use
    weights = run / "checkpoint_000005" / "snapshot-rank0.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    state.write_text("")
    resume_from = salvage_train_run(str(tmp_path / "storage"), "train-x")
    assert resume_from == str(run / "checkpoint_000004")  # step 10: the log since the weights of step 8
    resumed, rest = trial(tmp_path, resume_from=resume_from, **changes)
    assert [r["step"] for r in rest.reports[:-1]] == [12] and same_run(resumed) == same_run(straight)
    weights.unlink()  # state.json says it holds weights, the folder has none
    state.write_text("")
    assert salvage_train_run(str(tmp_path / "storage"), "train-x") == str(run / "checkpoint_000004")


def test_seed_log_checkpoints_hold_no_weights(tiny_models, tmp_path):
    _, session = trial(tmp_path, checkpoint_mode="seed_log")
    files = sorted(os.listdir(session.checkpoints[-1]))
    assert files == ["state.json"]
    assert os.path.getsize(os.path.join(session.checkpoints[-1], "state.json")) < 10_000


def test_forward_pass_budget_ends_the_trial(tiny_models, tmp_path):
    final, _ = trial(tmp_path, max_steps=100, eval_steps=50, max_forward_passes=10)
    assert final["forward_passes"] == 10 and final["step"] == 5


def test_resume_at_the_forward_pass_budget_runs_no_further_step(tiny_models, tmp_path):
    budget = {"max_steps": 100, "eval_steps": 4, "max_forward_passes": 16}
    straight, whole = trial(tmp_path, **budget)
    resumed, rest = trial(tmp_path, resume_from=whole.checkpoints[-1], **budget)
    assert straight["step"] == 8 and len(rest.reports) == 1  # only the final report
    assert same_run(resumed) == same_run(straight)


@pytest.mark.parametrize("method", ["mezo", "ft"])
def test_non_finite_losses_fail_the_trial_after_the_patience(tiny_models, tmp_path, monkeypatch, method):
    def nan_terms(*args, **kwargs):
        return torch.tensor(math.nan, requires_grad=True), 1

    monkeypatch.setattr(recipe, "batch_loss_terms", nan_terms)
    session = LocalSession(str(tmp_path))
    with pytest.raises(NonFiniteLossError, match="non-finite 3 times in a row"):
        run_trial(parse_trial_config({**SMOKE, "nonfinite_patience": 3, "method": method}), session)
    last = session.reports[-1]  # the reason reaches the trial's results
    assert (last["step"], last["nonfinite_steps"]) == (3, 3) and "non-finite 3 times" in last[
        recipe.FAILURE_KEY
    ]


def test_ft_scores_dev_under_its_training_autocast_and_test_in_float32(tiny_models, tmp_path, monkeypatch):
    """The paper's FT (--fp16) took the dev loss that selects its checkpoint in HF's prediction_step,
    under autocast; its run.py scored test in float32."""
    seen = []

    def evaluate(head, examples, *args):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(head, examples, *args)

    real = recipe.evaluate
    monkeypatch.setattr(recipe, "evaluate", evaluate)
    final, _ = trial(tmp_path, method="ft", dtype="float16", lr=1e-4, max_steps=4, eval_steps=2)
    assert final["done"] and seen == [torch.float16, torch.float16, None]


def test_ft_in_bfloat16_is_mixed_precision_over_float32_weights(tiny_models, tmp_path):
    final, session = trial(tmp_path, method="ft", dtype="bfloat16", lr=1e-4)
    weights = snapshot(session.checkpoints[-1])
    assert final["done"] and all(w.dtype == torch.float32 for w in weights.values())


@pytest.mark.parametrize("method", ["zero_shot", "lp"])
@pytest.mark.parametrize("family", ["mlm", "causal"])
def test_baselines_run_end_to_end_and_score_through_the_prompt_head(tiny_models, tmp_path, method, family):
    """LP too: the probe is written into the head, which then scores dev (with a loss) and test."""
    final, session = trial(tmp_path, method=method, **(CAUSAL if family == "causal" else {}))
    assert final["done"] and 0.0 <= final["test_acc"] <= 1.0 and len(session.reports) == 1
    assert math.isfinite(final["dev_loss"]) and final["dev_loss"] > 0


CAUSAL = {
    "model": "tiny-causal",
    "task": "synthetic-sst2-causal",
    "k": None,
    "num_train": 64,
    "num_dev": 32,
    "num_test": 32,
}


def test_a_length_in_epochs_becomes_steps_from_the_loaded_train_split(tiny_models, tmp_path):
    """k=16 on two classes: 32 train examples, 3 batches of 12 an epoch (the last short), as HF Trainer
    counts them; the mlm split's size is only known once loaded, so max_steps=8 / eval_steps=4 are
    replaced there."""
    final, session = trial(tmp_path, epochs=2, batch_size=12)
    assert [r["step"] for r in session.reports[:-1]] == [3, 6] and final["step"] == 6


def test_final_selection_tests_the_last_weights(tiny_models, tmp_path):
    """The paper's non-differentiable runs test the final model: whatever dev said earlier, the tested
    weights are the last ones (a run that stops at the last evaluation tests the same weights)."""
    final, session = trial(tmp_path, selection="final", max_steps=12, eval_steps=4)
    last_eval = session.reports[-2]
    assert final["selected_step"] == 12 and final["dev_acc"] == last_eval["dev_acc"]
    assert (
        final["test_acc"] == trial(tmp_path, selection="dev_acc", max_steps=12, eval_steps=12)[0]["test_acc"]
    )


def test_a_trials_generation_head_reads_answers_as_its_config_says(tiny_models):
    from mezo_ray.models import ModelSpec, load_model

    loaded = load_model(ModelSpec(tiny_models.causal, "causal"))
    for answer_end in ("newline", "stop_token"):
        cfg = parse_trial_config({**SMOKE, **CAUSAL, "answer_end": answer_end})
        assert recipe._setup_head(cfg, loaded).answer_end == answer_end


def test_model_arithmetic_takes_each_mezo_loss_in_the_models_dtype(tiny_models, tmp_path, monkeypatch):
    """The paper's fp16 OPT runs differenced two fp16 losses; ``arithmetic=model`` rounds each to fp16."""
    seen: dict[str, list[float]] = {"float32": [], "model": []}
    original = recipe.batch_loss

    def spy(head, local, filler, forwards, worker, objective, round_to):
        arithmetic = "float32" if round_to is None else "model"
        seen[arithmetic].append(original(head, local, filler, forwards, worker, objective, round_to))
        return seen[arithmetic][-1]

    monkeypatch.setattr(recipe, "batch_loss", spy)
    for arithmetic in seen:
        final, _ = trial(
            tmp_path, dtype="float16", arithmetic=arithmetic, max_steps=2, eval_steps=2, **CAUSAL
        )
        assert final["done"] and len(seen[arithmetic]) == 4  # two steps, two forwards each
    in_fp16 = {a: [torch.tensor(v, dtype=torch.float16).item() == v for v in seen[a]] for a in seen}
    assert all(in_fp16["model"]) and not all(in_fp16["float32"])


def test_causal_trials_and_icl_run_end_to_end(tiny_models, tmp_path):
    for method in ("mezo", "zero_shot", "icl"):
        final, _ = trial(tmp_path, method=method, icl_demos=4, **CAUSAL)
        assert final["done"] and 0.0 <= final["test_acc"] <= 1.0


def test_metric_objective_is_minus_the_batch_accuracy(tiny_models, tmp_path):
    cfg = parse_trial_config({**SMOKE, "objective": "metric"})
    loaded = recipe.load_model(recipe._model_spec(cfg, torch.device("cpu")))
    head = recipe.make_head(cfg.task.resolved, loaded)
    train = recipe.load_splits(cfg.task.resolved, cfg.data.spec).train
    batch = recipe.batch_at(train, 1, cfg.schedule.batch_size, cfg.training_seed)
    expected = -head.evaluate(batch, batch_size=len(batch))["metric"]
    worker = recipe.Worker(0, 1, torch.device("cpu"))
    assert recipe.batch_loss(head, batch, batch[0], 1, worker, "metric") == pytest.approx(expected)
    final, _ = trial(tmp_path, objective="metric")
    assert final["done"] and 0.0 <= final["test_acc"] <= 1.0


def test_no_prompt_trains_a_classification_head(tiny_models, tmp_path):
    final, session = trial(tmp_path, prompt=False, lr=1e-2, **WEIGHTS)
    weights = snapshot(session.checkpoints[-1])
    assert final["done"] and 0.0 <= final["test_acc"] <= 1.0
    assert "classifier.out_proj.weight" in weights and "lm_head.decoder.weight" not in weights


def test_head_tuning_trains_the_lm_head_alone(tiny_models, tmp_path):
    final, session = trial(tmp_path, method="ft", mode="head", lr=1e-2, **CAUSAL)
    weights = {k: v for k, v in snapshot(session.checkpoints[-1]).items() if not k.startswith("optimizer/")}
    base = load_file(os.path.join(tiny_models.causal, "model.safetensors"))
    embeddings = next(v for k, v in base.items() if k.endswith("embed_tokens.weight"))
    assert final["done"] and list(weights) == ["lm_head.weight"]  # nothing else was trainable
    assert not torch.equal(weights["lm_head.weight"], embeddings)  # it trained (untied from the input)


@pytest.mark.parametrize("method", ["mezo", "ft"])
def test_lora_as_published_trains_what_the_papers_code_trained(tiny_models, tmp_path, method):
    """The paper's --apply_lora left the LM head trainable and loralib merged LoRA on eval(): its MeZO
    moved the LM head alone, its FT the LM head and LoRA (models/modes.py)."""
    final, session = trial(tmp_path, method=method, mode="lora_as_published", lr=1e-2, **WEIGHTS)
    weights = {k: v for k, v in snapshot(session.checkpoints[-1]).items() if not k.startswith("optimizer/")}
    base = load_file(os.path.join(tiny_models.mlm, "model.safetensors"))
    head = {k: v for k, v in weights.items() if ".lm_head." in k or k.startswith("lm_head.")}
    lora = {k for k in weights if ".lora_" in k}
    assert final["done"] and set(weights) == set(head) | lora and (bool(lora) == (method == "ft"))
    dense = next(v for k, v in head.items() if k.endswith("lm_head.dense.weight"))
    assert not torch.equal(dense, base["lm_head.dense.weight"])  # the whole head module trained


def test_a_yaml_twin_of_a_built_in_task_gives_the_same_trial(tiny_models, tmp_path):
    """synthetic-sst2 written as a task file over its own generated data, with string labels: the same
    splits, prompts and label words, so the same trial to the last digit."""
    from mezo_ray.tasks import get_task, load_pool

    pool = load_pool(get_task("synthetic-sst2"))
    names = ("negative", "positive")
    for split, examples in (("train", pool.train), ("test", pool.test)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerows(
                [("review", "stars"), *((ex.fields["sentence"], names[ex.label]) for ex in examples)]
            )
    (tmp_path / "twin.yaml").write_text(
        "name: twin\nfamily: mlm\ninput_fields: [sentence]\nlabels: {negative: terrible, positive: great}\n"
        "template: '{sentence} It was {mask}.'\n"
        "data: {train_file: train.csv, test_file: test.csv, columns: {sentence: review, label: stars}}\n"
    )
    builtin, _ = trial(tmp_path, max_steps=4, eval_steps=4)
    twin, _ = trial(tmp_path, task=str(tmp_path / "twin.yaml"), max_steps=4, eval_steps=4)
    assert same_run(twin) == same_run(builtin)


@pytest.mark.parametrize("prompt", [True, False])
def test_the_example_task_runs_with_and_without_its_prompt(tiny_models, tmp_path, prompt):
    example = os.path.join(os.path.dirname(__file__), "..", "..", "search_spaces", "examples", "reviews.yaml")
    final, _ = trial(tmp_path, task=example, prompt=prompt, max_steps=4, eval_steps=4)
    assert final["done"] and 0.0 <= final["test_acc"] <= 1.0


def test_lp_mezo_starts_from_the_probe_and_resumes_to_the_same_trial(tiny_models, tmp_path):
    """The probe is written before a resume: a seed log replayed from the base model needs it there."""
    straight, whole = trial(tmp_path, lp_init=True, snapshot_every=None)
    resumed, _ = trial(tmp_path, resume_from=whole.checkpoints[0], lp_init=True, snapshot_every=None)
    assert straight["done"] and same_run(resumed) == same_run(straight)
    plain, _ = trial(tmp_path, snapshot_every=None)
    assert same_run(plain) != same_run(straight)  # the probe changed where MeZO started


def test_a_layer_wise_trial_moves_one_layer_per_step(tiny_models, tmp_path):
    final, session = trial(tmp_path, layer_wise=True, max_steps=1, eval_steps=1, **WEIGHTS)
    weights = snapshot(session.checkpoints[-1])
    base = load_file(os.path.join(tiny_models.mlm, "model.safetensors"))
    moved = {n for n, w in weights.items() if n in base and not torch.equal(w, base[n])}
    assert final["done"] and moved and all(".layer.0." in n for n in moved)  # step 0: block 0 alone


def test_param_norm_trials_resume_to_the_same_trajectory(tiny_models, tmp_path):
    """The scales recomputed each epoch (2 steps of 16 from 32 examples) are saved with the seed log."""
    changes = {"perturbation_scale": "param_norm", "recompute_norms": True, "snapshot_every": None}
    straight, whole = trial(tmp_path, **changes)
    resumed, _ = trial(tmp_path, resume_from=whole.checkpoints[0], **changes)
    assert straight["done"] and same_run(resumed) == same_run(straight)
    assert same_run(trial(tmp_path, snapshot_every=None)[0]) != same_run(straight)


def test_xgblora_trials_merge_every_n_steps_and_resume_through_the_merges(tiny_models, tmp_path):
    changes = {"mode": "lora", "lr": 1e-2, "selection": "final", "snapshot_every": None}
    boosted, whole = trial(tmp_path, xgblora_steps_per_iteration=3, **changes)
    resumed, _ = trial(tmp_path, resume_from=whole.checkpoints[0], xgblora_steps_per_iteration=3, **changes)
    assert boosted["done"] and same_run(resumed) == same_run(boosted)  # step 4: one merge replayed
    assert same_run(trial(tmp_path, **changes)[0]) != same_run(boosted)


def test_fzoo_trials_spend_n_plus_one_forwards_a_step_and_resume_exactly(tiny_models, tmp_path):
    changes = {"estimator": "fzoo", "n_probes": 4, "eps": 1e-3, "lr": 1e-4, "snapshot_every": None}
    straight, whole = trial(tmp_path, **changes)
    assert [r["forward_passes"] for r in whole.reports[:-1]] == [4 * 5, 8 * 5]
    resumed, _ = trial(tmp_path, resume_from=whole.checkpoints[0], **changes)
    assert straight["done"] and same_run(resumed) == same_run(straight)


@pytest.mark.parametrize("checkpoints", [{"snapshot_every": None}, WEIGHTS], ids=["seed-log", "weights"])
def test_hizoo_trials_resume_exactly_with_their_hessian_estimate(tiny_models, tmp_path, checkpoints):
    changes = {"estimator": "hizoo", "hessian_smooth": 0.1, **checkpoints}
    straight, whole = trial(tmp_path, **changes)
    assert [r["forward_passes"] for r in whole.reports[:-1]] == [12, 24]
    assert whole.reports[-2]["optimizer_state_multiple"] == 1
    resumed, _ = trial(tmp_path, resume_from=whole.checkpoints[0], **changes)
    assert straight["done"] and same_run(resumed) == same_run(straight)


@pytest.mark.parametrize("checkpoints", [{"snapshot_every": None}, WEIGHTS], ids=["seed-log", "weights"])
def test_lozo_m_trials_resume_exactly_with_their_lowrank_momentum(tiny_models, tmp_path, checkpoints):
    changes = {"estimator": "lozo", "lozo_rank": 2, "lozo_interval": 3, "lozo_momentum": 0.9, **checkpoints}
    straight, whole = trial(tmp_path, **changes)
    assert [r["forward_passes"] for r in whole.reports[:-1]] == [8, 16]
    assert 0 < whole.reports[-2]["optimizer_state_multiple"] < 0.5  # rank-2 factors and the vectors
    resumed, _ = trial(tmp_path, resume_from=whole.checkpoints[0], **changes)  # step 4: mid-interval
    assert straight["done"] and same_run(resumed) == same_run(straight)


def test_grad_norm_trials_resume_to_the_same_trajectory(tiny_models, tmp_path):
    changes = {"perturbation_scale": "grad_norm", "recompute_norms": True, "snapshot_every": None}
    straight, whole = trial(tmp_path, **changes)
    assert whole.reports[0]["forward_passes"] > 8  # the per-group probes are counted
    resumed, _ = trial(tmp_path, resume_from=whole.checkpoints[0], **changes)
    assert straight["done"] and same_run(resumed) == same_run(straight)


def test_icl_demonstrations_come_from_the_whole_train_split(tiny_models, tmp_path, monkeypatch):
    from mezo_ray.tasks import load_pool

    pools = []
    monkeypatch.setattr(
        recipe,
        "icl_evaluate",
        lambda head, ex, pool, **kw: pools.append(pool) or {"metric": 0.5, "loss": 1.0},
    )
    config = {**CAUSAL, "method": "icl", "icl_demos": 4}
    trial(tmp_path, **config)
    cfg = parse_trial_config({**SMOKE, **config})
    whole = load_pool(cfg.task.resolved, cfg.data.spec).train
    assert len(pools) == 2 and all(pool == whole for pool in pools) and len(whole) > config["num_train"]


# --------------------------------------------------------------------------------------------------
# Data parallel and FSDP over 2 gloo processes reproduce the 1-worker trajectory. In float64: the two
# paths sum in other orders (a loss over ranks, a matmul over another batch), and float32's rounding of
# that, amplified by Adam and by MeZO's cancelling (l+ - l-), differs with the CPU's kernels (1e-5 on
# AVX-512 where AVX2 gave less); float64's stays near 1e-15 on every CPU, far below a wrong weighting
PARITY = {**SMOKE, "max_steps": 24, "eval_steps": 24, "lr": 1e-4, "num_workers": 1, **WEIGHTS}
PARITY |= {"dtype": "float64"}
PARITY_CASES = {
    "data-parallel": {"fsdp": False},
    "fsdp": {"fsdp": True},
    # perturbed in the forward: each rank perturbs the gathered parameters whole, as one process does
    "fsdp-forward": {"fsdp": True, "perturbation": "forward"},
    # LOZO-M: each rank perturbs and updates its rows of U V^T; its rank-2 factors shard with the rows
    "lozo-m-fsdp": {
        "fsdp": True,
        "estimator": "lozo",
        "lozo_rank": 2,
        "lozo_interval": 5,
        "lozo_momentum": 0.9,
    },
    # 2026's estimators whose state is per step, not per weight: each rank perturbs and updates its shard
    "adamezo-fsdp": {"fsdp": True, "estimator": "adamezo", "adamezo_window": 3, "lr": 1e-6},
    "bszo-fsdp": {"fsdp": True, "estimator": "bszo", "bszo_subspace_dim": 2, "bszo_samples": 3, "lr": 1e-3},
    "mezo-gv-fsdp": {"fsdp": True, "estimator": "mezo_gv"},
    # backprop: uneven shards (2 + 1 examples) weigh each example equally; an empty shard (1 + 0)
    "ft-data-parallel-uneven": {
        "fsdp": False,
        "method": "ft",
        "batch_size": 3,
        "max_steps": 12,
        "eval_steps": 12,
    },
    "ft-data-parallel-empty-shard": {
        "fsdp": False,
        "method": "ft",
        "batch_size": 1,
        "max_steps": 4,
        "eval_steps": 4,
        "lr": 1e-3,
    },
    "ft-fsdp-uneven": {"fsdp": True, "method": "ft", "batch_size": 3, "max_steps": 12, "eval_steps": 12},
}


def _parity_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Every parity case, one after the other, in one pair of processes (each start costs seconds)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for case, changes in PARITY_CASES.items():
            session = LocalSession(os.path.join(out_dir, case, f"rank{rank}"), rank=rank, world_size=world)
            run_trial(parse_trial_config({**PARITY, **changes}), session)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_worker_snapshots(tiny_models) -> dict[str, dict[str, torch.Tensor]]:
    """Each parity case's final weights from 2 gloo workers (FSDP shards put back together)."""
    world, out = 2, tempfile.mkdtemp()
    mp.spawn(_parity_worker, args=(world, os.path.join(out, "init"), out), nprocs=world)
    snapshots = {}
    for case, changes in PARITY_CASES.items():
        shards = [
            load_file(
                os.path.join(out, case, f"rank{r}", "checkpoint_000000", f"snapshot-rank{r}.safetensors")
            )
            for r in range(world if changes["fsdp"] else 1)
        ]
        snapshots[case] = {
            k: torch.cat([s[k] for s in shards]) if shards[0][k].dim() else shards[0][k] for k in shards[0]
        }
    return snapshots


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_two_workers_reproduce_the_one_worker_trajectory(tiny_models, tmp_path, two_worker_snapshots, case):
    config = {**PARITY, **PARITY_CASES[case]}
    one = snapshot(trial(tmp_path, **{**config, "fsdp": False})[1].checkpoints[0])
    two = two_worker_snapshots[case]
    start = load_file(os.path.join(tiny_models.mlm, "model.safetensors"))
    assert one.keys() == two.keys()
    assert {t.dtype for k, t in one.items() if not k.startswith("optimizer/")} == {torch.float64}
    for name in one:
        if name.endswith(
            "key.bias"
        ):  # softmax ignores it: its gradient is rounding noise, which Adam scales up
            continue
        # measured: weights within 1.3e-15, optimizer buffers within 4e-14 of their scale (LOZO-M's
        # momentum, a multiple of the cancelling (l+ - l-) / 2 eps)
        atol = max(1e-12, 1e-10 * float(one[name].abs().max())) if name.startswith("optimizer/") else 1e-12
        named = lambda message, name=name: f"{name}: {message}"  # noqa: E731
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=atol, msg=named)
    assert max(float((one[k] - start[k]).abs().max()) for k in one if k in start) > 1e-3  # the weights moved


def test_a_trial_logs_its_memory_over_time_beside_its_results(tiny_models, tmp_path):
    final, session = trial(tmp_path, max_steps=40, eval_steps=20, memory_log_every_s=0.05)
    with open(os.path.join(session.log_dir, "memory-rank0.csv")) as f:
        header, *rows = [line.strip().split(",") for line in f]
    assert header == ["seconds", "step", "rss_bytes", "device_allocated_bytes"] and len(rows) >= 3
    seconds, steps, rss = ([float(r[i]) for r in rows] for i in range(3))
    assert seconds == sorted(seconds) and steps == sorted(steps) and steps[-1] == 40
    assert min(rss) > 0 and max(rss) <= final["peak_mem_bytes"]  # samples of what the peak bounds
    _, quiet = trial(tmp_path)  # off by default
    assert not os.path.exists(os.path.join(quiet.log_dir, "memory-rank0.csv"))


def test_train_runs_live_in_their_experiment_and_runs_of_earlier_versions_are_still_found(tmp_path):
    from mezo_ray.train.ray_trial import train_runs_root

    storage = str(tmp_path)
    assert train_runs_root(storage, "exp", "train-a") == f"{storage}/exp"  # a new run: in its experiment
    (tmp_path / "train-a").mkdir()  # an experiment begun before Train runs moved into it
    assert train_runs_root(storage, "exp", "train-a") == storage
    (tmp_path / "exp" / "train-a").mkdir(parents=True)  # both: the experiment's own wins
    assert train_runs_root(storage, "exp", "train-a") == f"{storage}/exp"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"mode": "lora"},
        {"mode": "prefix"},
        {"prompt": False},
        {**CAUSAL, "dtype": "bfloat16"},
        {**CAUSAL, "mode": "prefix", "dtype": "bfloat16"},
        {
            "mode": "lora",
            "xgblora_steps_per_iteration": 2,
            "selection": "final",
            "checkpoint_mode": "seed_log",
        },
    ],
    ids=["mlm", "mlm-lora", "mlm-prefix", "mlm-no-prompt", "causal-bf16", "causal-prefix-bf16", "xgblora"],
)
def test_perturbing_in_the_forward_reaches_every_trained_weight_and_resumes_exactly(
    tiny_models, tmp_path, changes
):
    """perturbation='forward' on the models and modes we ship: every trainable weight runs inside its
    module's forward (the optimizer checks it at each evaluation), a seed log resumes to the same trial,
    and in float32 the projected gradients are the in-place sweeps' (the two differ by rounding only)."""
    forward = {**changes, "perturbation": "forward", "snapshot_every": None}
    straight, whole = trial(tmp_path, **forward)
    resumed, _ = trial(tmp_path, resume_from=whole.checkpoints[0], **forward)
    assert straight["done"] and same_run(resumed) == same_run(straight)
    if changes.get("dtype", "float32") == "float32":
        _, in_place = trial(tmp_path, **changes, snapshot_every=None)
        logs = []
        for session in (whole, in_place):
            with open(os.path.join(session.checkpoints[-1], "state.json")) as f:
                logs.append([g for r in json.load(f)["trajectory"] for g in r["projected_grads"]])
        # the loss in float32 rounds at ~6e-8: over 2 eps = 2e-3, a few of its ulps are ~1e-4 of g
        assert len(logs[0]) == 8 and logs[0] == pytest.approx(logs[1], rel=1e-2, abs=1e-3)


def _saved_mezo(session) -> dict:
    with open(os.path.join(session.checkpoints[-1], "state.json")) as f:
        return json.load(f)["optimizer"]["mezo"]


def test_low_precision_trials_perturb_in_the_forward_unless_set_and_resumes_keep_their_placement(
    tiny_models, tmp_path
):
    """Unset, bfloat16 MeZO perturbs in the forward (float32 and the other estimators in place); a run
    saved with the other placement (an earlier version's default, or a setting since dropped) resumes
    where it perturbed, rounding as it rounded, instead of being refused."""
    low = {"dtype": "bfloat16", "snapshot_every": None}
    assert _saved_mezo(trial(tmp_path, **low)[1])["perturbation"] == "forward"
    assert _saved_mezo(trial(tmp_path)[1])["perturbation"] == "in_place"
    assert _saved_mezo(trial(tmp_path, **low, estimator="fzoo")[1])["perturbation"] == "in_place"
    assert _saved_mezo(trial(tmp_path, **low, mode="lora")[1])["perturbation"] == "in_place"  # fp32 adapters
    earlier = {**low, "perturbation": "in_place", "stochastic_rounding": False}
    straight, whole = trial(tmp_path, **earlier)
    resumed, again = trial(tmp_path, resume_from=whole.checkpoints[0], **low)
    assert same_run(resumed) == same_run(straight)
    assert _saved_mezo(again) == _saved_mezo(whole)
    refused = "perturbation='in_place' but this optimizer has perturbation='forward'"
    with pytest.raises(ValueError, match=refused):
        trial(tmp_path, resume_from=whole.checkpoints[0], **low, perturbation="forward")


@pytest.mark.parametrize("family", ["mlm", "causal"])
def test_a_populations_member_losses_are_the_batch_loss_of_each_copy(tiny_models, family):
    """Outside the probes' forward every member reads the unperturbed model: each of the N losses is
    the trial's own batch loss (the oracle), whatever the micro-batching."""
    cfg = parse_trial_config({**SMOKE, **(CAUSAL if family == "causal" else {}), "estimator": "population"})
    loaded = recipe.load_model(recipe._model_spec(cfg, torch.device("cpu")))
    head = recipe._setup_head(cfg, loaded)
    train = recipe.load_splits(cfg.task.resolved, cfg.data.spec).train
    batch = recipe.batch_at(train, 1, 8, cfg.training_seed)
    worker = recipe.Worker(0, 1, torch.device("cpu"))
    with torch.no_grad():
        expected = recipe.batch_loss(head, batch, batch[0], 1, worker)
        for forwards in (1, 3):
            losses = recipe.member_losses(head, batch, 4, forwards, worker, None)
            assert losses == pytest.approx([expected] * 4, rel=1e-5)


def test_a_population_trial_spends_n_forward_passes_a_step_and_resumes_exactly(tiny_models, tmp_path):
    settings = {"estimator": "population", "population_members": 4, "lr": 1e-2, "checkpoint_mode": "seed_log"}
    final, session = trial(tmp_path, **settings)
    assert final["done"] and final["forward_passes"] == 4 * 8
    resumed, _ = trial(tmp_path, resume_from=session.checkpoints[0], **settings)
    assert same_run(resumed) == same_run(final)
