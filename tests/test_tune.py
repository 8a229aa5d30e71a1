"""``python -m mezo_ray.tune`` end to end on one shared local Ray: grid, Train workers, Optuna + ASHA,
PBT, a Train worker killed (the driver killed: tests/test_cluster.py)."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mezo_ray.estimators import ESTIMATORS
from mezo_ray.report import from_experiment_dirs, render
from mezo_ray.spaces import load_space
from mezo_ray.train.config import parse_trial_config
from mezo_ray.tune import Experiment, main, storage_location

pytestmark = pytest.mark.ray


def results(experiment: str) -> dict[str, list[dict]]:
    """trial folder -> its reports (result.json lines)."""
    out = {}
    for path in glob.glob(os.path.join(experiment, "*", "result.json")):
        with open(path) as f:
            out[os.path.basename(os.path.dirname(path))] = [json.loads(line) for line in f if line.strip()]
    return out


README = Path(__file__).parent.parent / "README.md"
TRIAL = {
    "model": "tiny-mlm",
    "task": "synthetic-sst2",
    "k": 16,
    "data_seed": 13,
    "batch_size": 16,
    "max_eval_examples": 32,
    "method": "mezo",
    "lr": 1e-3,
}


def experiment_of(configs: list) -> Experiment:
    return Experiment(load_space("smoke"), "grid", tuple(configs), len(configs))


def write_space(tmp_path, **defaults) -> str:
    path = tmp_path / "space.yaml"
    base = {**TRIAL, **defaults}
    path.write_text(json.dumps({"description": "test", "defaults": base, "grids": [{"name": "one"}]}))
    return str(path)


def test_dry_run_json_counts_trials_without_ray(capsys):
    assert main(["--space", "roberta_table18", "--only", "k=16", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["num_trials"] == len(plan["trials"]) == 6 + 30 + 4 * 90 + 150 + 4 * 270  # half of 3246 + 6
    ft = {t["batch_size"] for t in plan["trials"] if t["method"] == "ft" and t["mode"] == "full"}
    assert ft == {2, 4, 8}  # k=16's grid only (--set k=16 would also run k=512's {8, 16, 32} at k=16)
    mezo = [
        t
        for t in plan["trials"]
        if t["method"] == "mezo" and t["mode"] == "full" and t["zo_variant"] == "sgd"
    ]
    assert len(mezo) == 90
    assert main(["--space", "nope"]) == 2 and "neither a built-in space" in capsys.readouterr().err


def test_the_opt_paper_spaces_read_generated_answers_as_the_papers_code(capsys):
    for space in ("opt13b_table1", "opt13b_table3_nondiff"):
        assert main(["--space", space, "--only", "task=SQuAD", "--dry-run", "--json"]) == 0
        trials = json.loads(capsys.readouterr().out)["trials"]
        assert trials and {t["answer_end"] for t in trials} == {"stop_token"}, space
        assert {(t["dtype"], t["arithmetic"]) for t in trials} == {("float16", "model")}, space
    assert parse_trial_config(TRIAL).task.answer_end == "newline"  # elsewhere: cut at the first newline
    # the non-differentiable runs test the final model (README: --evaluation_strategy no)
    assert main(["--space", "opt13b_table3_nondiff", "--dry-run", "--json"]) == 0
    assert {t["selection"] for t in json.loads(capsys.readouterr().out)["trials"]} == {"final"}


def test_opt_fine_tuning_runs_five_epochs_of_each_tasks_train_split(capsys):
    """finetune.sh: 5 epochs at batch 8, dev every epoch; CB (150 train), Copa (300) and WSC (54, the
    paper's quirk) have fewer than 1000 examples, so fewer steps (also the head-tuning LP row on Copa)."""
    assert main(["--space", "opt13b_table1", "--only", "method=ft", "--dry-run", "--json"]) == 0
    trials = json.loads(capsys.readouterr().out)["trials"]
    steps = {(t["task"], t["mode"]): (t["max_steps"], t["eval_steps"]) for t in trials}
    assert steps[("CB", "full")] == (95, 19) and steps[("Copa", "full")] == (190, 38)
    assert steps[("WSC", "full")] == (35, 7) and steps[("SST2", "full")] == (625, 125)
    assert steps[("Copa", "head")] == (190, 38) and steps[("SQuAD", "head")] == (625, 125)


def test_the_roberta_paper_spaces_read_lm_bffs_pack_and_say_how_to_get_it(tmp_path, monkeypatch, capsys):
    """The paper's Table 18 data is LM-BFF's k-shot pack: every RoBERTa paper space reads it from
    data/k-shot-1k-test under the folder the search starts in (made absolute: trials run elsewhere),
    and a missing pack stops the search before Ray with what to download."""
    monkeypatch.chdir(tmp_path)
    for space in ("roberta_table18", "roberta_table3_nondiff", "roberta_table5_prompt", "roberta_optuna"):
        assert main(["--space", space, "--dry-run", "--json"]) == 0
        trials = json.loads(capsys.readouterr().out)["trials"]
        pack = {(t["data_source"], t["data_dir"]) for t in trials}
        assert pack == {("lmbff", str(tmp_path / "data" / "k-shot-1k-test"))}, space
    argv = ["--space", "roberta_table18", "--only", "k=16", "--set", "task=SST-2", "--set", "model=tiny-mlm"]
    assert main([*argv, "--only", "data_seed=13"]) == 2
    error = capsys.readouterr().err
    assert "SST-2/16-13 does not exist" in error and "lm-bff/datasets.tar" in error


def test_show_examples_prints_the_inputs_as_the_model_reads_them(tiny_models, capsys):
    """The example task's first training example: the ids the tokenizer gives the prompted text, the
    mask's position in them, and the label words' ids."""
    from transformers import AutoTokenizer

    space = os.path.join(os.path.dirname(__file__), "..", "search_spaces", "examples", "reviews_space.yaml")
    assert main(["--space", space, "--only", "prompt=true", "--dry-run", "--show-examples", "1"]) == 0
    out = capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.mlm)
    words = {
        w: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + w))[0] for w in ("terrible", "great")
    }
    assert all(f"'{w}' = id {i}" in out for w, i in words.items())
    shown = re.search(r"\] '(.*)'\n    ids (\[.*\]) \(mask at position (\d+)\)", out)
    text, ids, mask = shown[1], json.loads(shown[2]), int(shown[3])
    assert text.endswith(" It was<mask>.</s>") and ids == tokenizer(text[3:-4])["input_ids"]
    assert ids[mask] == tokenizer.mask_token_id


def test_trial_processes_are_reused_only_for_in_process_trials_run_to_the_end():
    from mezo_ray.tune import reuse_trial_processes

    in_process = experiment_of([parse_trial_config({**TRIAL, "num_workers": 0})] * 2)
    with_workers = experiment_of([*in_process.configs, parse_trial_config({**TRIAL, "num_workers": 1})])
    assert reuse_trial_processes(in_process, "none")
    assert not reuse_trial_processes(in_process, "asha")  # a stopped trial's process may still be busy
    assert not reuse_trial_processes(with_workers, "none")  # a Train run winds down after its last report


def test_bucket_storage_is_kept_as_a_uri_and_local_paths_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage_location("s3://bucket/runs") == "s3://bucket/runs"  # a cluster's shared storage
    assert storage_location("runs") == str(tmp_path / "runs")
    assert storage_location("~/runs") == str(tmp_path / "home" / "runs")


def test_list_shows_every_space_with_its_trial_count(capsys):
    assert main(["--list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"smoke", "demo", "roberta_table18", "opt13b_table1"} <= set(rows)
    assert rows["smoke"]["trials"] == 3


def test_smoke_space_end_to_end_with_report(ray_local, tiny_models, tmp_path, capsys):
    assert main(["--space", "smoke", "--storage-path", str(tmp_path), "--name", "smoke"]) == 0
    out = capsys.readouterr().out
    trials = results(str(tmp_path / "smoke"))
    assert len(trials) == 3 and all(r[-1]["done"] for r in trials.values())
    import ray

    node = ray.get_runtime_context().get_node_id()  # each report names the node its trial ran on
    assert all(report["node_id"] == node for reports in trials.values() for report in reports)
    report = from_experiment_dirs([str(tmp_path / "smoke")])
    table = render(report)
    assert "| method | synthetic-sst2 |" in table
    for row in ("Zero-shot", "MeZO"):  # every expected cell holds a number, none is missing
        assert re.search(rf"\| {row} \| \d+\.\d \|", table), table
    assert "Best trials" in out and "synthetic-sst2" in out
    # the terminal: a line per trial naming what sets it apart, its progress lines, no config tables
    started = sorted(line.split(": ", 1)[1] for line in out.splitlines() if " started: " in line)
    assert started == ["mezo lr=0.001", "mezo lr=0.01", "zero_shot"]
    assert "[mezo lr=0.01] step 3/6 dev_acc" in out and "[zero_shot] dev_acc" in out
    assert "started with configuration" not in out and "task_spec" not in out
    readme_example(tmp_path, trials, table)


def readme_example(tmp_path, trials, table):
    """The README's "Results in Python" example, on a copy of the experiment folder."""
    import shutil

    from mezo_ray.report import from_result_grid
    from mezo_ray.tune import results as result_grid

    copy = shutil.copytree(tmp_path / "smoke", tmp_path / "elsewhere" / "smoke")
    shutil.rmtree(tmp_path / "smoke")  # nothing may still point at the original
    block = re.search(r"### Results in Python.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    block = re.sub(r'results\("[^"]*"\)', f"results({str(copy)!r})", block)
    exec(compile(block, "README.md", "exec"), {})  # the documented example runs as written
    grid = result_grid(copy)
    best = grid.get_best_result()  # by best_dev_acc, as the shipped spaces rank trials
    assert len(grid) == 3 and not grid.errors
    assert best.metrics["best_dev_acc"] == max(r[-1]["best_dev_acc"] for r in trials.values())
    history = best.metrics_dataframe
    reports = next(r for r in trials.values() if r[-1]["trial_id"] == best.metrics["trial_id"])
    assert len(history) == len(reports) and "dev_acc" in history.columns
    assert str(copy) in str(best.path)
    assert render(from_result_grid(grid)) == table
    with pytest.raises(ValueError, match="not a Tune experiment folder"):
        result_grid(str(tmp_path))


def test_every_estimator_and_variant_trains_end_to_end_through_the_cli(ray_local, tiny_models, tmp_path):
    """Every estimator of the registry, LOZO-M, LP-MeZO, the param-norm and grad-norm scales, layer-wise
    MeZO and XGBLoRA on the tiny model, each at the same forward-pass budget, each its own row of the
    report."""
    space = tmp_path / "methods.yaml"
    small = {  # settings that act within 8 steps of the tiny model; an estimator not named runs its defaults
        "fzoo": {"n_probes": 3, "eps": 1.0e-3},
        "hizoo": {"hessian_smooth": 0.1},
        "lozo": {"lozo_rank": 2, "lozo_interval": 2},
        "adamezo": {"adamezo_window": 2},
    }
    variants = [
        {},
        *({"estimator": name, **small.get(name, {})} for name in ESTIMATORS),
        {"estimator": "lozo", "lozo_rank": 2, "lozo_interval": 2, "lozo_momentum": 0.9},
        {"lp_init": True},
        {"perturbation_scale": "param_norm", "recompute_norms": True},
        {"perturbation_scale": "grad_norm"},
        {"layer_wise": True},
        {"mode": "lora", "xgblora_steps_per_iteration": 2, "selection": "final", "snapshot_every": None},
    ]
    grids = [{"name": f"v{i}", "set": v} for i, v in enumerate(variants)]
    defaults = {**TRIAL, "max_steps": 8, "eval_steps": 4, "max_forward_passes": 16, "num_workers": 0}
    space.write_text(json.dumps({"description": "methods", "defaults": defaults, "grids": grids}))
    assert main(["--space", str(space), "--storage-path", str(tmp_path), "--name", "methods"]) == 0
    trials = results(str(tmp_path / "methods"))
    # a step is not split: the last one may cross the budget (HiZOO: 3 a step, 18; grad-norm: its
    # first step probes each of the tiny model's groups with 2 forwards)
    assert len(trials) == len(variants) and all(
        r[-1]["done"] and 16 <= r[-1]["forward_passes"] <= 18 + 2 * 4 for r in trials.values()
    )
    table = render(from_experiment_dirs([str(tmp_path / "methods")]))
    rows = (
        "MeZO [16 fwd]",
        *(f"{row} [16 fwd]" for entry in ESTIMATORS.values() for row in entry.rows),
        "LP-MeZO [16 fwd]",
        "MeZO [16 fwd, param-norm]",
        "MeZO [16 fwd, grad-norm]",
    )
    for row in (*rows, "MeZO [16 fwd, layer-wise]", "MeZO (XGBLoRA) [16 fwd, merge every 2]"):
        assert re.search(rf"\| {re.escape(row)} \| \d+\.\d", table), (row, table)


def test_two_worker_torch_trainer_trial_under_tune(ray_local, tiny_models, tmp_path):
    space = write_space(tmp_path, num_workers=2, max_steps=4, eval_steps=2, snapshot_every=2)
    assert main(["--space", space, "--storage-path", str(tmp_path), "--name", "dp"]) == 0
    (reports,) = results(str(tmp_path / "dp")).values()
    assert [r["step"] for r in reports] == [2, 4, 4] and reports[-1]["done"]
    checkpoints = sorted(
        p for p in glob.glob(str(tmp_path / "dp" / "train-*" / "checkpoint_*")) if os.path.isdir(p)
    )
    files = [sorted(os.listdir(c)) for c in checkpoints]
    assert files[0] == ["state.json"] and "snapshot-rank0.safetensors" in files[1]  # a seed log, then weights


def placement_groups_removed(timeout: float = 30) -> bool:
    """Whether every placement group of the session is removed (Train removes its own asynchronously)."""
    from ray.util import placement_group_table

    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(pg["state"] == "REMOVED" for pg in placement_group_table().values()):
            return True
        time.sleep(0.5)
    return False


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "train-workers"])
def test_optuna_with_asha_finishes_every_trial(ray_local, tiny_models, tmp_path, workers, capsys):
    space = write_space(tmp_path, num_workers=workers, max_steps=9, eval_steps=3)
    with open(space) as f:
        spec = json.load(f)
    spec["optuna"] = {"lr": {"loguniform": [1e-4, 1e-1]}, "mode": {"choice": ["full", "lora"]}}
    with open(space, "w") as f:
        json.dump(spec, f)
    code = main(
        [
            "--space",
            space,
            "--storage-path",
            str(tmp_path),
            "--name",
            "optuna",
            "--search",
            "optuna",
            "--num-samples",
            "3" if workers else "4",  # Train trials cost a worker start-up each; 3 still queue one
            "--scheduler",
            "asha",
            "--max-concurrent",
            "2",
        ]
    )
    assert code == 0
    trials = results(str(tmp_path / "optuna"))
    assert len(trials) == (3 if workers else 4) and all(reports for reports in trials.values())
    modes = set()
    for t in trials:
        with open(os.path.join(tmp_path, "optuna", t, "params.json")) as f:
            modes.add(json.load(f)["mode"])
    assert modes <= {"full", "lora"}
    # the search's cost is what its trials spent, stopped ones included
    spent = sum(reports[-1]["forward_passes"] for reports in trials.values())
    out = capsys.readouterr().out
    assert f"Search cost: {len(trials)} trials (" in out and f"{spent:,} forward passes" in out, out[-2000:]
    assert placement_groups_removed()  # a trial ASHA stops leaves none behind to starve the next ones


def test_pbt_exploit_replays_the_donors_seed_log_then_goes_on_with_the_mutated_settings(
    ray_local, tiny_models, tmp_path, capsys
):
    """A trial PBT moves onto a better trial's checkpoint continues exactly as a fresh trial started from
    that checkpoint (the donor's seed log, replayed) with the mutated lr / eps does."""
    from mezo_ray.train.recipe import run_trial
    from mezo_ray.train.session import LocalSession

    space = tmp_path / "pbt.yaml"
    # evaluations at 3 and 5 (max_steps): PBT decides once, at step 3 (Ray rewrites a trial's result.json
    # when it restores it, so a second exploit would hide the first one's rows)
    defaults = {**TRIAL, "max_steps": 5, "eval_steps": 3, "cpus_per_worker": 1}
    spec = {
        "description": "pbt",
        "defaults": defaults,
        "grids": [{"name": "mezo", "grid": {"lr": [1e-4, 1e-2]}}],
    }
    spec["pbt"] = {"lr": [1e-4, 1e-3, 1e-2], "eps": {"loguniform": [1e-4, 1e-2]}}
    space.write_text(json.dumps(spec))
    assert (
        main(["--space", str(space), "--storage-path", str(tmp_path), "--name", "pbt", "--scheduler", "pbt"])
        == 0
    )
    assert "PBT: 2 trials in their own processes" in capsys.readouterr().out
    with open(tmp_path / "pbt" / "pbt_global.txt") as f:
        recipient_tag, _, _, _, donor_config, new_config = json.loads(f.readline())
    assert (new_config["lr"], new_config["eps"]) != (donor_config["lr"], donor_config["eps"])
    trials = results(str(tmp_path / "pbt"))
    # trial folders are tune_trainable_<experiment>_<index>_<tag>_<date>
    tagged = {name.split("_")[4]: reports for name, reports in trials.items()}
    donor_step = 3
    after = next(r for r in tagged[recipient_tag] if r["step"] == 5 and not r.get("done"))
    assert (after["config"]["lr"], after["config"]["eps"]) == (new_config["lr"], new_config["eps"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the 1-CPU trial processes ran
    try:
        donor = LocalSession(str(tmp_path / "donor"))
        run_trial(parse_trial_config(donor_config), donor)
        resume = next(
            c for c, r in zip(donor.checkpoints, donor.reports, strict=False) if r["step"] == donor_step
        )
        fresh = LocalSession(str(tmp_path / "fresh"), resume_from=resume)
        run_trial(parse_trial_config(new_config), fresh)
        fresh_steps = [r["step"] for r in fresh.reports]
    finally:
        torch.set_num_threads(threads)
    expected = next(r for r in fresh.reports if r["step"] == after["step"])
    for key in ("step", "forward_passes", "dev_acc", "dev_loss", "train_loss", "lr", "eps"):
        assert after[key] == expected[key], key
    # and step by step: the recipient's seed log (seeds, projected gradients, lr, eps) is the fresh run's
    recipient = next(name for name in trials if name.split("_")[4] == recipient_tag)
    states = []
    for folder in glob.glob(str(tmp_path / "pbt" / recipient / "checkpoint_*")):  # PBT keeps them all here
        with open(os.path.join(folder, "state.json")) as f:
            states.append(json.load(f))
    state = next(s for s in states if s["progress"]["step"] == after["step"])
    with open(os.path.join(fresh.checkpoints[fresh_steps.index(after["step"])], "state.json")) as f:
        assert state["trajectory"] == json.load(f)["trajectory"]
    eps_of = {r["step"]: r["eps"] for r in state["trajectory"]}
    # (records count steps from 0: record donor_step - 1 is the donor's last step, record donor_step the next)
    assert eps_of[donor_step - 1] == donor_config["eps"] and eps_of[donor_step] == new_config["eps"]


# --------------------------------------------------------------------------------------------------
# Faults, for real: kill a Train worker (killing the driver: tests/test_cluster.py)
def test_killed_train_worker_restarts_from_its_checkpoint(ray_local, tiny_models, tmp_path):
    from mezo_ray.train.config import parse_trial_config
    from mezo_ray.train.recipe import run_trial
    from mezo_ray.train.session import LocalSession

    # weights every 2nd checkpoint (50, 100, ...): killed after step 75 or later, the restarted worker
    # may continue a seed log from a snapshot in an older checkpoint folder
    config = {**TRIAL, "num_workers": 1, "max_steps": 300, "eval_steps": 25, "snapshot_every": 2}
    space = write_space(tmp_path, **config)
    runner = _background(main, ["--space", space, "--storage-path", str(tmp_path), "--name", "fault"])
    pid = _wait_for_checkpoint_then_worker_pid(tmp_path, min_step=75)
    os.kill(pid, signal.SIGKILL)
    assert _wait_for_worker_other_than(pid), "Train did not start a new worker"
    assert runner.result(timeout=600) == 0
    (reports,) = results(str(tmp_path / "fault")).values()
    final = reports[-1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (1 CPU): the same matmul reductions, the same bits
    session = LocalSession(str(tmp_path / "uninterrupted"))
    try:
        uninterrupted = run_trial(parse_trial_config(config), session)
    finally:
        torch.set_num_threads(threads)
    for key in ("test_acc", "best_dev_acc", "dev_loss", "selected_step", "forward_passes", "step"):
        assert final[key] == uninterrupted[key], key
    restarted = sorted(
        glob.glob(str(tmp_path / "fault" / "train-*" / "checkpoint_*" / "snapshot-rank0.safetensors"))
    )[-1]
    a, b = (
        load_file(restarted),
        load_file(os.path.join(session.checkpoints[-1], "snapshot-rank0.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the final weights, bit for bit


def _background(fn, args):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(1).submit(fn, args)


def _wait_for_checkpoint_then_worker_pid(root, min_step: int = 0) -> int:
    deadline = time.time() + 240
    while time.time() < deadline:
        if any(
            _step_of(path) >= min_step
            for path in glob.glob(str(root / "*" / "train-*" / "checkpoint_*" / "state.json"))
        ):
            pids = subprocess.run(
                ["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True
            ).stdout.split()
            if pids:
                return int(pids[0])
        time.sleep(0.2)
    pytest.fail("no Train checkpoint appeared")


def _step_of(state_json: str) -> int:
    try:
        with open(state_json) as f:
            return json.load(f)["progress"]["step"]
    except (OSError, ValueError):  # being written, or deleted by Ray's retention
        return -1


def _wait_for_worker_other_than(pid: int) -> bool:
    deadline = time.time() + 240
    while time.time() < deadline:
        pids = subprocess.run(
            ["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True
        ).stdout.split()
        if any(int(p) != pid for p in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "train-workers"])
def test_non_finite_losses_fail_a_trial_once_with_the_reason(ray_local, tiny_models, tmp_path, workers):
    """Tune retries a failed trial (--max-failures, for lost nodes) from its last checkpoint: the retry of
    a trial stopped on non-finite losses fails at once instead of training into them again."""
    space = write_space(
        tmp_path, num_workers=workers, lr=1e30, max_steps=40, eval_steps=2, nonfinite_patience=3
    )
    args = ["--space", space, "--storage-path", str(tmp_path), "--name", "nan", "--max-failures", "1"]
    assert main(args) == 1
    ((trial, reports),) = results(str(tmp_path / "nan")).items()
    steps = [r["step"] for r in reports]
    assert steps == sorted(set(steps))  # no restart from a checkpoint (it would report steps again)
    (failure,) = [r for r in reports if "failure" in r]  # a retry that trained on would stop again, later
    assert "non-finite 3 times in a row" in failure["failure"] and failure is reports[-1]
    error = (tmp_path / "nan" / trial / "error.txt").read_text()
    assert "NonFiniteLossError" in error and "non-finite 3 times in a row" in error


def test_fifty_trials_under_load_are_all_accounted_for(ray_local, tiny_models, tmp_path):

    space = tmp_path / "load.yaml"
    space.write_text(
        json.dumps(
            {
                "description": "load",
                "grids": [{"name": "seeds", "grid": {"seed": list(range(50))}}],
                "defaults": {
                    "model": "tiny-mlm",
                    "task": "synthetic-sst2",
                    "k": 16,
                    "data_seed": 13,
                    "batch_size": 8,
                    "max_eval_examples": 8,
                    "eval_batch_size": 8,
                    "num_workers": 0,
                    "max_steps": 2,
                    "eval_steps": 2,
                    "lr": 1e-3,
                    "cpus_per_worker": 0.5,
                },
            }
        )
    )
    assert main(["--space", str(space), "--storage-path", str(tmp_path), "--name", "load"]) == 0
    trials = results(str(tmp_path / "load"))
    assert len(trials) == 50 and all(r and r[-1].get("done") for r in trials.values())
    seeds = set()
    for t in trials:
        with open(os.path.join(tmp_path, "load", t, "params.json")) as f:
            seeds.add(json.load(f)["seed"])
    assert seeds == set(range(50))  # every trial ran once: none lost, none twice
    assert placement_groups_removed()


def test_the_readme_example_space_trains_through_the_command_line(ray_local, tiny_models, tmp_path):
    space = str(Path(__file__).resolve().parents[1] / "search_spaces" / "examples" / "reviews_space.yaml")
    args = ["--space", space, "--set", "max_steps=4", "--set", "eval_steps=2", "--set", "k=4"]
    assert main([*args, "--storage-path", str(tmp_path), "--name", "reviews"]) == 0
    trials = [p for p in (tmp_path / "reviews").iterdir() if p.is_dir() and (p / "result.json").exists()]
    assert len(trials) == 2  # with the prompt and with a classification head
