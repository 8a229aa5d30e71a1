"""The registry of estimators (``mezo_ray/estimators.py``) against what it describes: the optimizer it
builds, the trial settings it reads, the forward passes a step really takes, and the report's rows."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from mezo_ray.estimators import ESTIMATOR_NAMES, ESTIMATORS, ROWS
from mezo_ray.report.load import row_label
from mezo_ray.report.tables import ROW_ORDER
from mezo_ray.train.config import TrialConfig, parse_trial_config
from mezo_ray.zo import ZeroOrderOptimizer

BASE = {"task": "SST-2", "model": "tiny-mlm", "method": "mezo", "lr": 1e-3}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_an_entry_builds_its_optimizer_from_trial_settings_and_counts_its_forward_passes(name):
    entry = ESTIMATORS[name]
    cfg = parse_trial_config({**BASE, "estimator": name})
    assert set(entry.settings) <= set(TrialConfig.model_fields)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = entry.build(model.named_parameters(), cfg.model_dump(), lr=1e-3, eps=1e-3, seed=0)
    assert isinstance(opt, ZeroOrderOptimizer)
    keywords = inspect.signature(type(opt).__init__).parameters
    assert all(keyword in keywords for keyword in entry.settings.values())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    assert opt.forward_passes == entry.passes_per_step(cfg.model_dump())
    assert cfg.forward_passes() == entry.passes_per_step(cfg.model_dump()) * cfg.max_steps


def test_every_estimator_is_a_trial_setting_and_a_report_row_in_table_order():
    assert ESTIMATOR_NAMES[0] == "mezo" and set(ESTIMATOR_NAMES[1:]) == set(ESTIMATORS)
    assert TrialConfig.model_fields["estimator"].annotation.__args__ == ESTIMATOR_NAMES
    order = [ROW_ORDER.index(row) for row in ROWS]
    assert order == sorted(order)
    assert row_label("mezo", estimator="lozo", lozo_momentum=0.9) == "LOZO-M"
    assert row_label("mezo", estimator="lozo", lozo_momentum=0.0) == "LOZO"
    assert row_label("mezo", estimator="fzoo", n_probes=4) == "FZOO"


def test_the_registry_loads_no_torch(heavy_modules_loaded):
    assert heavy_modules_loaded("import mezo_ray.estimators") == []
