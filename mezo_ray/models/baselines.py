"""Baselines that need no optimizer: zero-shot, in-context learning (causal family), linear probing.

- Zero-shot: ``head.evaluate`` on the untrained model (``zero_shot`` is that, named).
- ICL (protocol §2.3): each test example gets its own 32 demonstrations
  (``mezo_ray.tasks.sample_icl_demonstrations``, the paper's per-example seeds) and the prompt
  ``task.icl_prompt`` builds (gold-verbalised demonstrations joined by blank lines, then the test
  prompt); the head cuts over-long prompts from the left, so early demonstrations go first.
- Linear probing (protocol §1.3 / §2.3): features at the mask (input of the MLM decoder) or the
  final hidden state that predicts the (single-token) option, ``LogisticRegressionCV`` (multinomial
  lbfgs, random_state 0, max_iter 5000, tol 1e-4; intercept for RoBERTa, none for OPT). The probe is
  returned as its own classifier; ``init_head_from_probe`` writes it into the label words' rows of the
  output projection, as both of the paper's codes did before testing (and before LP-MeZO's training).
  OPT ties those rows to its input embeddings, so there the words' input embeddings change too.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mezo_ray.models.heads import CausalLMHead, MaskedLMHead
from mezo_ray.tasks.data import sample_icl_demonstrations

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegressionCV


def zero_shot(head: MaskedLMHead | CausalLMHead, examples: Sequence[Any], batch_size: int = 16) -> dict:
    """Returns ``head.evaluate`` of the untrained model: ``{"metric", "loss"}``."""
    return head.evaluate(examples, batch_size=batch_size)


def icl_contexts(
    task: Any, examples: Sequence[Any], pool: Sequence[Any], num_demos: int = 32, seed: int = 0
) -> list[str]:
    """Returns each test example's ICL prompt: its own ``num_demos`` demonstrations from ``pool``, then it."""
    demos = sample_icl_demonstrations(pool, len(examples), num_demos=num_demos, seed=seed)
    return [task.icl_prompt(ex, d) for ex, d in zip(examples, demos, strict=True)]


def icl_evaluate(
    head: CausalLMHead,
    examples: Sequence[Any],
    pool: Sequence[Any],
    num_demos: int = 32,
    seed: int = 0,
    batch_size: int = 4,
) -> dict:
    """Returns ``{"metric", "loss"}`` of in-context learning on ``examples``, demos drawn from ``pool``."""
    if not isinstance(head, CausalLMHead):
        raise ValueError("in-context learning is a causal-family baseline; got a " + type(head).__name__)
    contexts = icl_contexts(head.task, examples, pool, num_demos=num_demos, seed=seed)
    return head.evaluate(examples, batch_size=batch_size, contexts=contexts)


@dataclass
class LinearProbe:
    """A fitted logistic-regression probe on frozen features of ``head``'s model."""

    head: MaskedLMHead | CausalLMHead
    classifier: LogisticRegressionCV
    label_word_ids: tuple[int, ...]  # class i's token: its row of the output projection
    batch_size: int = 16

    def predict(self, examples: Sequence[Any]) -> list[int]:
        """Returns the probe's class index for each example."""
        return [int(y) for y in self.classifier.predict(self.head.features(examples, self.batch_size))]

    def evaluate(self, examples: Sequence[Any]) -> dict:
        """Returns ``{"metric": task.score(probe predictions)}``."""
        return {"metric": float(self.head.task.score(self.predict(examples), list(examples)))}


@torch.no_grad()
def init_head_from_probe(probe: LinearProbe) -> None:
    """Write a probe into the output projection's rows of the label words (and their biases, masked
    LM), so the prompt head's label-word logits are the probe's decision function. A binary probe's
    single direction w becomes -w/2 and w/2, as the paper's code writes it.

    Masked LM: LP-MeZO's start (Table 19, ``--from_linearhead``); the decoder is untied, as the paper's
    RoBERTa model had it. Causal LM: the paper's OPT linear probe (``large_models/trainer.py``), whose
    ``lm_head`` is tied to ``embed_tokens`` (no ``--untie_emb``): the label words' input embeddings
    become the probe too, which changes the context wherever a label word appears in it.
    """
    decoder = probe.head.loaded.hf_model.get_output_embeddings()
    rows = torch.tensor(probe.label_word_ids, dtype=torch.long, device=decoder.weight.device)
    as_weight = {"dtype": decoder.weight.dtype, "device": decoder.weight.device}
    coef = torch.as_tensor(probe.classifier.coef_, **as_weight)
    bias = torch.as_tensor(probe.classifier.intercept_, **as_weight)
    if coef.shape[0] == 1 and len(rows) == 2:
        coef, bias = torch.cat([-coef / 2, coef / 2]), torch.cat([-bias / 2, bias / 2])
    decoder.weight[rows] = coef
    if probe.classifier.fit_intercept:
        decoder.bias[rows] = bias


def linear_probe(
    head: MaskedLMHead | CausalLMHead,
    train_examples: Sequence[Any],
    batch_size: int = 16,
    early_stopping: bool = False,
    n_jobs: int | None = None,
) -> LinearProbe:
    """Returns a ``LinearProbe`` fitted on ``train_examples`` (classification tasks only).

    ``early_stopping`` is the paper's ``--lp_early_stopping`` (max_iter 1000, tol 0.01, used for LP-MeZO).
    """
    if not isinstance(head, MaskedLMHead | CausalLMHead):
        raise ValueError(
            f"linear probing needs a prompt head (MaskedLMHead / CausalLMHead); got {type(head).__name__}"
        )
    kind = getattr(head.task, "kind", "classification")
    if kind != "classification":
        raise ValueError(
            f"linear probing is for classification tasks; task {head.task.name!r} is {kind!r} "
            "(the paper head-tunes multiple-choice and generation tasks)"
        )
    from sklearn.linear_model import LogisticRegressionCV  # here: 1 s of imports every trial process skips

    features = head.features(train_examples, batch_size)
    labels = np.array([ex.label for ex in train_examples])
    kwargs: dict[str, Any] = {
        "fit_intercept": isinstance(head, MaskedLMHead),
        "random_state": 0,
        "max_iter": 1000 if early_stopping else 5000,
        "tol": 0.01 if early_stopping else 1e-4,
        "n_jobs": n_jobs,
    }
    # scikit-learn >= 1.8 warns unless the L2 penalty and accuracy CV scoring are spelled out.
    params = inspect.signature(LogisticRegressionCV).parameters
    if "l1_ratios" in params:
        kwargs["l1_ratios"] = (0.0,)
    if "scoring" in params:
        kwargs["scoring"] = "accuracy"
    if "use_legacy_attributes" in params:
        kwargs["use_legacy_attributes"] = False
    classifier = LogisticRegressionCV(**kwargs).fit(features, labels)
    if isinstance(head, MaskedLMHead):
        label_word_ids = tuple(head.label_word_ids.tolist())
    else:
        label_word_ids = head.option_token_ids(train_examples)
    return LinearProbe(head, classifier, label_word_ids, batch_size)
