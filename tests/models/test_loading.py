"""Loading: local paths, families, dtypes, eval mode, and the offline error message."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from mezo_ray.models import ModelSpec, load_model, make_head
from mezo_ray.tasks import Example
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


EMBEDDINGS = ("roberta.embeddings.word_embeddings.weight", "lm_head.decoder.weight")


def test_masked_lm_decoder_is_its_own_copy_of_the_embeddings(micro, sst2_examples):
    """The paper's RoBERTa prompt model has no tie: full MeZO perturbs the two with separate noise."""
    loaded = load(micro, "mlm")
    embeddings, decoder = (loaded.hf_model.get_parameter(name) for name in EMBEDDINGS)
    assert decoder is not embeddings and decoder.data_ptr() != embeddings.data_ptr()
    assert torch.equal(decoder, embeddings)  # the pretrained values, unchanged
    assert set(EMBEDDINGS) <= {name for name, _ in loaded.trainable_named_parameters()}
    head = make_head(task_for("mlm"), loaded)
    torch.manual_seed(0)
    with torch.no_grad():
        before = head.loss(sst2_examples)
        decoder.add_(0.1 * torch.randn_like(decoder))
        after = head.loss(sst2_examples)
    assert torch.equal(embeddings, load(micro, "mlm").hf_model.get_parameter(EMBEDDINGS[0]))
    assert abs(float(after - before)) > 1e-6


@pytest.mark.parametrize(
    ("family", "untie", "tied"), [("mlm", False, True), ("causal", None, True), ("causal", True, False)]
)
def test_untie_word_embeddings_overrides_the_family_default(micro, family, untie, tied):
    hf_model = load(micro, family, untie_word_embeddings=untie).hf_model
    same = hf_model.get_output_embeddings().weight is hf_model.get_input_embeddings().weight
    assert same == tied


@pytest.mark.parametrize("mode", ["lora", "prefix"])
def test_untied_embeddings_stay_frozen_in_lora_and_prefix(micro, mode):
    loaded = load(micro, "mlm", mode)
    hf_model = loaded.hf_model
    assert hf_model.get_output_embeddings().weight is not hf_model.get_input_embeddings().weight
    trainable = {name for name, _ in loaded.trainable_named_parameters()}
    assert not any(name.endswith(EMBEDDINGS) for name in trainable)


@pytest.mark.parametrize("quirk", [True, False])
def test_opt_prompts_start_with_id_0_under_the_papers_bos_quirk(micro, quirk):
    """The paper's code sets ``tokenizer.bos_token_id = 0`` for OPT: prompts start with 0, not "</s>" (2)."""
    loaded = load(micro, "causal", opt_bos_quirk=quirk)
    tok = loaded.tokenizer
    assert loaded.hf_model.config.model_type == "opt" and tok.bos_token_id == 2
    task = task_for("causal")
    ex = Example(fields={"sentence": "the plot was dull ."}, label=0)
    head = make_head(task, loaded)
    scores = []
    for option in task.candidates(ex):
        own = tok(task.prompt(ex) + option)["input_ids"]
        ids = [0 if quirk else tok.bos_token_id, *own[1:]]
        assert loaded.encode(task.prompt(ex) + option) == ids
        n = len(own) - len(tok(task.prompt(ex))["input_ids"])
        with torch.no_grad():
            x = torch.tensor([ids])
            logp = loaded.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].log_softmax(-1)
        scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids))) / n)
    with torch.no_grad():
        torch.testing.assert_close(head.option_scores([ex])[0], torch.tensor(scores), rtol=1e-4, atol=1e-5)
