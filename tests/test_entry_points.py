"""``--list`` and ``--dry-run`` load no torch, transformers, peft or Ray Train / Tune, so they answer
in about a second, on a laptop or a cluster's head node (the report's own check is in tests/report)."""

from __future__ import annotations


def test_list_and_every_dry_run_load_no_torch_transformers_or_ray(heavy_modules_loaded):
    statements = (
        "from mezo_ray.spaces import builtin_spaces\n"
        "from mezo_ray.tune import main\n"
        "assert main(['--list']) == 0 and main(['--list', '--json']) == 0\n"
        "for name in builtin_spaces():\n"
        "    assert main(['--space', name, '--dry-run', '--json']) == 0, name\n"
        "    assert main(['--space', name, '--dry-run']) == 0, name"
    )
    assert heavy_modules_loaded(statements) == []


def test_finding_the_tiny_models_loads_no_transformers_or_peft(heavy_modules_loaded):
    """The CLI's process and every trial process ask for them; transformers' model code costs seconds."""
    statements = "from mezo_ray.models.tiny import ensure_tiny_models\nensure_tiny_models()"
    assert heavy_modules_loaded(statements) == ["torch"]
