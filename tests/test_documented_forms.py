"""Every form the README and search_spaces/examples/ document runs: the task YAML (as written, with
labels as a plain list, and its causal form) trains end to end on the tiny models, and each documented
`python -m mezo_ray.tune` command is planned (validated, trials counted) without error. The example
space trains through the command line in tests/test_tune.py (with the other tests that start Ray), and
the cluster recipe of experiments/README.md is tests/test_cluster.py's."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from mezo_ray.train import LocalSession, parse_trial_config, run_trial
from mezo_ray.train.preflight import preflight
from mezo_ray.tune import main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
EXAMPLES = REPO / "search_spaces" / "examples"


def readme_task() -> dict:
    """The task YAML of the README's "Your own task" section."""
    section = README[README.index("## Your own task") :]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def _causal(task: dict) -> dict:
    """The README's causal form, as its comment gives it: ``prompt:`` instead of ``template:``."""
    comment = re.search(r'causal: prompt: "(.*?)"', README).group(1).replace("\\n", "\n")
    return {**{k: v for k, v in task.items() if k != "template"}, "family": "causal", "prompt": comment}


FORMS = {
    "as written": (lambda t: t, "tiny-mlm", {}),
    "labels as a plain list, no prompt": (
        lambda t: {**t, "labels": ["negative", "positive"], "template": None},
        "tiny-mlm",
        {"prompt": False},
    ),
    "causal": (_causal, "tiny-causal", {"k": None, "num_train": 16, "num_dev": 8}),
}


@pytest.mark.parametrize("form", FORMS)
def test_the_readme_task_yaml_trains_end_to_end(form, tiny_models, tmp_path):
    change, model, settings = FORMS[form]
    for csv in ("reviews_train.csv", "reviews_test.csv"):
        shutil.copy(EXAMPLES / csv, tmp_path / csv)
    task = change(readme_task())
    (tmp_path / "my_task.yaml").write_text(yaml.safe_dump(task))
    cfg = parse_trial_config(
        {
            "task": str(tmp_path / "my_task.yaml"),
            "model": model,
            "k": 4,
            "batch_size": 4,
            "max_steps": 4,
            "eval_steps": 2,
            "lr": 1e-3,
            **settings,
        }
    )
    preflight([cfg])  # where the plain-list form once crashed
    final = run_trial(cfg, LocalSession(str(tmp_path / "run")))
    assert final["done"] and final["step"] == 4 and 0.0 <= final["test_acc"] <= 1.0


def documented_commands() -> list[str]:
    """Each `python -m mezo_ray.tune ...` line of the README's code blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [
        line.split("  #")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()
    ]
    return [
        line[line.index("python -m mezo_ray.tune") :] for line in lines if "python -m mezo_ray.tune" in line
    ]


def test_the_readme_documents_the_commands_below():
    assert len(documented_commands()) >= 10


@pytest.mark.parametrize("command", documented_commands())
def test_each_documented_search_command_plans_without_error(
    command, tiny_models, tmp_path, monkeypatch, capsys
):
    """Each command, planned with --dry-run (validated, trials counted, no Ray): a documented flag or
    value that the command line refuses fails here. What needs a finished run or data not on this
    machine is said so and left to the tests that have it."""
    argv = shlex.split(command)[3:]
    if "--resume" in argv:
        pytest.skip(
            "--resume needs an interrupted run: tests/test_cluster.py's driver-kill test (make test-cluster)"
        )
    monkeypatch.chdir(REPO)  # the README's commands run in a clone
    if "my_space.yaml" in argv:  # the user's own space, in their own folder
        monkeypatch.chdir(tmp_path)
        shutil.copy(EXAMPLES / "reviews_space.yaml", tmp_path / "my_space.yaml")
        shutil.copy(EXAMPLES / "reviews.yaml", tmp_path / "reviews.yaml")
    code = main([*argv, "--dry-run", "--json"])
    assert code == 0, capsys.readouterr().err
