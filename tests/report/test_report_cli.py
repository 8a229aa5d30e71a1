"""python -m mezo_ray.report: stdout formats, --out, and a clear error for a folder without trials."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from mezo_ray.report.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def test_cli_prints_markdown_for_several_folders_and_writes_out(experiments, tmp_path, capsys):
    folders = [str(experiments["roberta_mezo"]), str(experiments["roberta_ft"])]
    assert main([*folders, "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("### Table 18 (RoBERTa-large, k=16)")
    assert "| MeZO | 86.0 (2.0) [90.5 (1.2); -4.5] |" in stdout
    assert "errored" in stdout  # the footer
    assert (tmp_path / "out" / "report.tex").is_file() and not (tmp_path / "out" / "plots").exists()


def test_cli_select_and_include_unfinished_flags(experiments, capsys):
    assert main([str(experiments["roberta_mezo"]), "--select", "dev_loss", "--include-unfinished"]) == 0
    stdout = capsys.readouterr().out
    assert "selection rule: dev_loss" in stdout and "--include-unfinished" in stdout


def test_module_entry_point_writes_csv_to_stdout_and_footer_to_stderr(experiments):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "mezo_ray.report", str(experiments["roberta_ft"]), "--format", "csv"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(io.StringIO(done.stdout))
    assert frame.set_index(["row", "column"]).loc[("FT", "SST-2"), "value"] == 92.0
    assert "errored" in done.stderr and "CUDA out of memory" in done.stderr


def test_cli_exits_2_when_no_folder_holds_a_trial(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no Tune trial folders" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
