"""The registry of estimators (``mezo_ray/estimators.py``) against what it describes: the optimizer it
builds, the trial settings it reads, the forward passes a step really takes, and the report's rows."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from mezo_ray.estimators import ENTRIES, ESTIMATOR_NAMES, ESTIMATORS, ROWS, MezoSettings
from mezo_ray.report.load import row_label
from mezo_ray.report.tables import ROW_ORDER
from mezo_ray.train.config import FLAT_FIELDS, flat_fields, parse_trial_config
from mezo_ray.zo import ZeroOrderOptimizer

BASE = {"task": "SST-2", "model": "tiny-mlm", "method": "mezo", "lr": 1e-3, "max_steps": 10, "eval_steps": 10}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_an_entry_builds_its_optimizer_from_trial_settings_and_counts_its_forward_passes(name):
    entry = ENTRIES[name]
    cfg = parse_trial_config({**BASE, "estimator": name})
    settings = cfg.method.estimator
    assert type(settings) is entry.settings and set(entry.flat_keys) <= set(FLAT_FIELDS)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    common = {"lr": 1e-3, "eps": 1e-3, "seed": 0, "weight_decay": 0.0}
    opt = entry.build(model.named_parameters(), settings, max_steps=10, steps_per_epoch=1, **common)
    assert isinstance(opt, ZeroOrderOptimizer)
    keywords = inspect.signature(type(opt).__init__).parameters
    assert all(keyword in keywords for keyword in settings.keywords(10, 1))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    if entry.batched:  # its probes in one forward of N copies of the batch: N losses back
        n = settings.members
        opt.attach(model)
        losses = lambda: nn.functional.cross_entropy(model(x.repeat(n, 1)), y.repeat(n), reduction="none")  # noqa: E731
        opt.step(lambda: losses().view(n, -1).mean(1))
    else:
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    assert opt.forward_passes == settings.forward_passes(1)
    assert cfg.forward_passes() == settings.forward_passes(cfg.schedule.max_steps)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_meZOs_own_options_are_refused_by_name_under_another_estimator(name):
    """One table decides what combines: MeZO's settings class. Each of its options set away from its
    default under another estimator names itself in the error."""
    other = {
        "zo_variant": "momentum",
        "momentum": 0.5,
        "n_perturbations": 2,
        "perturbation_schedule": "linear",
        "perturbation_scale": "param_norm",
        "scale_estimate": "expectation",
        "recompute_norms": True,
        "layer_wise": True,
    }
    assert set(other) == set(flat_fields(MezoSettings)) - {"estimator"}
    for key, value in other.items():
        with pytest.raises(ValueError, match=f"{key}={value!r}: MeZO's own options; estimator='{name}'"):
            parse_trial_config({**BASE, "estimator": name, key: value})
    with pytest.raises(ValueError, match=f"perturbation='forward'.*estimator='{name}'"):
        parse_trial_config({**BASE, "estimator": name, "perturbation": "forward"})


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_what_an_estimator_does_not_combine_with_is_refused_by_its_entry(name):
    entry = ENTRIES[name]
    trial = {**BASE, "estimator": name}
    for asked, allowed, message in (
        ({"weight_decay": 0.1}, entry.weight_decay, "weight_decay=0.1: estimator="),
        ({"fsdp": True}, entry.shards, "fsdp=true: estimator="),
    ):
        if allowed:
            parse_trial_config({**trial, **asked})
        else:
            with pytest.raises(ValueError, match=f"{message}'{name}'"):
                parse_trial_config({**trial, **asked})


def test_every_estimator_is_a_trial_setting_and_a_report_row_in_table_order():
    assert ESTIMATOR_NAMES[0] == "mezo" and set(ESTIMATOR_NAMES[1:]) == set(ESTIMATORS)
    with pytest.raises(ValueError, match="estimator='adam': allowed: " + ", ".join(ESTIMATOR_NAMES)):
        parse_trial_config({**BASE, "estimator": "adam"})
    order = [ROW_ORDER.index(row) for row in ROWS]
    assert order == sorted(order)
    assert row_label("mezo", estimator="lozo", lozo_momentum=0.9) == "LOZO-M"
    assert row_label("mezo", estimator="lozo", lozo_momentum=0.0) == "LOZO"
    assert row_label("mezo", estimator="fzoo", n_probes=4) == "FZOO"


def test_the_registry_loads_no_torch(heavy_modules_loaded):
    assert heavy_modules_loaded("import mezo_ray.estimators") == []
