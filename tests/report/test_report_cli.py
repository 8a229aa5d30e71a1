"""python -m mezo_ray.report: stdout formats, --out, and a clear error for a folder without trials."""

from __future__ import annotations

import io
import json
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


def _memory_benchmark(path: Path) -> Path:
    """A ``benchmarks/memory.py --json`` output: 125m, 1.3b measured, 13b extrapolated, FT failed at 13b."""
    gib = 2**30
    rows = {
        "125m": {"zero-shot": {"peak": 0.9 * gib}, "mezo": {"peak": 1.0 * gib}, "ft": {"peak": 1.6 * gib}},
        "1.3b": {"zero-shot": {"peak": 3.2 * gib}, "mezo": {"peak": 3.3 * gib}, "ft": {"peak": 10.9 * gib}},
        "13b": {
            "zero-shot": {"peak": 25.4 * gib, "extrapolated": True},
            "mezo": {"peak": 25.6 * gib, "extrapolated": True},
            "ft": {"error": "killed"},
        },
    }
    path.write_text(json.dumps({"dtype": "bfloat16", "device": "cpu", "seq": 400, "rows": rows, "fits": {}}))
    return path


def test_cli_renders_the_memory_benchmark_as_table_22_beside_the_paper(experiments, tmp_path, capsys):
    """Alone or after an experiment's tables: models by size, the paper's A100s and GB beside ours,
    extrapolated cells marked before their number, a failed cell missing."""
    bench = str(_memory_benchmark(tmp_path / "memory.json"))
    assert main(["--memory-benchmark", bench]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("### Table 22 (peak memory, benchmarks/memory.py: bfloat16 on cpu, 400 tokens)")
    assert "Search cost" not in stdout and "~ extrapolated by the benchmark" in stdout
    lines = [line for line in stdout.splitlines() if line.startswith("| opt-")]
    assert lines == [
        "| opt-125m | 0.9 | 1.0 | 1.6 |",
        "| opt-1.3b | 3.2 [1× 4.0; -0.8] | 3.3 [1× 4.0; -0.7] | 10.9 [1× 27.0; -16.1] |",
        "| opt-13b | ~25.4 [1× 26.0; -0.6] | ~25.6 [1× 26.0; -0.4] | — [4× 316.0] |",
    ]
    assert main([str(experiments["roberta_ft"]), "--memory-benchmark", bench]) == 0
    both = capsys.readouterr().out
    assert both.startswith("### Table 18") and "| opt-13b | ~25.4 [1× 26.0; -0.6]" in both


def test_cli_refuses_a_file_that_is_not_a_memory_benchmark_by_name(tmp_path, capsys):
    (tmp_path / "other.json").write_text('{"rows": []}')
    assert main(["--memory-benchmark", str(tmp_path / "other.json")]) == 2
    assert "other.json' is not the output of benchmarks/memory.py --json" in capsys.readouterr().err
    assert main([]) == 2
    assert "give an EXPERIMENT_DIR or --memory-benchmark" in capsys.readouterr().err
