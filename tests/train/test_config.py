"""Trial configs and search spaces are validated before Ray starts, with messages that say what to fix."""

from __future__ import annotations

import json

import pytest
import torch

from mezo_ray.spaces import expand, load_space, parse_filters, parse_overrides
from mezo_ray.train.config import parse_trial_config

BASE = {"task": "SST-2", "model": "roberta-large"}


def test_family_is_derived_from_the_task_and_the_model():
    assert parse_trial_config(BASE).task.family == "mlm"
    assert parse_trial_config({"task": "RTE", "model": "facebook/opt-13b"}).task.family == "causal"
    assert parse_trial_config({"task": "RTE", "model": "roberta-large"}).task.family == "mlm"
    with pytest.raises(ValueError, match="exists in both families"):
        parse_trial_config({"task": "RTE", "model": "/data/my-model"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 0}, "lr=0"),
        ({"eps": -1e-3}, "eps=-0.001"),
        ({"mode": "adapter"}, "mode='adapter'"),
        ({"method": "sgd"}, "method='sgd'"),
        ({"zo_variant": "lion"}, "zo_variant='lion'"),
        ({"task": "SST-3"}, "unknown task 'SST-3'"),
        ({"eval_steps": 500, "max_steps": 100}, "eval_steps=500 is larger than max_steps=100"),
        ({"lrr": 1e-6}, "unknown key 'lrr'"),
        ({"method": "icl"}, "causal-family baseline"),
        ({"fsdp": True, "num_workers": 0}, "fsdp=true needs num_workers >= 1"),
        ({"k": 0}, "k=0"),
        ({"dtype": "float8"}, "dtype='float8'"),
        ({"mode": "lora_as_published", "prompt": False}, "lora_as_published.*prompt=False"),
        ({"mode": "lora_as_published", "method": "lp"}, "lora_as_published.*method='lp'"),
        ({"lp_init": True, "prompt": False}, "lp_init=true.*prompt=False"),
        ({"xgblora_steps_per_iteration": 10}, "xgblora_steps_per_iteration merges LoRA.*mode='full'"),
        (
            {"estimator": "fzoo", "zo_variant": "adam"},
            "zo_variant='adam': MeZO's own options; estimator='fzoo' brings its own",
        ),
        ({"perturbation": "forward", "estimator": "lozo"}, "perturbation='forward'.*estimator='lozo'"),
        ({"perturbation": "forward", "method": "ft"}, "method='ft' does not read perturbation='forward'"),
        ({"perturbation": "sideways"}, "perturbation"),
    ],
)
def test_bad_trial_configs_name_the_field_and_value(change, message):
    with pytest.raises(ValueError, match=message):
        parse_trial_config({**BASE, **change})


def test_counts_of_the_paper_grids():
    table18 = expand(load_space("roberta_table18"))
    cells = [(f["method"], f["zo_variant"], f["mode"], f["k"]) for f in (t.to_flat() for t in table18)]
    mezo_k16 = [cell for cell in cells if cell == ("mezo", "sgd", "full", 16)]
    assert len(mezo_k16) == 6 * 5 * 3  # tasks x data seeds x learning rates
    assert len(table18) == 6 + 60 + 180 * 4 + 300 + 270 * 2 + 540 * 3  # LoRA: as published, and real
    assert len(expand(load_space("opt13b_table1"))) == 11 + 11 + 7 + 4 * 2 + 3 * (9 * 2 + 2 * 3) + 11 * 3
    assert len(expand(load_space("roberta_table4_ablation"))) == 3 * 5 * 2 * 3 * 2 * 2
    # Table 5 (paper E.6): Table 4's grid, and lr 1e-4 too without the prompt
    assert len(expand(load_space("roberta_table5_prompt"))) == 3 * 5 * 2 * (3 + 4) * 2 * 2
    nondiff = expand(load_space("opt13b_table3_nondiff"))  # paper E.6: lr {1e-1, 5e-2, 1e-2}
    assert sorted(t.method.lr for t in nondiff) == [1e-2, 5e-2, 1e-1]


def test_overrides_replace_grid_axes_and_unknown_keys_are_refused():
    trials = expand(load_space("roberta_table18"), parse_overrides(["task=SST-2", "data_seed=13"]))
    assert {t.task.name for t in trials} == {"SST-2"} and {t.data.seed for t in trials} == {13}
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]"):
        parse_overrides(["learning_rate=1e-6"])
    with pytest.raises(ValueError, match="expected key=value"):
        parse_overrides(["lr"])


def test_only_selects_by_the_spaces_own_values_before_set_rewrites_them():
    """Table 18's LoRA cells run the paper code's LoRA (FIDELITY.md 6), and real LoRA has rows too;
    --only picks by the space's values, then --set rewrites them."""
    space = load_space("roberta_table18")
    lora_cells = 6 * 2 * 5 * 3 + 6 * 2 * 5 * 3 * 3  # MeZO (LoRA) + FT (LoRA): task, k, seed, grid
    published = expand(space, None, parse_filters(["mode=lora_as_published"]))
    assert len(published) == lora_cells and {t.method.name for t in published} == {"mezo", "ft"}
    trials = expand(space, parse_overrides(["mode=lora_as_published"]), parse_filters(["mode=lora"]))
    assert len(trials) == lora_cells
    assert {t.model.mode for t in trials} == {"lora_as_published"}
    full = expand(space, None, parse_filters(["mode=full", "family=mlm"]))  # mode unset: its default
    assert {t.method.name for t in full} == {"zero_shot", "lp", "mezo", "ft"}


def test_bad_spaces_are_refused(tmp_path):
    with pytest.raises(ValueError, match="neither a built-in space"):
        load_space("roberta_table99")
    bad = tmp_path / "bad.yaml"
    bad.write_text("description: x\ngrids: [{name: a, grid: {lr: [1e-6}]}\n")
    with pytest.raises(ValueError, match="malformed YAML"):
        load_space(str(bad))
    bad.write_text(
        "description: x\ndefaults: {model: tiny-mlm, task: synthetic-sst2}\n"
        "grids: [{name: a, grid: {lr: [-1.0]}}]\n"
    )
    with pytest.raises(ValueError, match=r"grid 'a'.*lr=-1.0"):
        expand(load_space(str(bad)))
    bad.write_text("description: x\ngrids: [{name: a, grid: {learning_rate: [1.0]}}]\n")
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]"):
        load_space(str(bad))


def test_dry_run_forward_passes_follow_the_linear_perturbation_schedule():
    from mezo_ray.zo import MeZO

    cfg = parse_trial_config(
        {**BASE, "n_perturbations": 16, "perturbation_schedule": "linear", "max_steps": 625, "eval_steps": 25}
    )
    opt = MeZO(
        [torch.nn.Parameter(torch.zeros(1))],
        lr=1e-3,
        n_perturbations=16,
        perturbation_schedule="linear",
        max_steps=625,
    )
    assert cfg.forward_passes() == sum(2 * opt.perturbations_at(t) for t in range(625))


def test_every_table6_trial_spends_the_10k_forward_pass_budget():
    trials = [parse_trial_config(t.to_flat()) for t in expand(load_space("roberta_table6_nspsa"))]
    assert {t.forward_passes() for t in trials} == {10_000}


def test_gpus_per_trial_is_spread_over_each_trials_own_workers(capsys):
    from mezo_ray.tune import main

    assert main(["--space", "opt13b_table1", "--gpus-per-trial", "4", "--dry-run", "--json"]) == 0
    trials = json.loads(capsys.readouterr().out)["trials"]
    per_worker = {(t["method"], t["num_workers"], t["gpus_per_worker"]) for t in trials}
    assert ("ft", 4, 1.0) in per_worker and ("mezo", 1, 4.0) in per_worker
    with pytest.raises(ValueError, match="NCCL needs a whole GPU per worker"):
        parse_trial_config({**BASE, "num_workers": 2, "gpus_per_worker": 0.5})


def test_unset_perturbation_is_in_the_forward_for_low_precision_weights_and_a_resumed_runs_own():
    def placement(low=True, saved=None, **change):
        return parse_trial_config({**BASE, "dtype": "bfloat16", **change}).placement(low, saved)

    assert placement() == "forward"
    assert placement(low=False) == "in_place"  # float32 weights (or adapters): the paper's sweeps
    assert placement(estimator="lozo") == "in_place"  # LOZO keeps its own sweeps
    assert placement(perturbation_scale="grad_norm") == "in_place"
    assert placement(perturbation="in_place") == "in_place"
    assert placement(saved="in_place") == "in_place"  # a resumed run perturbs where it did
    assert placement(saved="in_place", perturbation="forward") == "forward"  # then refused
