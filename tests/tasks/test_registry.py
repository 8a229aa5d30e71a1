"""Looking tasks up by name."""

import pickle

import pytest

from mezo_ray.tasks import CausalTask, MLMTask, get_task, list_tasks


def test_every_paper_task_is_registered_in_its_family():
    assert list_tasks("mlm") == ["MNLI", "RTE", "SNLI", "SST-2", "sst-5", "synthetic-sst2", "trec"]
    assert list_tasks("causal") == [
        "BoolQ",
        "CB",
        "Copa",
        "DROP",
        "MultiRC",
        "RTE",
        "ReCoRD",
        "SQuAD",
        "SST2",
        "WIC",
        "WSC",
        "synthetic-sst2-causal",
    ]
    assert len(list_tasks()) == 18  # RTE is listed once


def test_family_picks_the_rte_variant():
    assert isinstance(get_task("RTE", family="mlm"), MLMTask)
    assert isinstance(get_task("RTE", family="causal"), CausalTask)
    with pytest.raises(ValueError, match=r"exists in both families.*family='mlm' or family='causal'"):
        get_task("RTE")


def test_unique_names_need_no_family():
    assert get_task("SST-2").family == "mlm"
    assert get_task("SST2").family == "causal"


def test_unknown_name_lists_known_ones_and_suggests():
    with pytest.raises(
        ValueError, match=r"unknown task 'sst2'; known tasks: \['BoolQ'.*Did you mean \['SST2', 'SST-2'"
    ):
        get_task("sst2")
    with pytest.raises(ValueError, match="unknown task 'SST2' in family 'mlm'"):
        get_task("SST2", family="mlm")
    with pytest.raises(ValueError, match=r"family='roberta'; allowed: \['mlm', 'causal'\]"):
        list_tasks("roberta")


@pytest.mark.parametrize("family", ["mlm", "causal"])
def test_tasks_survive_pickling_for_ray_workers(family):
    for name in list_tasks(family):
        task = get_task(name, family=family)
        assert pickle.loads(pickle.dumps(task)) == task
