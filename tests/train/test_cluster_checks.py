"""The cluster checks made before a search starts (``mezo_ray/train/cluster.py``): a trial that no node
can hold is refused, not left waiting forever."""

from __future__ import annotations

import pytest

from mezo_ray.train.cluster import check_resources
from mezo_ray.train.config import parse_trial_config

TRIAL = {"task": "synthetic-sst2", "model": "tiny-mlm", "max_steps": 4, "eval_steps": 2}


def test_a_worker_larger_than_every_node_is_refused():
    configs = [parse_trial_config({**TRIAL, "cpus_per_worker": 3})]
    two_nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    with pytest.raises(ValueError, match=r"asks for 3 CPU.* no node has that \(largest: 2 CPUs"):
        check_resources(configs, None, {"CPU": 4.0}, two_nodes)  # the cluster's total would fit it
    assert check_resources(configs, None, {"CPU": 6.0}, [*two_nodes, {"CPU": 3.0}]) == 2


def test_strict_spread_workers_need_as_many_nodes_as_workers():
    spread = {**TRIAL, "num_workers": 2, "fsdp": True, "placement_strategy": "STRICT_SPREAD"}
    configs = [parse_trial_config(spread)]
    with pytest.raises(ValueError, match=r"each of the 2 workers on its own node, but 1 of the cluster's 2"):
        check_resources(configs, None, {"CPU": 6.0}, [{"CPU": 4.0}, {"CPU": 0.5}])  # one node could hold both
    assert check_resources(configs, None, {"CPU": 2.0}, [{"CPU": 1.0}, {"CPU": 1.0}]) == 1


def test_a_trial_needing_more_gpus_than_the_cluster_has_is_refused():
    configs = [parse_trial_config({**TRIAL, "gpus_per_worker": 1})]
    with pytest.raises(ValueError, match=r"asks for 1 GPU\(s\) but the cluster has 0"):
        check_resources(configs, None, {"CPU": 4.0, "GPU": 0.0})
    assert check_resources(configs, 3, {"CPU": 4.0, "GPU": 2.0}) == 2  # two GPUs: two at once
