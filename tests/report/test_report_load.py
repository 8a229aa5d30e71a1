"""Reading Tune folders: row labels, trial status and the quirks of files written by a running search."""

from __future__ import annotations

import json

import pytest

from mezo_ray.report import from_experiment_dirs, row_label


@pytest.mark.parametrize(
    ("method", "zo_variant", "mode", "label"),
    [
        ("mezo", "sgd", "full", "MeZO"),
        ("mezo", "sgd", "lora", "MeZO (LoRA)"),
        ("mezo", "sgd", "prefix", "MeZO (prefix)"),
        ("mezo", "adam", "full", "MeZO-Adam"),
        ("ft", "adam", "prefix", "FT (prefix)"),
        ("ft", None, "lora", "FT (LoRA)"),
        ("mezo", "sgd", "lora_as_published", "MeZO (LoRA, as published)"),
        ("zero_shot", "sgd", "lora", "Zero-shot"),
        ("icl", None, None, "ICL"),
        ("lp", None, "full", "LP"),
        ("mezo", None, None, "MeZO"),
    ],
)
def test_row_label_follows_contracts(method, zo_variant, mode, label):
    assert row_label(method, zo_variant, mode) == label


def test_lp_mezo_is_its_own_row():
    assert row_label("mezo", "sgd", "full", lp_init=True) == "LP-MeZO"  # the paper's Table 19
    assert row_label("mezo", "sgd", "full", layer_wise=True) == "MeZO [layer-wise]"
    assert row_label("mezo", "sgd", "full", perturbation_scale="param_norm") == "MeZO [param-norm]"
    assert row_label("mezo", "sgd", "lora", estimator="fzoo") == "FZOO (LoRA)"
    assert row_label("mezo", "sgd", "full", estimator="hizoo") == "HiZOO"


def test_trial_finished_after_an_error_counts_as_done_with_a_note(tmp_path, writer):
    config = writer.cfg("roberta-large", "SST-2", "mezo", 16, 13, 1e-6)
    writer.write_trial(tmp_path, config, writer.curve(0.9, 0.3, 0.88), error="RuntimeError: worker died")
    trial = from_experiment_dirs(tmp_path).trials.iloc[0]
    assert trial["status"] == "done"
    assert trial["reason"] == "completed after an error (resumed): RuntimeError: worker died"


def test_half_written_last_line_of_a_running_trial_is_skipped(tmp_path, writer):
    config = writer.cfg("roberta-large", "SST-2", "mezo", 16, 13, 1e-6)
    writer.write_trial(tmp_path, config, writer.curve(0.9, 0.3))
    result_json = next(tmp_path.glob("*/result.json"))
    result_json.write_text(result_json.read_text() + '{"step": 300, "dev_a')
    report = from_experiment_dirs(tmp_path)
    trial = report.trials.iloc[0]
    assert (trial["status"], trial["n_reports"], trial["step"]) == ("unfinished", 2, 200)
    assert report.history["step"].tolist() == [100, 200]


def test_trial_folders_are_found_at_any_depth_but_not_in_checkpoints(tmp_path, writer):
    writer.write_trial(
        tmp_path / "a" / "exp1", writer.cfg("m", "t", "mezo", 16, 13, 1e-6), writer.curve(0.9, 0.3, 0.8)
    )
    trial_dir = next((tmp_path / "a" / "exp1").iterdir())
    (trial_dir / "checkpoint_000001").mkdir()
    (trial_dir / "checkpoint_000001" / "params.json").write_text(json.dumps({"task": "bogus"}))
    trials = from_experiment_dirs(tmp_path).trials
    assert trials["experiment"].tolist() == ["exp1"] and trials["task"].tolist() == ["t"]


def test_settings_a_method_does_not_read_are_missing_not_its_config_default(tmp_path, writer):
    """Zero-shot carries lr 1e-6 and eps 1e-3 in its config but reads neither; FT reads no eps; FZOO reads
    its probes, not LOZO's rank: the trials table (and every table and summary built on it) says so."""
    runs = {
        "zero_shot": writer.cfg("roberta-large", "SST-2", "zero_shot", 16, 13, 1e-6),
        "ft": writer.cfg("roberta-large", "SST-2", "ft", 16, 13, 1e-5),
        "fzoo": writer.cfg(
            "roberta-large", "SST-2", "mezo", 16, 13, 1e-6, estimator="fzoo", n_probes=4, lozo_rank=4
        ),
    }
    ids = {
        name: writer.write_trial(tmp_path, config, writer.curve(0.8, 0.3, 0.7))
        for name, config in runs.items()
    }
    trials = from_experiment_dirs(tmp_path).trials.set_index("trial_id")
    zero_shot, ft, fzoo = (trials.loc[ids[name]] for name in ("zero_shot", "ft", "fzoo"))
    assert zero_shot[["lr", "eps", "weight_decay", "batch_size", "max_steps"]].isna().all()
    assert zero_shot["row"] == "Zero-shot" and zero_shot["data_seed"] == 13
    assert ft["lr"] == 1e-5 and ft["batch_size"] == 64 and ft[["eps", "n_perturbations"]].isna().all()
    assert (fzoo["lr"], fzoo["eps"], fzoo["n_probes"]) == (1e-6, 1e-3, 4) and fzoo["lozo_rank"] is None
