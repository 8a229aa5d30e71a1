"""Shared fixtures: the tiny offline models (shipped with the package) and one local Ray instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests write nothing to ~/.ray
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# an empty Hugging Face cache of our own: what a user's cache holds must not change the tests
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf-home-")
os.environ["HF_HUB_CACHE"] = os.path.join(os.environ["HF_HOME"], "hub")
os.environ["HF_DATASETS_CACHE"] = os.path.join(os.environ["HF_HOME"], "datasets")
# Without a GPU, Triton's interpreter runs the CUDA path's kernels on CPU tensors (tests/zo/test_triton.py);
# it must be chosen before the kernels are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Under pytest-xdist (`make test` runs `-n auto`) the workers share the cores: one torch thread each.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


#: The files whose tests start Ray. ``make test`` runs ``-n auto --dist loadfile``: each file on one
#: worker, so these run one after another (two Ray instances on one machine clean up each other's
#: placement groups, and trials hang), the other files on the other workers beside them.
RAY_FILES = frozenset({"test_tune.py", "test_cluster.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that starts Ray must live in one of ``RAY_FILES`` (only one of them runs per session).
    Those files go first: the longest unit of work starts at once, the others fill the other workers."""
    for item in items:
        starts_ray = "ray" in item.keywords or "ray_local" in getattr(item, "fixturenames", ())
        if starts_ray and item.path.name not in RAY_FILES:
            raise pytest.UsageError(f"{item.nodeid} starts Ray: move it to one of {sorted(RAY_FILES)}")
    items.sort(key=lambda item: item.path.name not in RAY_FILES)  # stable: each file keeps its order


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


HEAVY_MODULES = ("torch", "transformers", "peft", "datasets", "ray.train", "ray.tune")


@pytest.fixture
def heavy_modules_loaded():
    """Runs Python statements in a fresh interpreter; returns the heavy modules they loaded."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}

    def run(statements: str) -> list[str]:
        loaded = f"sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)"
        code = f"import sys, json\n{statements}\nprint(json.dumps({loaded}))"
        done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run
