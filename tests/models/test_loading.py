"""Loading: local paths, families, dtypes, eval mode, and the offline error message."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from mezo_ray.models import ModelSpec, load_model, make_head
from tests.models.conftest import load, task_for


@pytest.mark.parametrize("family", ["mlm", "causal"])
def test_local_path_loads_in_eval_mode_with_family_tokenizer(micro, family):
    loaded = load(micro, family)
    assert not loaded.model.training
    assert all(not m.training for m in loaded.model.modules())
    expected = {"mlm": "RobertaForMaskedLM", "causal": "OPTForCausalLM"}[family]
    assert type(loaded.model).__name__ == expected
    assert loaded.tokenizer.padding_side == ("left" if family == "causal" else "right")


def test_sequence_classification_family_loads_with_num_labels(micro):
    loaded = load_model(ModelSpec(micro["mlm"], "seq_cls", num_labels=3))
    assert type(loaded.model).__name__ == "RobertaForSequenceClassification"
    assert loaded.model.config.num_labels == 3
    assert not loaded.model.training


def test_missing_hub_name_offline_suggests_local_path(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="Pass a local path"):
        load_model(ModelSpec("no-such-org/no-such-model", "causal"))


def test_missing_local_directory_names_the_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(ModelSpec(missing, "mlm"))


@pytest.mark.parametrize(
    ("field", "value"), [("family", "encoder"), ("dtype", "fp8"), ("mode", "adapter"), ("num_prefix", 0)]
)
def test_bad_spec_value_names_the_field(field, value):
    kwargs = {"name_or_path": "x", "family": "mlm", field: value}
    with pytest.raises(ValueError, match=f"ModelSpec.{field}"):
        ModelSpec(**kwargs)


@pytest.mark.parametrize("family", ["mlm", "causal"])
@pytest.mark.parametrize("mode", ["full", "lora", "prefix"])
def test_bfloat16_load_gives_bf16_weights_and_a_finite_loss(micro, sst2_examples, family, mode):
    loaded = load(micro, family, mode, dtype="bfloat16")
    assert loaded.hf_model.get_input_embeddings().weight.dtype == torch.bfloat16
    with torch.no_grad():
        loss = make_head(task_for(family), loaded).loss(sst2_examples)
    assert torch.isfinite(loss)


def test_head_for_the_other_family_is_refused(micro):
    with pytest.raises(ValueError, match="family='causal'"):
        make_head(task_for("causal"), load(micro, "mlm"))
