"""The embedded tiny models: shipped, or built once and cached; loadable, with single-token label words."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from mezo_ray.models import ModelSpec, ensure_tiny_models, load_model, make_head, tiny
from mezo_ray.tasks import synthetic_sst2_examples
from tests.models.conftest import task_for


@pytest.fixture
def quick_build(monkeypatch):
    """Shrink the build to seconds (different settings, so a different cache key)."""
    monkeypatch.setattr(tiny, "CORPUS_SENTENCES", 300)
    monkeypatch.setitem(tiny._PRETRAIN, "steps", 3)


def test_tiny_models_are_built_once_then_served_from_the_cache(tmp_path, quick_build, monkeypatch):
    first = ensure_tiny_models(cache_dir=str(tmp_path))
    for family, path in (("mlm", first.mlm), ("causal", first.causal)):
        assert (Path(path) / "model.safetensors").is_file()
        loaded = load_model(ModelSpec(path, family))
        task = task_for(family)
        if family == "mlm":
            assert len(task.label_word_ids(loaded.tokenizer)) == 2  # raises unless single tokens
        head = make_head(task, loaded)
        assert 0.0 <= head.evaluate(synthetic_sst2_examples(num=8, seed=0))["metric"] <= 1.0

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although the cache has the models")

    monkeypatch.setattr(tiny, "build_tiny_models", no_rebuild)
    assert ensure_tiny_models(cache_dir=str(tmp_path)) == first


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MEZO_RAY_CACHE", str(tmp_path))
    assert tiny.tiny_models_dir().is_relative_to(tmp_path)
    monkeypatch.delenv("MEZO_RAY_CACHE")
    assert tiny.tiny_models_dir().is_relative_to(Path.home() / ".cache" / "mezo_ray")


def test_a_concurrent_build_that_finishes_first_wins_cleanly(tmp_path, quick_build, monkeypatch):
    """Two processes building at once: the loser's rename fails, it uses the winner's copy."""
    real_build = tiny.build_tiny_models
    final = tiny.tiny_models_dir(str(tmp_path))

    def build_while_another_process_finishes(out_dir, corpus):
        info = real_build(out_dir, corpus)
        shutil.copytree(out_dir, final)  # the other process renames its complete copy into place first
        (final / "winner").touch()
        return info

    monkeypatch.setattr(tiny, "build_tiny_models", build_while_another_process_finishes)
    models = ensure_tiny_models(cache_dir=str(tmp_path))
    assert Path(models.mlm).parent == final and (final / "winner").is_file()
    assert (Path(models.causal) / "model.safetensors").is_file()
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no half-built folder left


def test_half_built_folders_of_killed_processes_are_removed(tmp_path, quick_build):
    root = tiny.tiny_models_dir(str(tmp_path)).parent
    (root / ".building-old").mkdir(parents=True)
    (root / ".building-live").mkdir()
    os.utime(root / ".building-old", (0, 0))
    ensure_tiny_models(cache_dir=str(tmp_path))
    assert not (root / ".building-old").exists()
    assert (root / ".building-live").exists()  # maybe another process's build in progress


def test_the_package_ships_the_tiny_models_of_the_current_settings(tmp_path):
    """Changing the corpus or the recipe without `python -m mezo_ray.models.tiny` fails here, not by
    every machine quietly building its own, slightly different models."""
    corpus = json.dumps(tiny._corpus()).encode()  # the corpus the cache key names by its digest
    assert hashlib.sha256(corpus).hexdigest() == tiny.CORPUS_DIGEST, "the corpus changed: set CORPUS_DIGEST"
    shipped = tiny.SHIPPED / tiny.tiny_models_dir().name
    assert shipped.is_dir(), f"run `python -m mezo_ray.models.tiny` to build {shipped.name} and commit it"
    assert [p.name for p in tiny.SHIPPED.iterdir()] == [shipped.name]  # no stale build ships too
    models = ensure_tiny_models(cache_dir=str(tmp_path))
    assert Path(models.mlm).parent == shipped and not any(tmp_path.iterdir())  # nothing was built
