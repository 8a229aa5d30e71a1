"""Synthetic Tune experiment folders with known values, written the way Tune writes them.

Folder layout per trial: ``<exp>/<trainable>_<trial_id>_<index>_<params>_<date>/`` with ``params.json``
(the flat trial config), ``result.json`` (JSON lines, one per report, each with Tune's own keys and a nested
copy of the config), ``progress.csv`` and, for failed trials, ``error.txt``.

The values are chosen so the selection rule matters (see EXPECTED in test_report_tables.py):
roberta-large k=16 SST-2 MeZO, seed 13: lr=1e-6 has the best dev (0.90) but the worse test (0.88);
lr=1e-7 has the lower dev_loss and the better test (0.91).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

GIB = 2**30
_counter = iter(range(10_000))


def write_trial(exp_dir: Path, config: dict, reports: list[dict], error: str | None = None) -> str:
    """Write one trial folder like Tune does and return its trial id."""
    index = next(_counter)
    trial_id = f"a{index:04x}_{index:05d}"
    lr = config.get("lr")
    trial_dir = exp_dir / f"train_driver_fn_{trial_id}_{index}_lr={lr}_2025-01-01_00-00-{index % 60:02d}"
    trial_dir.mkdir(parents=True)
    (trial_dir / "params.json").write_text(json.dumps(config))
    rows = [
        {"done": False, **report, "trial_id": trial_id, "training_iteration": i + 1, "config": config}
        for i, report in enumerate(reports)
    ]
    (trial_dir / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    columns = sorted({key for row in rows for key in row if key != "config"})
    with open(trial_dir / "progress.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k != "config"} for row in rows)
    if error is not None:
        (trial_dir / "error.txt").write_text(f"Failure # 1 (occurred at 2025-01-01_00-00-00)\n{error}\n")
    return trial_id


def curve(
    best_dev: float,
    dev_loss: float,
    test: float | None = None,
    done: bool | None = None,
    peak_gib: float = 1.0,
    steps: tuple[int, ...] = (100, 200),
) -> list[dict]:
    """Reports of a trial: one per eval step (dev rising to ``best_dev``), then, when ``test`` is given, the
    final report with test_acc and done=True (or ``done`` alone, as Tune sets it when ASHA stops a trial)."""
    reports = []
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        reports.append(
            {
                "step": step,
                "forward_passes": 2 * 64 * step,
                "dev_acc": best_dev - (0 if last else 0.05),
                "best_dev_acc": best_dev - (0 if last else 0.05),
                "dev_loss": dev_loss + (0 if last else 0.1),
                "train_loss": 0.5,
                "peak_mem_bytes": int(peak_gib * GIB * (1 if last else 0.5)),
                "steps_per_s": 3.0,
                "nonfinite_steps": 0,
            }
        )
    if test is not None:
        reports.append(
            {
                **reports[-1],
                "test_acc": test,
                "selected_step": steps[-1],
                "selection": "dev_acc",
                "done": True,
            }
        )
    elif done is not None:
        reports[-1]["done"] = done
    return reports


def cfg(model: str, task: str, method: str, k: int | None, seed: int, lr: float | None, **extra) -> dict:
    """A flat trial config as CONTRACTS.md defines it."""
    return {
        "model": model,
        "task": task,
        "method": method,
        "zo_variant": extra.pop("zo_variant", "sgd"),
        "mode": extra.pop("mode", "full"),
        "k": k,
        "data_seed": seed,
        "lr": lr,
        "eps": 1e-3,
        "weight_decay": 0.0,
        "batch_size": 64,
        "max_steps": 200,
        "eval_steps": 100,
        "n_perturbations": 1,
        "seed": seed,
        # RoBERTa runs read LM-BFF's pack, as the paper spaces do
        "data_source": extra.pop("data_source", "lmbff" if model == RL else None),
        **extra,
    }


RL = "roberta-large"


def write_roberta_mezo(exp: Path) -> None:
    # SST-2 MeZO: seed 13 -> dev picks lr=1e-6 (test .88), dev_loss picks lr=1e-7 (test .91)
    write_trial(exp, cfg(RL, "SST-2", "mezo", 16, 13, 1e-6), curve(0.90, 0.30, 0.88, peak_gib=1.5))
    write_trial(exp, cfg(RL, "SST-2", "mezo", 16, 13, 1e-7), curve(0.85, 0.25, 0.91, peak_gib=1.25))
    # seed 21 -> dev picks lr=1e-7 (test .84), dev_loss picks lr=1e-6 (test .86)
    write_trial(exp, cfg(RL, "SST-2", "mezo", 16, 21, 1e-6), curve(0.80, 0.40, 0.86))
    write_trial(exp, cfg(RL, "SST-2", "mezo", 16, 21, 1e-7), curve(0.82, 0.45, 0.84))
    # unfinished (still running): best dev of all and no test_acc; must not be selected by default
    write_trial(exp, cfg(RL, "SST-2", "mezo", 16, 13, 1e-5), curve(0.95, 0.10, peak_gib=9.0))
    # stopped early by Tune (done set, no test_acc); poor dev so it never wins
    write_trial(exp, cfg(RL, "SST-2", "mezo", 16, 21, 1e-5), curve(0.50, 0.90, done=True, steps=(100,)))
    # a row the paper does not have
    write_trial(exp, cfg(RL, "SST-2", "mezo", 16, 13, 1e-6, zo_variant="momentum"), curve(0.9, 0.3, 0.87))
    # RTE MeZO (LoRA, as published), the paper's LoRA cells: seed 13 -> .60, seed 21 -> .70
    lora = "lora_as_published"
    write_trial(exp, cfg(RL, "RTE", "mezo", 16, 13, 1e-4, mode=lora), curve(0.70, 0.5, 0.60))
    write_trial(exp, cfg(RL, "RTE", "mezo", 16, 13, 5e-5, mode=lora), curve(0.65, 0.4, 0.75))
    write_trial(exp, cfg(RL, "RTE", "mezo", 16, 21, 1e-4, mode=lora), curve(0.60, 0.5, 0.70))
    write_trial(exp, cfg(RL, "RTE", "mezo", 16, 21, 5e-5, mode=lora), curve(0.55, 0.6, 0.50))
    # zero-shot, run without k: shown in the k=16 section
    write_trial(exp, cfg(RL, "SST-2", "zero_shot", None, 13, None), curve(0.8, 0.5, 0.80, steps=(0,)))
    write_trial(exp, cfg(RL, "SST-2", "zero_shot", None, 21, None), curve(0.8, 0.5, 0.78, steps=(0,)))


def write_roberta_ft(exp: Path) -> None:
    write_trial(exp, cfg(RL, "SST-2", "ft", 16, 13, 1e-5), curve(0.93, 0.2, 0.92, peak_gib=3.0))
    # errored after one eval with the best dev of all: listed, never selected by default
    write_trial(
        exp,
        cfg(RL, "SST-2", "ft", 16, 21, 1e-5),
        curve(0.99, 0.1, steps=(100,)),
        error="Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory.",
    )


def write_tiny(exp: Path) -> None:
    tiny = "/tmp/models/tiny-roberta"
    write_trial(exp, cfg(tiny, "synthetic-sst2", "mezo", 16, 13, 1e-3), curve(0.7, 0.5, 0.60))
    write_trial(exp, cfg(tiny, "synthetic-sst2", "mezo", 16, 13, 1e-4), curve(0.6, 0.4, 0.90))
    write_trial(exp, cfg(tiny, "synthetic-sst2", "mezo", 16, 21, 1e-3), curve(0.7, 0.5, 0.70))
    write_trial(exp, cfg(tiny, "synthetic-sst2", "ft", 16, 13, 1e-5), curve(0.7, 0.5, 0.75))


def write_opt(exp: Path) -> None:
    write_trial(exp, cfg("facebook/opt-13b", "SST2", "mezo", None, 0, 1e-6), curve(0.92, 0.3, 0.914))
    write_trial(exp, cfg("facebook/opt-13b", "SST2", "mezo", None, 0, 1e-7), curve(0.90, 0.2, 0.95))
    write_trial(exp, cfg("/models/opt-66b", "SST2", "mezo", None, 0, 1e-6), curve(0.92, 0.3, 0.90))


@pytest.fixture(scope="session")
def experiments(tmp_path_factory) -> dict[str, Path]:
    """Experiment folders: roberta_mezo, roberta_ft (Table 18), tiny (generic layout), opt (Tables 1, 20)."""
    root = tmp_path_factory.mktemp("ray_results")
    writers = {"roberta_mezo": write_roberta_mezo, "roberta_ft": write_roberta_ft, "tiny": write_tiny}
    writers["opt"] = write_opt
    paths = {}
    for name, write in writers.items():
        (root / name).mkdir()
        write(root / name)
        paths[name] = root / name
    return paths


@pytest.fixture
def writer() -> SimpleNamespace:
    """The folder writers, for tests that need a small experiment of their own."""
    return SimpleNamespace(write_trial=write_trial, cfg=cfg, curve=curve)


def _split(line: str) -> list[str]:
    cells = [c.strip().replace(r"\|", "|") for c in line.strip().strip("|").split(" | ")]
    return cells


@pytest.fixture
def parse_markdown():
    """Return a parser: Markdown report -> {section title: {row label: {column header: cell text}}}."""

    def parse(text: str) -> dict[str, dict[str, dict[str, str]]]:
        sections: dict[str, dict[str, dict[str, str]]] = {}
        title, header = None, None
        for line in text.splitlines():
            if line.startswith("### "):
                title, header = line[4:], None
                sections[title] = {}
            elif line.startswith("|") and not line.startswith("|---"):
                cells = _split(line)
                if header is None:
                    header = cells
                else:
                    sections[title][cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
        return sections

    return parse
