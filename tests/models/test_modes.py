"""Fine-tuning modes: exactly the mode's parameters train, and they really change the forward."""

from __future__ import annotations

import pytest
import torch

from mezo_ray.models import ModelSpec, load_model, make_head
from mezo_ray.models.modes import prefix_init_ids
from tests.models.conftest import load, task_for

FAMILIES = ["mlm", "causal"]
MODES = ["full", "lora", "prefix", "head", "lm_head", "lora+lm_head"]
HEAD = {"mlm": {"lm_head.decoder.weight", "lm_head.bias"}, "causal": {"lm_head.weight"}}
LM_HEAD = {  # the whole lm_head module (RoBERTa's decoder bias is lm_head.bias)
    "mlm": {f"lm_head.{n}" for n in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias")}
    | HEAD["mlm"],
    "causal": HEAD["causal"],
}
ATTENTION = {  # (module path of layer i's attention, query name, value name)
    "mlm": ("roberta.encoder.layer.{i}.attention.self", "query", "value"),
    "causal": ("model.decoder.layers.{i}.self_attn", "q_proj", "v_proj"),
}


def expected_trainable(loaded, family: str, mode: str) -> set[str]:
    if mode == "full":
        return {name for name, _ in loaded.hf_model.named_parameters()}
    if mode == "prefix":
        return {"prompt_encoder.default.embedding.weight"}
    if mode == "head":
        return HEAD[family]
    if mode == "lm_head":
        return LM_HEAD[family]
    path, query, value = ATTENTION[family]
    lora = {
        f"base_model.model.{path.format(i=i)}.{proj}.lora_{ab}.default.weight"
        for i in range(loaded.hf_model.config.num_hidden_layers)
        for proj in (query, value)
        for ab in "AB"
    }
    return lora | {f"base_model.model.{n}" for n in LM_HEAD[family]} if mode == "lora+lm_head" else lora


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_trainable_parameters_are_exactly_the_modes(micro, family, mode):
    loaded = load(micro, family, mode)
    trainable = dict(loaded.trainable_named_parameters())
    assert set(trainable) == expected_trainable(loaded, family, mode)
    frozen = [n for n, p in loaded.model.named_parameters() if n not in trainable]
    assert all(not p.requires_grad for n, p in loaded.model.named_parameters() if n in frozen)
    if mode != "full":
        assert frozen  # the base model is there, frozen


@pytest.mark.parametrize("family", FAMILIES)
def test_head_mode_trains_an_untied_copy_of_the_output_projection(micro, family):
    loaded = load(micro, family, "head")
    model = loaded.hf_model
    output, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert output is not embeddings and torch.equal(output, embeddings)  # same values, its own storage
    assert output.requires_grad and not embeddings.requires_grad


@pytest.mark.parametrize(
    ("family", "classifier"),
    [
        (
            "mlm",
            {
                "classifier.dense.weight",
                "classifier.dense.bias",
                "classifier.out_proj.weight",
                "classifier.out_proj.bias",
            },
        ),
        ("causal", {"score.weight"}),
    ],
)
def test_head_mode_of_a_classifier_trains_the_classifier_alone(micro, family, classifier):
    """``prompt: false`` with ``mode: head``: a linear probe of the frozen encoder (RoBERTa's
    ``classifier``, a decoder's ``score``), not the missing LM head."""
    loaded = load_model(ModelSpec(micro[family], "seq_cls", mode="head", num_labels=2))
    assert {n for n, _ in loaded.trainable_named_parameters()} == classifier


@pytest.mark.parametrize("mode", ["lora", "prefix"])
def test_adapters_are_float32_or_in_the_models_dtype_as_the_arithmetic_says(micro, mode):
    """peft keeps adapters in float32 over a float16 model; the paper's OPT runs kept them in fp16."""
    for arithmetic, dtype in (("float32", torch.float32), ("model", torch.float16)):
        loaded = load(micro, "causal", mode, dtype="float16", arithmetic=arithmetic)
        assert {p.dtype for _, p in loaded.trainable_named_parameters()} == {dtype}, arithmetic


def test_lora_has_rank_alpha_and_no_dropout(micro):
    loaded = load(micro, "causal", "lora", lora_r=4, lora_alpha=12)
    layer = loaded.hf_model.model.decoder.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.shape == (4, 64)
    assert layer.lora_B["default"].weight.shape == (64, 4)
    assert layer.scaling["default"] == 3.0
    assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_starts_as_the_base_model(micro, sst2_examples, family):
    """B = 0 at init: the LoRA model computes exactly the base model's loss."""
    task = task_for(family)
    with torch.no_grad():
        base = make_head(task, load(micro, family)).loss(sst2_examples)
        lora = make_head(task, load(micro, family, "lora")).loss(sst2_examples)
    torch.testing.assert_close(lora, base)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_perturbing_trainable_parameters_changes_the_eval_loss(micro, sst2_examples, family, mode):
    """The paper's RoBERTa LoRA was inert (merged on eval); here every mode's parameters count."""
    loaded = load(micro, family, mode)
    head = make_head(task_for(family), loaded)
    params = [p for _, p in loaded.trainable_named_parameters()]
    torch.manual_seed(1)
    z = [torch.randn_like(p) for p in params]
    with torch.no_grad():
        before = head.loss(sst2_examples)
        for p, dz in zip(params, z, strict=True):
            p.add_(0.1 * dz)
        after = head.loss(sst2_examples)
        for p, dz in zip(params, z, strict=True):
            p.sub_(0.1 * dz)
        restored = head.loss(sst2_examples)
    assert not loaded.model.training
    assert abs(float(after - before)) > 1e-6  # an inert (merged) adapter gives exactly 0
    torch.testing.assert_close(restored, before)


def test_causal_prefix_is_the_random_tokens_as_real_context(micro):
    """Prefix from real activations: the prefixed model reads x as the plain model reads [tokens, x]."""
    loaded = load(micro, "causal", "prefix", num_prefix=5, init_seed=7)
    plain = load(micro, "causal").model
    tokens = prefix_init_ids(plain.config.vocab_size, 5, seed=7)
    x = torch.tensor([[2, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        prefixed = loaded.logits(x, torch.ones_like(x))
        reference = plain(input_ids=torch.cat([tokens, x], dim=1)).logits[:, 5:]
    torch.testing.assert_close(prefixed, reference, rtol=1e-4, atol=1e-5)


def test_masked_lm_prefix_is_the_random_tokens_as_real_context(micro):
    """Same check for RoBERTa; one layer, since deeper bidirectional keys of the tokens would see x."""
    loaded = load_model(ModelSpec(micro["mlm_1layer"], "mlm", mode="prefix", init_seed=3))
    plain = load_model(ModelSpec(micro["mlm_1layer"], "mlm")).model
    tokens = prefix_init_ids(plain.config.vocab_size, 5, seed=3)
    x = torch.tensor([[0, 50, 60, 4, 70, 2]])
    with torch.no_grad():
        prefixed = loaded.logits(x, torch.ones_like(x))
        reference = plain(input_ids=torch.cat([tokens, x], dim=1)).logits[:, 5:]
    torch.testing.assert_close(prefixed, reference, rtol=1e-4, atol=1e-5)


def test_sequence_classifier_prefix_is_the_random_tokens_as_real_context(micro):
    """The no-prompt classifier reads x's <s> after the prefix as the plain one does after the tokens."""
    spec = {"name_or_path": micro["mlm_1layer"], "family": "seq_cls", "num_labels": 3}
    torch.manual_seed(0)  # the new classifier's weights
    loaded = load_model(ModelSpec(**spec, mode="prefix", init_seed=3))
    torch.manual_seed(0)
    plain = load_model(ModelSpec(**spec)).model
    tokens = prefix_init_ids(plain.config.vocab_size, 5, seed=3)
    x = torch.tensor([[0, 50, 60, 4, 70, 2]])
    with torch.no_grad():
        prefixed = loaded.logits(x, torch.ones_like(x))
        hidden = plain.roberta(input_ids=torch.cat([tokens, x], dim=1)).last_hidden_state
        reference = plain.classifier(hidden[:, 5:])
    torch.testing.assert_close(prefixed, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_xgblora_merge_keeps_the_function_and_restarts_the_adapter(micro, sst2_examples, family):
    from mezo_ray.models.modes import merge_lora_and_restart

    loaded = load(micro, family, "lora")
    head = make_head(task_for(family), loaded)
    named = dict(loaded.trainable_named_parameters())
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in named.items():  # a trained adapter: B no longer 0
            if "lora_B" in name:
                p.normal_(0, 0.05)
        before = head.loss(sst2_examples)
        a_before = {n: p.clone() for n, p in named.items() if "lora_A" in n}
        assert merge_lora_and_restart(loaded.model, seed=7) == 2 * loaded.hf_model.config.num_hidden_layers
        after = head.loss(sst2_examples)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)  # the same function, merged
    assert all(not p.any() for n, p in named.items() if "lora_B" in n)  # a fresh adapter: B = 0
    assert all(not torch.equal(named[n], a) for n, a in a_before.items())  # and a new A
    assert dict(loaded.trainable_named_parameters()).keys() == named.keys()  # the same tensors train on
