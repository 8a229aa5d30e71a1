"""Seed logs written before the zo core was split into parts (``data/seed_logs_before_the_split.json``,
written at 15ecca9 by a 7-step run of each estimator on a small bfloat16 model) still replay, bit for
bit: the same settings pass the resume check, and the replayed weights hash to the run's own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mezo_ray.zo import FZOO, LOZO, HiZOO, MeZO, StepRecord, replay

LOGS = json.loads((Path(__file__).parent / "data" / "seed_logs_before_the_split.json").read_text())
BUILD = {  # as the run that wrote them built each
    "mezo-adam-n2": lambda p: MeZO(p, lr=1e-2, variant="adam", n_perturbations=2),
    "mezo-sgd-wd": lambda p: MeZO(p, lr=1e-2, weight_decay=0.1),
    "fzoo": lambda p: FZOO(p, lr=1e-2, n_probes=4),
    "hizoo": lambda p: HiZOO(p, lr=1e-2, weight_decay=0.1, hessian_smooth=0.5),
    "lozo-m": lambda p: LOZO(p, lr=1e-2, rank=2, interval=3, beta=0.9),
}


def start_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.bfloat16)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_a_seed_log_written_before_the_split_replays_bit_for_bit(name):
    log = LOGS[name]
    model = start_model()
    opt = BUILD[name](model.named_parameters())
    replay(opt, [StepRecord.from_dict(d) for d in log["trajectory"]], log["state"])
    bits = b"".join(p.detach().view(torch.int16).numpy().tobytes() for p in model.parameters())
    assert hashlib.sha256(bits).hexdigest() == log["sha256"]
    assert opt.forward_passes == log["state"]["forward_passes"]
    assert {k: v for k, v in opt.state_dict()["mezo"].items() if k != "scales"} == log["state"]
