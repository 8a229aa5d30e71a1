"""Tiny offline models: the default when no hub weights can be downloaded (tests, demos, CI).

``ensure_tiny_models()`` returns the paths of a tiny masked LM (RoBERTa architecture) and a tiny
causal LM (OPT architecture), each with a byte-level BPE tokenizer trained here on
``synthetic_pretraining_corpus`` (so label words like " great" / " terrible" are single tokens),
briefly pretrained (MLM / next-token, Adam, ~40 s each on 2 CPU cores) and saved with
``save_pretrained`` (safetensors) + the tokenizer. The package ships them, built by
``python -m mezo_ray.models.tiny`` (``SHIPPED``), so every machine gets the same weights without a build.
With other settings they are built once and cached under ``$MEZO_RAY_CACHE`` (default
``~/.cache/mezo_ray``) in a folder keyed by ``TINY_VERSION``, the settings and ``CORPUS_DIGEST``; a
build goes to a temporary folder that is renamed into place, so two processes building at once both
end with one complete copy. Finding the models imports no transformers and writes no corpus: every
trial process and CLI start asks for them.

The corpus ties label words to sentiment with a skew toward " great" (see ``mezo_ray.tasks.synthetic``),
so the causal model ranks reviews by sentiment but answers " great" too often: zero-shot about 0.65 on
``synthetic-sst2-causal``, and MeZO corrects it to about 0.87 within a few hundred steps (the demo).
No dropout: it slows tiny pretraining
several-fold, and MeZO runs in eval() anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mezo_ray.tasks.synthetic import synthetic_pretraining_corpus

if TYPE_CHECKING:  # the build imports them (finding the models needs no transformers: seconds)
    from transformers import GPT2Tokenizer, OPTConfig, RobertaConfig, RobertaTokenizer

TINY_VERSION = "tiny-v2"
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's ids 0..3; <mask> = 4
CORPUS_SENTENCES = 20_000
CORPUS_SEED = 0
#: sha256 of the corpus ``synthetic_pretraining_corpus(CORPUS_SENTENCES, CORPUS_SEED)`` writes (as JSON):
#: the cache key names the corpus by it, since writing the corpus takes a second. A test checks it
#: (tests/models/test_tiny.py): a changed generator fails there until this and the shipped models follow.
CORPUS_DIGEST = "02f02e703e8ef4a97094c8d6e6fdd851b4821816236739df972cb889fc4e8133"
VOCAB_SIZE = 1_000
MAX_POSITIONS = 128
_SIZE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 256}
_PRETRAIN = {"steps": 1500, "batch_size": 64, "lr": 5e-3, "mask_prob": 0.15, "final_word_prob": 1.0}


# The tiny models as built by ``python -m mezo_ray.models.tiny`` (1.5 MB, shipped with the package).
SHIPPED = Path(__file__).resolve().parent / "tiny_models"


@dataclass(frozen=True)
class TinyModels:
    """Local paths (load them with ``ModelSpec(name_or_path=...)``)."""

    mlm: str  # RobertaForMaskedLM + RobertaTokenizer
    causal: str  # OPTForCausalLM + GPT2Tokenizer (OPT-style: BOS "</s>" prepended, pad "<pad>")


def ensure_tiny_models(cache_dir: str | None = None) -> TinyModels:
    """Returns the tiny models' paths: the copy shipped in the package when it was built with the
    current settings (the same weights on every machine, and no build), else a copy built once into
    the cache (about a minute)."""
    final = tiny_models_dir(cache_dir)
    if (SHIPPED / final.name).is_dir():
        final = SHIPPED / final.name
    elif not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(final.parent)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
        try:
            build_tiny_models(building, _corpus())
            os.rename(building, final)  # atomic; fails if another process got there first
        except OSError:
            if not final.is_dir():
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return TinyModels(mlm=str(final / "mlm"), causal=str(final / "causal"))


def _remove_stale_builds(folder: Path, max_age_s: float = 3600.0) -> None:
    """Deletes half-built folders left by killed processes (a live build takes minutes, not an hour)."""
    for path in folder.glob(".building-*"):
        if time.time() - path.stat().st_mtime > max_age_s:
            shutil.rmtree(path, ignore_errors=True)


def tiny_models_dir(cache_dir: str | None = None) -> Path:
    """Returns the cache folder of the tiny models for the current settings (built or not).

    The name carries ``TINY_VERSION`` and a hash of the build settings and the corpus (its size, seed
    and digest), so a changed corpus or recipe gets a fresh build instead of stale models.
    """
    settings = [TINY_VERSION, _SIZE, _PRETRAIN, CORPUS_SENTENCES, CORPUS_SEED, CORPUS_DIGEST]
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
    root = Path(cache_dir or os.environ.get("MEZO_RAY_CACHE") or Path.home() / ".cache" / "mezo_ray")
    return root / "tiny_models" / f"{TINY_VERSION}-{digest[:12]}"


def build_tiny_models(out_dir: str | os.PathLike, corpus: list[str]) -> dict:
    """Trains the tokenizer, pretrains both models on ``corpus``, saves them to ``out_dir/{mlm,causal}``.

    Returns build info (also written to ``out_dir/tiny_info.json``): final losses and seconds.
    """
    from transformers import OPTForCausalLM, RobertaForMaskedLM

    out = Path(out_dir)
    info: dict = {"version": TINY_VERSION, "num_sentences": len(corpus)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlm_tok, causal_tok = make_tokenizers(corpus)
        for name, tok, model, objective in (
            ("mlm", mlm_tok, RobertaForMaskedLM(roberta_config(len(mlm_tok))), _mlm_loss),
            ("causal", causal_tok, OPTForCausalLM(opt_config(len(causal_tok))), _next_token_loss),
        ):
            start = time.perf_counter()
            info[f"{name}_loss"] = _pretrain(model, tok, corpus, objective)
            info[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
            model.eval()
            model.save_pretrained(out / name)
            tok.save_pretrained(out / name)
    (out / "tiny_info.json").write_text(json.dumps(info, indent=2))
    return info


def make_tokenizers(corpus: list[str]) -> tuple[RobertaTokenizer, GPT2Tokenizer]:
    """Returns (RoBERTa-style, OPT-style) tokenizers sharing one byte-level BPE trained on ``corpus``.

    Ids follow RoBERTa (<s>=0, <pad>=1, </s>=2, <unk>=3); the OPT-style one prepends "</s>" as BOS.
    """
    from transformers import GPT2Tokenizer, RobertaTokenizer

    vocab, merges = _train_bpe(corpus)
    mlm_tok = RobertaTokenizer(vocab=vocab, merges=merges)
    causal_tok = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    return mlm_tok, causal_tok


def _corpus() -> list[str]:
    return synthetic_pretraining_corpus(num_sentences=CORPUS_SENTENCES, seed=CORPUS_SEED)


def _train_bpe(corpus: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=list(SPECIAL_TOKENS)
    )
    with tempfile.TemporaryDirectory() as d:
        vocab_file, merges_file = bpe.save_model(d)
        vocab = json.loads(Path(vocab_file).read_text())
        lines = Path(merges_file).read_text().splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return vocab, merges


def roberta_config(vocab_size: int) -> RobertaConfig:
    """Returns the tiny masked LM's config (RoBERTa architecture)."""
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=_SIZE["hidden_size"],
        num_hidden_layers=_SIZE["num_layers"],
        num_attention_heads=_SIZE["num_heads"],
        intermediate_size=_SIZE["ffn_dim"],
        max_position_embeddings=MAX_POSITIONS + 2,  # RoBERTa positions start after padding_idx=1
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def opt_config(vocab_size: int) -> OPTConfig:
    """Returns the tiny causal LM's config (OPT architecture)."""
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=_SIZE["hidden_size"],
        word_embed_proj_dim=_SIZE["hidden_size"],
        num_hidden_layers=_SIZE["num_layers"],
        num_attention_heads=_SIZE["num_heads"],
        ffn_dim=_SIZE["ffn_dim"],
        max_position_embeddings=MAX_POSITIONS,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )


def _pretrain(model: torch.nn.Module, tok, corpus: list[str], objective) -> float:
    """Adam on random sentence batches; returns the mean loss of the last 50 steps."""
    encoded = tok(corpus, truncation=True, max_length=MAX_POSITIONS)["input_ids"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=_PRETRAIN["lr"], weight_decay=0.01)
    steps = _PRETRAIN["steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * (1 - s / steps)
    )
    model.train()
    recent: list[float] = []
    for _ in range(steps):
        idx = torch.randint(len(encoded), (_PRETRAIN["batch_size"],)).tolist()
        ids, attention_mask = _pad_right([encoded[i] for i in idx], tok.pad_token_id)
        loss = objective(model, tok, ids, attention_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        recent = [*recent[-49:], loss.item()]
    return round(sum(recent) / len(recent), 4)


def _mlm_loss(model, tok, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """BERT masking: 15% of real tokens are targets; of those 80% -> <mask>, 10% random, 10% kept.

    Each line's last word (before the final period) is also a target with probability
    ``final_word_prob``: the slot prompts ask about ("It was<mask>."), which plain 15% masking
    visits too rarely for a few hundred steps to pick up its weak link to sentiment.
    """
    special = torch.isin(ids, torch.tensor(tok.all_special_ids)) | (attention_mask == 0)
    targets = (torch.rand(ids.shape) < _PRETRAIN["mask_prob"]) & ~special
    last_word = attention_mask.sum(1) - 3  # ... word . </s>
    chosen = torch.rand(len(ids)) < _PRETRAIN["final_word_prob"]
    targets[torch.arange(len(ids))[chosen], last_word[chosen]] = True
    labels = torch.where(targets, ids, -100)
    roll = torch.rand(ids.shape)
    inputs = torch.where(targets & (roll < 0.8), tok.mask_token_id, ids)
    random_ids = torch.randint(len(SPECIAL_TOKENS), model.config.vocab_size, ids.shape)
    inputs = torch.where(targets & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return model(input_ids=inputs, attention_mask=attention_mask, labels=labels).loss


def _next_token_loss(model, tok, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    labels = torch.where(attention_mask.bool(), ids, -100)
    return model(input_ids=ids, attention_mask=attention_mask, labels=labels).loss


def _pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
    return ids, attention_mask


def ship() -> Path:
    """Builds the tiny models into the package (``SHIPPED``), replacing older builds; returns the folder."""
    final = SHIPPED / tiny_models_dir().name
    shutil.rmtree(SHIPPED, ignore_errors=True)
    final.mkdir(parents=True)
    build_tiny_models(final, _corpus())
    return final


if __name__ == "__main__":
    print(f"built {ship()}; commit it")
