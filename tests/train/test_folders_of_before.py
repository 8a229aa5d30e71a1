"""Experiment folders written before the trial config became sections still validate, resume and
report with today's mezo_ray.

How they were made: ``python -m mezo_ray.tune`` on a 7-trial space (tiny MLM copied to
/tmp/old96/tiny-mlm, synthetic-sst2, LoRA, 8 steps, an evaluation every 4): zero-shot; MeZO and FZOO
each twice, once checkpointing seed logs from the base model and once weights (the same trial
otherwise, so the same steps); LOZO-M with seed logs; FT. Tune's own state and pickles are left out.
- ``data/experiment_of_96d62fb``: by 96d62fb (the issue's reference). Every trial's params.json and
  result.json, the first checkpoint of the MeZO seed-log and FT trials, and the report 96d62fb
  printed for it (``report_by_96d62fb.md``, ``--no-plots``). Its z came from the generator before
  v3 (``cpu-mt19937``), so its MeZO checkpoints are refused by name; FT's resumes.
- ``data/experiment_of_f81ea99``: by f81ea99, the last commit before the sections, with today's z.
  The MeZO, FZOO and LOZO-M trials and their checkpoints: they resume exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mezo_ray.models import load_model
from mezo_ray.report.load import unused_keys
from mezo_ray.train import LocalSession, parse_trial_config, recipe, run_trial
from mezo_ray.train import checkpoint as ckpt
from mezo_ray.train.config import flat_default

DATA = Path(__file__).parent / "data"
OF_96D62FB, OF_F81EA99 = DATA / "experiment_of_96d62fb", DATA / "experiment_of_f81ea99"


def trials(folder: Path) -> list[Path]:
    return sorted(path.parent for path in folder.glob("*/params.json"))


def params_of(trial: Path, tiny_models) -> dict:
    """The trial's params.json, its model (a copy of today's tiny MLM then) read from today's."""
    return {**json.loads((trial / "params.json").read_text()), "model": tiny_models.mlm}


def trial_of(folder: Path, method: str, estimator: str = "mezo", checkpoint_mode: str = "seed_log") -> Path:
    (trial,) = [
        t
        for t in trials(folder)
        if (p := json.loads((t / "params.json").read_text()))["method"] == method
        and (p["estimator"], p["checkpoint_mode"]) == (estimator, checkpoint_mode)
    ]
    return trial


@pytest.mark.parametrize("folder", [OF_96D62FB, OF_F81EA99])
def test_every_trial_of_before_validates_and_writes_back_its_flat_config(tiny_models, folder):
    """The flat form has the keys it had (and the settings added since, at their defaults), with the
    same values but for settings the trial's method does not read (the report's own table of them),
    which it writes as their defaults."""
    for trial in trials(folder):
        params = params_of(trial, tiny_models)
        flat = parse_trial_config(params).to_flat()
        assert set(params) <= set(flat)
        assert all(flat[key] == flat_default(key) for key in set(flat) - set(params))
        changed = {key for key in params if flat[key] != params[key]}
        assert changed <= unused_keys(params["method"], params["estimator"])
        assert all(flat[key] == flat_default(key) for key in changed)
    if folder == OF_96D62FB:  # a zero-shot row in a grid that set lr: the lr it never read
        zero_shot = params_of(trial_of(folder, "zero_shot"), tiny_models)
        assert zero_shot["lr"] == 1e-3 and parse_trial_config(zero_shot).to_flat()["lr"] == 1e-6


def test_the_report_of_a_folder_of_before_is_the_one_it_gave_then(capsys):
    from mezo_ray.report.__main__ import main

    assert main([str(OF_96D62FB), "--no-plots"]) == 0
    assert capsys.readouterr().out == (OF_96D62FB / "report_by_96d62fb.md").read_text()


def test_a_checkpoint_of_96d62fb_resumes_where_its_z_is_todays_and_is_refused_by_name_where_not(
    tiny_models, tmp_path
):
    ft = trial_of(OF_96D62FB, "ft")
    session = LocalSession(str(tmp_path / "ft"), resume_from=str(ft / "checkpoint_000000"))
    final = run_trial(parse_trial_config(params_of(ft, tiny_models)), session)
    assert final["done"] and [r["step"] for r in session.reports] == [8, 8]  # from step 4: the eval at 8
    mezo = trial_of(OF_96D62FB, "mezo")
    session = LocalSession(str(tmp_path / "mezo"), resume_from=str(mezo / "checkpoint_000000"))
    with pytest.raises(ValueError, match=r"noise_backend='cpu-mt19937'.*an older generator of z"):
        run_trial(parse_trial_config(params_of(mezo, tiny_models)), session)


@pytest.mark.parametrize("estimator", ["mezo", "fzoo", "lozo"])
def test_a_seed_log_of_before_restores_the_weights_its_run_reached(tiny_models, estimator):
    """Today's resume replays the seed log from the base model: for MeZO and FZOO, to exactly the
    weights their twin trials saved (a replay is the same arithmetic on every CPU); LOZO-M's log
    passes the same door."""
    log_trial = trial_of(OF_F81EA99, "mezo", estimator)
    cfg = parse_trial_config(params_of(log_trial, tiny_models))
    for k, step in enumerate((4, 8)):
        resumed = ckpt.load(str(log_trial / f"checkpoint_{k:06d}"), 0)
        assert resumed.weights is None and len(resumed.trajectory) == step  # a seed log from the base
        loaded = load_model(recipe._model_spec(cfg, torch.device("cpu")))
        params = loaded.trainable_named_parameters()
        optimizer = recipe._setup_optimizer(cfg, cfg.schedule, params, 32, loaded, resumed)
        progress, _ = ckpt.restore(resumed, LocalSession(), params, optimizer, "dev_acc", lambda s: None)
        assert progress.step == step and optimizer.step_count == step
        if estimator == "lozo":
            continue  # no twin with weights
        twin = trial_of(OF_F81EA99, "mezo", estimator, "weights")
        saved = ckpt.load(str(twin / f"checkpoint_{k:06d}"), 0).weights
        assert saved is not None and sorted(saved) == sorted(name for name, _ in params)
        for name, p in params:
            assert torch.equal(p.detach(), saved[name]), name


def test_a_trial_of_before_resumes_from_its_seed_log_and_trains_on(tiny_models, tmp_path):
    log_trial = trial_of(OF_F81EA99, "mezo")
    session = LocalSession(str(tmp_path), resume_from=str(log_trial / "checkpoint_000000"))
    final = run_trial(parse_trial_config(params_of(log_trial, tiny_models)), session)
    before = [json.loads(line) for line in (log_trial / "result.json").read_text().splitlines()]
    assert final["done"] and [r["step"] for r in session.reports] == [8, 8]
    assert final["forward_passes"] == before[-1]["forward_passes"] == 16
    old = ckpt.load(str(log_trial / "checkpoint_000001"), 0).trajectory
    new = ckpt.load(session.checkpoints[-1], 0).trajectory
    assert new[:4] == old[:4]  # the replayed steps are kept as they were
    assert [r.seeds for r in new] == [r.seeds for r in old]  # and the steps go on with the run's seeds
