"""Task heads: a task's examples -> a scalar loss (MeZO, FT) and predictions (evaluation).

Both heads batch a whole list of examples into one padded forward and apply the vocabulary
projection only where it is needed (the mask; the option tokens), which gives the same numbers as
full logits at a fraction of the cost on 50K vocabularies.

- ``MaskedLMHead`` (RoBERTa family, protocol §1.1): MLM logits at the ``<mask>`` restricted to the
  task's label words -> C logits -> cross-entropy; prediction = argmax.
- ``CausalLMHead`` (OPT family, protocol §2.3): left padding, left truncation keeping BOS (id 0
  for OPT: the paper's tokenizer quirk, ``LoadedModel.bos_token_id``). For
  ``train_as_classification`` tasks every example expands to one sequence per candidate (one
  sequence in all where the candidates are single tokens after one context: the same scores),
  score = mean log-prob of the candidate's tokens, loss = CE over the scores; otherwise the loss
  is token-level CE on the gold candidate's / target's tokens. Prediction = argmax of the scores
  (one forward over all candidates of a batch), or greedy generation (<= 50 new tokens, cut at the
  first newline, stripped) for generation tasks.
- ``SequenceClassificationHead``: the no-prompt ablation, LM-BFF's ``<s>A</s>B</s>`` cut at the
  task's max length, through a ``seq_cls`` model's classifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mezo_ray.models.loading import LoadedModel
from mezo_ray.models.modes import lm_head_module
from mezo_ray.tasks.base import AnswerEnd


def make_head(task: Any, loaded: LoadedModel) -> MaskedLMHead | CausalLMHead | SequenceClassificationHead:
    """Returns the head for ``task`` and the model's family; raises ValueError if they do not fit.

    A ``seq_cls`` model takes MLM-family tasks without their prompt (the paper's no-prompt ablation).
    """
    heads = {("mlm", "mlm"): MaskedLMHead, ("causal", "causal"): CausalLMHead}
    heads[("mlm", "seq_cls")] = SequenceClassificationHead
    key = (task.family, loaded.spec.family)
    if key not in heads:
        raise ValueError(
            f"task {task.name!r} is in the {task.family!r} family but the model was loaded with "
            f"ModelSpec.family={loaded.spec.family!r}; load it with family={task.family!r}"
        )
    return heads[key](task, loaded)


class _Head:
    """Shared batching: ``loss`` = sum / count of ``loss_terms``; ``evaluate`` chunks and aggregates."""

    def __init__(self, task: Any, loaded: LoadedModel) -> None:
        self.task = task
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer

    def loss(self, examples: Sequence[Any], contexts: Sequence[str] | None = None) -> torch.Tensor:
        """Returns the mean training loss over ``examples`` (scalar; differentiable when grad is on)."""
        total, count = self.loss_terms(examples, contexts)
        return total / count

    def predict(
        self, examples: Sequence[Any], batch_size: int | None = None, contexts: Sequence[str] | None = None
    ) -> list:
        """Returns one prediction per example: class / candidate index, or generated string."""
        return self._run(examples, batch_size, contexts, want_loss=False)[0]

    def evaluate(
        self, examples: Sequence[Any], batch_size: int = 16, contexts: Sequence[str] | None = None
    ) -> dict[str, float]:
        """Returns ``{"metric": task.score(predictions), "loss": mean loss}`` over ``examples``."""
        predictions, loss = self._run(examples, batch_size, contexts, want_loss=True)
        return {"metric": float(self.task.score(predictions, list(examples))), "loss": loss}

    @torch.no_grad()
    def _run(
        self, examples: Sequence[Any], batch_size: int | None, contexts: Sequence[str] | None, want_loss: bool
    ) -> tuple[list, float]:
        predictions: list = []
        total, count = 0.0, 0
        for chunk, chunk_contexts in _chunks(examples, batch_size, contexts):
            preds, terms = self._predict_chunk(chunk, chunk_contexts, want_loss)
            predictions.extend(preds)
            if terms is not None:
                total += float(terms[0])
                count += int(terms[1])
        return predictions, (total / count if count else float("nan"))

    def _device(self) -> torch.device:
        return self.loaded.device

    # subclasses: loss_terms(examples, contexts) -> (loss sum, count), which workers all-reduce;
    # _predict_chunk -> (preds, terms | None)


class _ClassifierHead(_Head):
    """A head whose ``logits(examples)`` are (B, C) class logits: CE loss, argmax prediction."""

    def loss_terms(
        self, examples: Sequence[Any], contexts: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, int]:
        _no_contexts(contexts)
        return self._cross_entropy(self.logits(examples), examples)

    def example_loss_terms(self, examples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: (its loss sum, its count): what ``loss_terms`` sums, kept apart (an estimator
        whose probes share one batched forward scores each probe's copy of the batch)."""
        logits = self.logits(examples).to(self.loaded.loss_dtype)
        labels = torch.tensor([ex.label for ex in examples], device=logits.device)
        losses = F.cross_entropy(logits, labels, reduction="none")
        return losses, torch.ones_like(losses)

    def _predict_chunk(
        self, chunk: Sequence[Any], contexts: Sequence[str] | None, want_loss: bool
    ) -> tuple[list, tuple | None]:
        _no_contexts(contexts)
        logits = self.logits(chunk)
        return logits.argmax(-1).tolist(), (self._cross_entropy(logits, chunk) if want_loss else None)

    def _cross_entropy(self, logits: torch.Tensor, examples: Sequence[Any]) -> tuple[torch.Tensor, int]:
        labels = torch.tensor([ex.label for ex in examples], device=logits.device)
        return F.cross_entropy(logits.to(self.loaded.loss_dtype), labels, reduction="sum"), len(examples)


class MaskedLMHead(_ClassifierHead):
    """MLM prompt head: label-word logits at the mask (LM-BFF / MeZO RoBERTa experiments)."""

    def __init__(self, task: Any, loaded: LoadedModel) -> None:
        super().__init__(task, loaded)
        self.lm_head = _lm_head(loaded)
        self.label_word_ids = torch.tensor(task.label_word_ids(loaded.tokenizer), dtype=torch.long)

    def logits(self, examples: Sequence[Any]) -> torch.Tensor:
        """Returns (B, C) label-word logits at each example's mask, in ``task.label_words`` order."""
        vocab_logits = self.lm_head(self.mask_hidden(examples))  # (B, V), only B rows projected
        return vocab_logits[:, self.label_word_ids.to(vocab_logits.device)]

    def mask_hidden(self, examples: Sequence[Any]) -> torch.Tensor:
        """Returns (B, H) final hidden states at the mask positions."""
        ids, attention_mask, mask_positions = self._encode(examples)
        hidden = self.loaded.hidden_states(ids, attention_mask)
        return hidden[torch.arange(len(examples), device=hidden.device), mask_positions]

    @torch.no_grad()
    def features(self, examples: Sequence[Any], batch_size: int = 16) -> np.ndarray:
        """Returns (N, H) linear-probing features: the input of the vocabulary decoder at the mask."""
        decoder = self.loaded.hf_model.get_output_embeddings()
        out = []
        for chunk, _ in _chunks(examples, batch_size, None):
            out.append(_input_of(decoder, self.lm_head, self.mask_hidden(chunk)).float().cpu())
        return torch.cat(out).numpy()

    def _encode(self, examples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        seqs = [list(self.task.encode_mlm(ex, tok)) for ex in examples]
        positions = []
        for seq in seqs:
            if seq.count(tok.mask_token_id) != 1 or len(seq) > self.loaded.max_length:
                raise ValueError(
                    f"task {self.task.name!r}: encode_mlm gave {len(seq)} tokens with "
                    f"{seq.count(tok.mask_token_id)} mask tokens; need exactly one mask and at most "
                    f"{self.loaded.max_length} tokens"
                )
            positions.append(seq.index(tok.mask_token_id))
        ids, attention_mask = _pad(seqs, tok.pad_token_id, "right", self._device())
        return ids, attention_mask, torch.tensor(positions, device=ids.device)


class CausalLMHead(_Head):
    """Causal-LM prompt head: candidate scoring by mean option log-prob, or greedy generation."""

    max_new_tokens = 50
    #: Where a generated answer ends. ``newline``: at its first newline character, so a "\n\n" the model
    #: emits ends it too. ``stop_token``: the paper's code (large_models/run.py): generation stops at the
    #: "\n" or EOS token and the whole decoded text, stripped, is the answer; OPT's "\n\n" is another
    #: token, so the text after it stays in the answer (and lowers its F1).
    answer_end: AnswerEnd = "newline"

    def __init__(self, task: Any, loaded: LoadedModel) -> None:
        super().__init__(task, loaded)
        self.lm_head = _lm_head(loaded)
        tok = self.tokenizer
        self.stop_ids = sorted({tok.encode("\n", add_special_tokens=False)[-1], tok.eos_token_id})

    # ---- scoring -------------------------------------------------------------------------------
    def option_scores(
        self, examples: Sequence[Any], contexts: Sequence[str] | None = None
    ) -> list[torch.Tensor]:
        """Returns, per example, the (C,) mean log-probs of its candidates' tokens (one forward)."""
        return self._all_candidates(examples, contexts)[0]

    @torch.no_grad()
    def features(
        self, examples: Sequence[Any], batch_size: int = 16, contexts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Returns (N, H) linear-probing features: the final hidden state that predicts the option token.

        Needs single-token candidates (then it is the same state for every candidate; the paper's
        LP writes one lm_head row per option token). Multi-token options: the paper head-tunes instead.
        """
        out = []
        for chunk, chunk_contexts in _chunks(examples, batch_size, contexts):
            rows, owners = self._rows(chunk, chunk_contexts, gold_only=False)
            shared = _shared_contexts(rows, owners)
            if shared is None:
                raise ValueError(
                    f"linear probing on task {self.task.name!r} needs single-token candidates after one "
                    f"context; {self.task.candidates(chunk[0])} are not (the paper head-tunes such tasks)"
                )
            out.append(self._last_context_hidden(shared[0]).float().cpu())
        return torch.cat(out).numpy()

    def option_token_ids(self, examples: Sequence[Any]) -> tuple[int, ...]:
        """Returns the token each candidate adds to its context, the same in every example: the label
        words' rows of ``lm_head`` (where the paper's OPT linear probe wrote its classes)."""
        seen = set()
        for i, ex in enumerate(examples):
            rows = [self._encode(self._context(ex, None, i), o) for o in self.task.candidates(ex)]
            if any(option_len != 1 for _, option_len in rows):
                raise ValueError(f"task {self.task.name!r}: candidates of more than one token have no row")
            seen.add(tuple(seq[-1] for seq, _ in rows))
        if len(seen) != 1:
            raise ValueError(
                f"task {self.task.name!r}: its candidates are other tokens in other contexts {sorted(seen)}; "
                "a probe written into lm_head needs one token per class"
            )
        return seen.pop()

    def loss_terms(
        self, examples: Sequence[Any], contexts: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, int]:
        if self.task.train_as_classification:
            scores = self.option_scores(examples, contexts)
            return _classification_loss(scores, [ex.label for ex in examples]), len(examples)
        rows, _ = self._rows(examples, contexts, gold_only=True)
        token_logp, valid = self._token_logprobs(rows)
        return -(token_logp * valid).sum(), int(valid.sum())

    def example_loss_terms(self, examples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: (its loss sum, its count) as ``loss_terms`` counts them (tokens of the gold
        answer, or one per example trained as classification), kept apart."""
        if self.task.train_as_classification:
            scores = self.option_scores(examples, None)
            losses = torch.stack(
                [_classification_loss([s], [ex.label]) for s, ex in zip(scores, examples, strict=True)]
            )
            return losses, torch.ones_like(losses)
        rows, _ = self._rows(examples, None, gold_only=True)  # one row per example
        token_logp, valid = self._token_logprobs(rows)
        return -(token_logp * valid).sum(1), valid.sum(1).to(token_logp.dtype)

    def _predict_chunk(
        self, chunk: Sequence[Any], contexts: Sequence[str] | None, want_loss: bool
    ) -> tuple[list, tuple | None]:
        if self.task.kind == "generation":
            terms = self.loss_terms(chunk, contexts) if want_loss else None
            return self._generate(chunk, contexts), terms
        scores, token_logp, valid, owners = self._all_candidates(chunk, contexts)
        terms = None
        if want_loss and self.task.train_as_classification:
            terms = (_classification_loss(scores, [ex.label for ex in chunk]), len(chunk))
        elif want_loss:  # token-level CE on the gold candidates' rows of the same forward
            gold = torch.tensor(
                [owners.index(i) + ex.label for i, ex in enumerate(chunk)], device=valid.device
            )
            terms = (-(token_logp[gold] * valid[gold]).sum(), int(valid[gold].sum()))
        return [int(s.argmax()) for s in scores], terms

    def _all_candidates(
        self, examples: Sequence[Any], contexts: Sequence[str] | None
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, list[int]]:
        """One forward over every candidate of every example: per-example scores, token log-probs, rows.

        Where each example's candidates are single tokens after one shared context (SST-2's " great" /
        " terrible"), the context runs once and the candidates are read off its last position's
        log-softmax: the same numbers as one row per candidate (causal attention: the context's states
        never see the option), at 1/C of the forward's cost.
        """
        rows, owners = self._rows(examples, contexts, gold_only=False)
        shared = _shared_contexts(rows, owners)
        if shared is None:
            token_logp, valid = self._token_logprobs(rows)
        else:
            context_rows, option_ids = shared
            logits = self.lm_head(self._last_context_hidden(context_rows)).to(self.loaded.loss_dtype)
            logp = logits.log_softmax(-1)[torch.tensor(owners, device=logits.device)]  # one row per candidate
            token_logp = logp.gather(-1, torch.tensor(option_ids, device=logits.device)[:, None])
            valid = torch.ones_like(token_logp)
        scores = (token_logp * valid).sum(1) / valid.sum(1)
        return _split(scores, owners, len(examples)), token_logp, valid, owners

    def _last_context_hidden(self, context_rows: list[list[int]]) -> torch.Tensor:
        """(E, H) final hidden state of each context's last token (left padding: the last column)."""
        ids, attention_mask = _pad(context_rows, self.tokenizer.pad_token_id, "left", self._device())
        return self.loaded.hidden_states(ids, attention_mask)[:, -1]

    def _token_logprobs(self, rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (N, K) log-probs of each row's last K tokens and the (N, K) 0/1 mask of option tokens."""
        seqs = [seq for seq, _ in rows]
        option_lens = torch.tensor([n for _, n in rows], device=self._device())
        ids, attention_mask = _pad(seqs, self.tokenizer.pad_token_id, "left", self._device())
        k = int(option_lens.max())
        hidden = self.loaded.hidden_states(ids, attention_mask)
        logits = self.lm_head(hidden[:, -k - 1 : -1]).to(self.loaded.loss_dtype)  # t predicts token t + 1
        token_logp = logits.log_softmax(-1).gather(-1, ids[:, -k:, None]).squeeze(-1)
        valid = (torch.arange(k, device=ids.device)[None, :] >= k - option_lens[:, None]).to(token_logp.dtype)
        return token_logp, valid

    # ---- encoding ------------------------------------------------------------------------------
    def _rows(
        self, examples: Sequence[Any], contexts: Sequence[str] | None, gold_only: bool
    ) -> tuple[list[tuple[list[int], int]], list[int]]:
        rows, owners = [], []
        for i, ex in enumerate(examples):
            context = self._context(ex, contexts, i)
            if self.task.kind == "generation":
                options = [self.task.target(ex)]
            elif gold_only:
                options = [self.task.candidates(ex)[ex.label]]
            else:
                options = list(self.task.candidates(ex))
            for option in options:
                rows.append(self._encode(context, option))
                owners.append(i)
        return rows, owners

    def _context(self, ex: Any, contexts: Sequence[str] | None, i: int) -> str:
        return contexts[i] if contexts is not None else self.task.prompt(ex)

    def _encode(self, context: str, option: str) -> tuple[list[int], int]:
        """Returns (ids of context + option, number of option tokens), as the paper's ``encode_prompt``.

        The option is the tokens the full text has beyond the context alone; over-long rows are cut
        from the left, keeping BOS (id 0 for OPT, see ``LoadedModel.bos_token_id``).
        """
        context = context.strip(" ")
        full = self.loaded.encode(f"{context}{option}".strip(" "))
        option_len = len(full) - len(self.loaded.encode(context))
        if option_len < 1:
            raise ValueError(f"task {self.task.name!r}: option {option!r} adds no tokens to its context")
        full = self._truncate(full, self._longest_row())
        return full, min(option_len, len(full) - 1)

    def _longest_row(self) -> int:
        """Tokens a row may have: a generation task's rows, those with the gold answer too, leave room
        for the answer generated (the paper's ``encode_prompt`` with ``max_new_tokens``: 1998 for OPT)."""
        room = self.max_new_tokens if self.task.kind == "generation" else 0
        return self.loaded.max_length - room

    def _truncate(self, ids: list[int], max_length: int) -> list[int]:
        if len(ids) <= max_length:
            return ids
        bos = self.loaded.bos_token_id
        if bos is not None and ids[0] == bos:
            return ids[:1] + ids[len(ids) - max_length + 1 :]
        return ids[len(ids) - max_length :]

    # ---- generation ----------------------------------------------------------------------------
    def _generate(self, examples: Sequence[Any], contexts: Sequence[str] | None) -> list[str]:
        tok = self.tokenizer
        limit = self.loaded.max_length - self.max_new_tokens
        seqs = [
            self._truncate(self.loaded.encode(self._context(ex, contexts, i).strip(" ")), limit)
            for i, ex in enumerate(examples)
        ]
        ids, attention_mask = _pad(seqs, tok.pad_token_id, "left", self._device())
        new = self.loaded.generate(ids, attention_mask, self.max_new_tokens, self.stop_ids, tok.pad_token_id)
        # cleaned as the paper's transformers (4.28; every release before 4.45) decoded: " 's" -> "'s"
        # (5.x ignores clean_up_tokenization_spaces for BPE tokenizers, so its clean-up is called here)
        texts = tok.batch_decode(new, skip_special_tokens=True)
        return [self.answer(tok.clean_up_tokenization(text)) for text in texts]

    def answer(self, generated: str) -> str:
        """The answer in the decoded generated text, by ``answer_end``."""
        return (generated.split("\n")[0] if self.answer_end == "newline" else generated).strip()


class SequenceClassificationHead(_ClassifierHead):
    """No-prompt ablation (paper Table 5): ``<s>A</s>B</s>`` into a classification head."""

    def logits(self, examples: Sequence[Any]) -> torch.Tensor:
        """Returns (B, num_labels) classifier logits."""
        ids, attention_mask = _pad(
            [self.encode(ex) for ex in examples], self.tokenizer.pad_token_id, "right", self._device()
        )
        return self.loaded.logits(ids, attention_mask)

    def encode(self, ex: Any) -> list[int]:
        """Returns LM-BFF's no-prompt ids: ``<s>A</s>B</s>`` (one separator), tail-cut at the task's length.

        Not the tokenizer's pair encoding (``<s>A</s></s>B</s>``, cut at 512): the paper's Table 5
        baseline came from LM-BFF's own ``tokenize_multipart_input``.
        """
        tok = self.tokenizer
        ids = [] if tok.cls_token_id is None else [tok.cls_token_id]
        for name in self.task.input_fields:
            ids += [*tok.encode(ex.fields[name], add_special_tokens=False), tok.sep_token_id]
        max_length = min(getattr(self.task, "max_length", None) or math.inf, self.loaded.max_length)
        return ids[:max_length]


# ---- helpers -----------------------------------------------------------------------------------
def _lm_head(loaded: LoadedModel) -> torch.nn.Module:
    head = lm_head_module(loaded.hf_model)
    if head is None:
        raise ValueError(
            f"model {loaded.spec.name_or_path!r} ({type(loaded.hf_model).__name__}) has no `lm_head`; "
            "prompt heads need a masked or causal LM (ModelSpec.family 'mlm' or 'causal')"
        )
    return head


def _input_of(module: torch.nn.Module, caller: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Returns the input ``module`` receives while ``caller(x)`` runs (e.g. the decoder inside lm_head)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        caller(x)
    finally:
        handle.remove()
    return seen[-1]


def _pad(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, span] = 1
    return ids.to(device), attention_mask.to(device)


def _shared_contexts(
    rows: list[tuple[list[int], int]], owners: list[int]
) -> tuple[list[list[int]], list[int]] | None:
    """(one context per example, each row's option token) when every row is its example's context plus
    one option token; else None."""
    contexts: dict[int, list[int]] = {}
    for (seq, option_len), owner in zip(rows, owners, strict=True):
        if option_len != 1 or contexts.setdefault(owner, seq[:-1]) != seq[:-1]:
            return None
    return list(contexts.values()), [seq[-1] for seq, _ in rows]


def _split(values: torch.Tensor, owners: list[int], n: int) -> list[torch.Tensor]:
    counts = [owners.count(i) for i in range(n)]
    return list(values.split(counts))


def _classification_loss(scores: list[torch.Tensor], labels: list[int]) -> torch.Tensor:
    """Sum over examples of CE(candidate scores, gold); examples may have different numbers of candidates."""
    if len({s.numel() for s in scores}) == 1:
        target = torch.tensor(labels, device=scores[0].device)
        return F.cross_entropy(torch.stack(scores), target, reduction="sum")
    return sum(
        F.cross_entropy(s[None], torch.tensor([y], device=s.device))
        for s, y in zip(scores, labels, strict=True)
    )


def _chunks(examples: Sequence[Any], batch_size: int | None, contexts: Sequence[str] | None):
    size = batch_size or max(1, len(examples))
    for start in range(0, len(examples), size):
        chunk_contexts = None if contexts is None else contexts[start : start + size]
        yield examples[start : start + size], chunk_contexts


def _no_contexts(contexts: Sequence[str] | None) -> None:
    if contexts is not None:
        raise ValueError("in-context demonstrations (contexts) are for the causal family only")
