"""Shared fixtures: the tiny offline models (built once, cached) and one local Ray instance."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests write nothing to ~/.ray
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models():
    from mezo_ray.models import ensure_tiny_models

    return ensure_tiny_models()


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for every end-to-end test (starting Ray costs seconds)."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=True,  # as the CLI: Train cleans up placement groups through the State API
        log_to_driver=False,
        object_store_memory=200 * 1024**2,
        _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),  # short: socket paths are limited
    )
    yield ray
    ray.shutdown()
