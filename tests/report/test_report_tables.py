"""Selection, aggregation and layouts, checked against values computed by hand from conftest's trials."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mezo_ray.report import build_tables, from_experiment_dirs, from_result_grid, render, select_best
from mezo_ray.report.layouts import published_score
from mezo_ray.report.paper_numbers import PAPER_MEMORY

T18 = "Table 18 (RoBERTa-large, k=16): roberta-large"
T18_ROWS = (
    "Zero-shot",
    "LP",
    "MeZO",
    "MeZO (LoRA, as published)",
    "MeZO (LoRA)",
    "MeZO (prefix)",
    "MeZO-Adam",
    "FT",
    "FT (LoRA, as published)",
    "FT (LoRA)",
    "FT (prefix)",
)
T4 = "Table 4 (ablation grid at 10,000 forward passes, RoBERTa-large, k=16): roberta-large"
T5 = "Table 5 (prompt vs no prompt, 10,000 forward passes, RoBERTa-large, k=16): roberta-large"
T6 = "Table 6 (n-SPSA, 10,000 forward passes, RoBERTa-large, k=16): roberta-large"
RL = "roberta-large"


def mean_std(*values: float) -> tuple[float, float]:
    """Mean and population std, written out (not numpy, not the code under test)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


# Every cell of the k=16 section for conftest's roberta_mezo + roberta_ft folders, selected on dev_acc.
# SST-2 MeZO: seed 13 -> lr=1e-6 (dev .90, test .88), seed 21 -> lr=1e-7 (dev .82, test .84): 86.0 (2.0).
# RTE MeZO (LoRA, as published): seed 13 -> lr=1e-4 (dev .70, test .60), seed 21 -> lr=1e-4
# (.60, .70): 65.0 (5.0).
# Zero-shot (run without k, shown here): .80, .78 -> 79.0 (1.0). FT: seed 13 only (seed 21 errored): 92.0.
EXPECTED_T18_K16 = {
    "Zero-shot": ["79.0 (1.0) [79.0; +0.0]", "— [35.5]", "— [50.2]", "— [48.8]", "— [51.4]", "— [32.0]"],
    "LP": [
        "— [76.0 (2.8)]",
        "— [40.3 (1.9)]",
        "— [66.0 (2.7)]",
        "— [56.5 (2.5)]",
        "— [59.4 (5.3)]",
        "— [51.3 (5.5)]",
    ],
    "MeZO": [
        "86.0 (2.0) [90.5 (1.2); -4.5]",
        "— [45.5 (2.0)]",
        "— [68.5 (3.9)]",
        "— [58.7 (2.5)]",
        "— [64.0 (3.3)]",
        "— [76.9 (2.7)]",
    ],
    "MeZO (LoRA, as published)": [
        "— [91.4 (0.9)]",
        "— [43.0 (1.6)]",
        "— [69.7 (6.0)]",
        "— [64.0 (2.5)]",
        "65.0 (5.0) [64.9 (3.6); +0.1]",
        "— [73.1 (6.5)]",
    ],
    "MeZO (LoRA)": ["—"] * 6,  # real LoRA: the paper has no such run
    "MeZO (prefix)": [
        "— [90.8 (1.7)]",
        "— [45.8 (2.0)]",
        "— [71.6 (2.5)]",
        "— [63.4 (1.8)]",
        "— [65.4 (3.9)]",
        "— [80.3 (3.6)]",
    ],
    "MeZO-Adam": [
        "— [90.4 (1.4)]",
        "— [45.4 (1.5)]",
        "— [74.1 (2.7)]",
        "— [64.3 (0.8)†]",
        "— [59.2 (11.1)†]",
        "— [78.3 (1.4)]",
    ],
    "FT": [
        "92.0, n=1 [91.9 (1.8); +0.1]",
        "— [47.5 (1.9)]",
        "— [77.5 (2.6)]",
        "— [70.0 (2.3)]",
        "— [66.4 (7.2)]",
        "— [85.0 (2.5)]",
    ],
    "FT (LoRA, as published)": [
        "— [91.4 (1.7)]",
        "— [46.7 (1.1)]",
        "— [74.9 (4.3)]",
        "— [67.7 (1.4)]",
        "— [66.1 (3.5)]",
        "— [82.7 (4.1)]",
    ],
    "FT (LoRA)": ["—"] * 6,
    "FT (prefix)": [
        "— [91.9 (1.0)]",
        "— [47.7 (1.1)]",
        "— [77.2 (1.3)]",
        "— [66.5 (2.5)]",
        "— [66.6 (2.0)]",
        "— [85.7 (1.3)]",
    ],
    "MeZO-momentum": ["87.0, n=1", "—", "—", "—", "—", "—"],
}
COLUMNS = ["SST-2", "SST-5", "SNLI", "MNLI", "RTE", "TREC"]


@pytest.fixture(scope="module")
def roberta(experiments):
    return from_experiment_dirs([experiments["roberta_mezo"], experiments["roberta_ft"]])


def cells(text_csv: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text_csv)).set_index(["title", "row", "column"])


def test_table18_every_cell_matches_hand_computed_values(roberta, parse_markdown):
    sections = parse_markdown(render(roberta))
    expected = {row: dict(zip(COLUMNS, values, strict=True)) for row, values in EXPECTED_T18_K16.items()}
    assert sections[T18] == expected
    assert list(sections[T18]) == list(EXPECTED_T18_K16)  # paper row order, then rows the paper lacks


def test_cells_are_mean_and_population_std_over_seeds_times_100(roberta):
    table = cells(render(roberta, fmt="csv"))
    for (row, task), seeds in {
        ("MeZO", "SST-2"): (88.0, 84.0),
        ("MeZO (LoRA, as published)", "RTE"): (60.0, 70.0),
        ("Zero-shot", "SST-2"): (80.0, 78.0),
        ("FT", "SST-2"): (92.0,),
    }.items():
        cell = table.loc[(T18, row, task)]
        mean, std = mean_std(*seeds)
        assert cell["value"] == pytest.approx(mean)
        assert cell["std"] == pytest.approx(std)
        assert cell["n"] == len(seeds)


def test_selection_takes_best_dev_even_when_another_config_is_better_on_test(roberta):
    selected = select_best(roberta.trials).set_index(["task", "row", "data_seed"])
    seed13 = selected.loc[("SST-2", "MeZO", 13)]
    assert seed13["lr"] == pytest.approx(1e-6)  # dev .90 beats .85 ...
    assert seed13["test_acc"] == pytest.approx(0.88)  # ... although lr=1e-7 scored .91 on test


def test_dev_loss_selection_picks_the_lowest_final_dev_loss(roberta, parse_markdown):
    text = render(roberta, select="dev_loss")
    table = cells(render(roberta, fmt="csv", select="dev_loss"))
    # SST-2 MeZO: seed 13 -> lr=1e-7 (loss .25, test .91); seed 21 -> lr=1e-6 (loss .40, test .86)
    mean, std = mean_std(91.0, 86.0)
    assert (table.loc[(T18, "MeZO", "SST-2"), ["value", "std"]].tolist()) == pytest.approx([mean, std])
    # RTE LoRA: seed 13 -> lr=5e-5 (loss .4, test .75); seed 21 -> lr=1e-4 (loss .5, test .70)
    mean, std = mean_std(75.0, 70.0)
    lora = table.loc[(T18, "MeZO (LoRA, as published)", "RTE"), ["value", "std"]]
    assert lora.tolist() == pytest.approx([mean, std])
    assert parse_markdown(text)[T18]["MeZO"]["SST-2"] == "88.5 (2.5) [90.5 (1.2); -2.0]"
    assert "lowest final `dev_loss`" in text and "selection rule: dev_loss" in text


def test_selection_ranks_the_tested_checkpoint_not_the_running_best(tmp_path, writer):
    # a trial that selected its checkpoint by dev loss: its running best dev .95 was never tested
    reports = writer.curve(0.80, 0.2, 0.70)
    reports[0]["best_dev_acc"] = reports[-1]["best_dev_acc"] = 0.95
    writer.write_trial(tmp_path, writer.cfg(RL, "SST-2", "mezo", 16, 13, 1e-6), reports)
    writer.write_trial(tmp_path, writer.cfg(RL, "SST-2", "mezo", 16, 13, 1e-7), writer.curve(0.85, 0.3, 0.90))
    (selected,) = select_best(from_experiment_dirs(tmp_path).trials).itertuples()
    assert (selected.lr, selected.test_acc) == (1e-7, 0.90)  # dev .85 of its tested checkpoint beats .80


def test_ablations_get_rows_of_their_own_without_published_numbers(tmp_path, writer, parse_markdown):
    mezo = {"n_perturbations": 1, "perturbation_schedule": "constant", "objective": "loss"}
    variants = {
        "MeZO": ({}, 0.80),
        "MeZO [n=4]": ({"n_perturbations": 4, "max_forward_passes": None}, 0.70),
        "MeZO [n=16 linear]": ({"n_perturbations": 16, "perturbation_schedule": "linear"}, 0.60),
        "MeZO [metric objective]": ({"objective": "metric"}, 0.50),
        "MeZO [10000 fwd]": ({"max_forward_passes": 10000}, 0.40),
        "MeZO [no prompt]": ({"prompt": False}, 0.30),
    }
    for change, test in variants.values():  # better dev every time: merged rows would all pick the last
        config = writer.cfg(RL, "SST-2", "mezo", 16, 13, 1e-6, **{**mezo, **change})
        writer.write_trial(tmp_path, config, writer.curve(1.0 - test, 0.3, test))
    sections = parse_markdown(render(from_experiment_dirs(tmp_path)))
    table4 = sections[T4]  # the ablation grid's row: a table of its own, Table 5's prompt numbers
    assert table4 == {
        "MeZO [10000 fwd]": {
            "SST-2": "40.0 [89.6 (1.2); -49.6]",
            "SNLI": "— [65.1 (6.2)]",
            "TREC": "— [66.7 (6.2)]",
        }
    }
    for row, (_, test) in variants.items():
        cell = (table4 if "fwd" in row else sections[T18])[row]["SST-2"]
        assert cell.startswith(f"{100 * test:.1f}") and ("[90.5 (1.2)" in cell) == (row == "MeZO"), (
            row,
            cell,
        )
    assert "MeZO [10000 fwd]" not in sections[T18]


def test_tables_5_and_6_hold_their_ablation_rows_and_table_4_gives_way_to_table_5(
    tmp_path, writer, parse_markdown
):
    """The Table 5 and Table 6 spaces' rows go to their own tables with the paper's numbers, out of Table 18
    and of the methods-at-a-budget table; Table 4 (one row, Table 5's first) is left out when Table 5 is
    drawn; a Table 6 run on another task keeps that task as a column of its own."""
    budget = {"max_forward_passes": 10000}
    runs = [
        ("SST-2", {"prompt": True}, 0.85),
        ("SST-2", {"prompt": False}, 0.55),
        ("trec", {"n_perturbations": 4}, 0.65),
        ("SST-2", {"n_perturbations": 16, "perturbation_schedule": "linear"}, 0.88),
        ("RTE", {"n_perturbations": 16, "perturbation_schedule": "linear"}, 0.61),
        ("SST-2", {}, 0.9),  # plain MeZO: stays in Table 18
    ]
    for task, change, test in runs:
        extra = {**(budget if change else {}), **change}
        writer.write_trial(
            tmp_path, writer.cfg(RL, task, "mezo", 16, 13, 1e-6, **extra), writer.curve(0.9, 0.3, test)
        )
    text = render(from_experiment_dirs(tmp_path))
    sections = parse_markdown(text)
    assert T4 not in sections and "Methods at" not in text
    assert sections[T5] == {
        "MeZO [10000 fwd]": {
            "SST-2": "85.0 [89.6 (1.2); -4.6]",
            "SNLI": "— [65.1 (6.2)]",
            "TREC": "— [66.7 (6.2)]",
        },
        "MeZO [10000 fwd, no prompt]": {
            "SST-2": "55.0 [51.9 (2.9); +3.1]",
            "SNLI": "— [34.8 (2.1)]",
            "TREC": "— [19.5 (9.0)]",
        },
    }
    table6 = sections[T6]
    assert list(table6) == [
        "MeZO [10000 fwd]",  # n = 1, as the paper's Table 6 shows it: Table 4's runs
        "MeZO [n=4, 10000 fwd]",
        "MeZO [n=4 linear, 10000 fwd]",
        "MeZO [n=16, 10000 fwd]",
        "MeZO [n=16 linear, 10000 fwd]",
    ]
    assert table6["MeZO [10000 fwd]"]["SST-2"] == "85.0 [89.6 (1.2); -4.6]"
    assert table6["MeZO [n=4, 10000 fwd]"] == {
        "SST-2": "— [89.5 (1.1)]",
        "SNLI": "— [68.6 (3.2)]",
        "TREC": "65.0 [62.3 (5.6); +2.7]",
        "RTE": "—",
    }
    assert table6["MeZO [n=16 linear, 10000 fwd]"]["SST-2"] == "88.0 [88.9 (1.2); -0.9]"
    assert table6["MeZO [n=16 linear, 10000 fwd]"]["RTE"] == "61.0"
    assert list(sections[T18]) == [*T18_ROWS]  # no ablation row joined it
    assert sections[T18]["MeZO"]["SST-2"] == "90.0 [90.5 (1.2); -0.5]"
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    assert titles[:3] == [f"### {T18}", f"### {T5}", f"### {T6}"]  # the paper's order


def test_table18_cells_from_hub_data_are_marked_and_every_paper_table_links_the_differences(
    tmp_path, writer, parse_markdown
):
    """Hub data sets are not LM-BFF's pack: a cell with a selected trial that read them (data_source hub,
    or none given: the task's own) is marked, one from the pack is not."""
    for task, source in (("SST-2", "hub"), ("RTE", None), ("trec", "lmbff")):
        config = writer.cfg(RL, task, "mezo", 16, 13, 1e-6, data_source=source)
        writer.write_trial(tmp_path, config, writer.curve(0.9, 0.3, 0.8))
    text = render(from_experiment_dirs(tmp_path))
    cells = parse_markdown(text)[T18]["MeZO"]
    assert cells["SST-2"].startswith("80.0§ [") and cells["RTE"].startswith("80.0§ [")
    assert cells["TREC"].startswith("80.0 [")
    assert "§ hub data (data_source=hub), not LM-BFF's pack" in text and "docs/FIDELITY.md" in text


def test_only_the_lora_computed_as_published_is_compared_with_the_papers_lora_numbers(
    tmp_path, writer, parse_markdown
):
    """The paper's LoRA numbers came from its code's LoRA (FIDELITY row 6): the "as published" rows sit
    beside them; real LoRA is a row of its own, which the paper has no number for."""
    for method, mode, test in (
        ("mezo", "lora", 0.80),
        ("mezo", "lora_as_published", 0.70),
        ("ft", "lora", 0.85),
        ("ft", "lora_as_published", 0.90),
    ):
        config = writer.cfg(RL, "SST-2", method, 16, 13, 1e-5, mode=mode)
        writer.write_trial(tmp_path, config, writer.curve(0.9, 0.3, test))
    section = parse_markdown(render(from_experiment_dirs(tmp_path)))[T18]
    assert section["MeZO (LoRA, as published)"]["SST-2"] == "70.0 [91.4 (0.9); -21.4]"
    assert section["FT (LoRA, as published)"]["SST-2"] == "90.0 [91.4 (1.7); -1.4]"
    assert section["MeZO (LoRA)"]["SST-2"] == "80.0"
    assert section["FT (LoRA)"]["SST-2"] == "85.0"


def test_zero_shot_run_at_one_k_shows_in_every_k_section(tmp_path, writer, parse_markdown):
    writer.write_trial(
        tmp_path, writer.cfg(RL, "SST-2", "zero_shot", 16, 13, None), writer.curve(0.8, 0.5, 0.79)
    )
    writer.write_trial(tmp_path, writer.cfg(RL, "SST-2", "mezo", 512, 13, 1e-6), writer.curve(0.9, 0.3, 0.93))
    sections = parse_markdown(render(from_experiment_dirs(tmp_path)))
    k512 = sections["Table 18 (RoBERTa-large, k=512): roberta-large"]
    assert k512["Zero-shot"]["SST-2"] == "79.0 [79.0; +0.0]"


def test_selection_rule_is_printed_in_every_score_caption(roberta):
    text = render(roberta)
    captions = [line for line in text.splitlines() if line.startswith("_Test score")]
    assert captions and all("selection rule: dev_acc" in line for line in captions)


def test_unfinished_and_errored_trials_are_listed_and_never_selected(roberta, parse_markdown):
    trials = roberta.trials.set_index("trial_id")
    not_done = trials[trials["status"] != "done"]
    assert sorted(not_done["status"]) == ["errored", "unfinished", "unfinished"]
    selected = select_best(roberta.trials)
    assert not set(selected["trial_id"]) & set(not_done.index)
    footer = parse_markdown(render(roberta))[
        "Trials not used for selection (3): unfinished, errored or with a note"
    ]
    assert set(footer) == set(not_done.index)
    reasons = {f["status"]: f["reason"] for f in footer.values()}
    assert reasons["errored"] == "torch.OutOfMemoryError: CUDA out of memory."
    assert "stopped by Tune at step 100" in " ".join(f["reason"] for f in footer.values())
    assert all("roberta-large SST-2 k=16" in f["config"] for f in footer.values())


def test_include_unfinished_selects_on_last_values_and_marks_cells(roberta, parse_markdown):
    sections = parse_markdown(render(roberta, include_unfinished=True))
    # seed 13's running trial (dev .95, no test yet) wins: that seed is missing; seed 21 keeps .84
    assert sections[T18]["MeZO"]["SST-2"] == "84.0, n=1‡ [90.5 (1.2); -6.5]"
    # seed 21's errored FT trial (dev .99) wins its seed: only seed 13's .92 remains
    assert sections[T18]["FT"]["SST-2"] == "92.0, n=1‡ [91.9 (1.8); +0.1]"
    lora = sections[T18]["MeZO (LoRA, as published)"]
    assert lora["RTE"] == "65.0 (5.0) [64.9 (3.6); +0.1]"  # nothing unfinished


def test_missing_cells_are_missing_not_zero(roberta):
    table = cells(render(roberta, fmt="csv"))
    missing = table.loc[(T18, "MeZO-Adam", "MNLI")]
    assert math.isnan(missing["value"]) and missing["n"] == 0 and missing["paper"] == pytest.approx(64.3)
    assert table.loc[(T18, "MeZO-momentum", "RTE"), ["value", "paper"]].isna().all()


def test_generic_layout_for_model_and_task_not_in_the_paper(experiments, parse_markdown):
    sections = parse_markdown(render(experiments["tiny"]))
    # seed 13: lr=1e-3 (dev .7, test .6) beats lr=1e-4 (dev .6, test .9); seed 21: .7 -> 65.0 (5.0)
    assert sections["/tmp/models/tiny-roberta, k=16"] == {
        "MeZO": {"synthetic-sst2": "65.0 (5.0)"},
        "FT": {"synthetic-sst2": "75.0, n=1"},
    }
    assert "paper" not in render(experiments["tiny"]).split("### Peak memory")[0]


def test_opt_sections_use_table1_and_table20_numbers(experiments, parse_markdown):
    sections = parse_markdown(render(experiments["opt"]))
    table1 = sections["Table 1 (OPT-13B): facebook/opt-13b"]
    assert list(table1) == ["Zero-shot", "ICL", "LP", "MeZO", "MeZO (LoRA)", "MeZO (prefix)", "FT"]
    assert list(table1["MeZO"]) == [
        "SST-2",
        "RTE",
        "CB",
        "BoolQ",
        "WSC",
        "WIC",
        "MultiRC",
        "COPA",
        "ReCoRD",
        "SQuAD",
        "DROP",
    ]
    assert table1["MeZO"]["SST-2"] == "91.4 [91.4; +0.0]"  # dev .92 (test .914) beats dev .90 (test .95)
    assert table1["MeZO"]["COPA"] == "— [88.0]"
    assert table1["FT"]["DROP"] == "— [31.3]"
    table20 = sections["Table 20 (OPT-66B): /models/opt-66b"]
    assert table20["MeZO"]["SST-2"] == "90.0 [91.2; -1.2]"
    assert table20["MeZO"]["SQuAD"] == "— [*]"  # the paper's "needs more tuning"
    assert table20["MeZO"]["CB"] == "—"  # not in Table 20


def test_memory_table_takes_the_max_peak_and_table22_numbers_for_multirc(
    tmp_path, writer, roberta, parse_markdown
):
    sections = parse_markdown(render(roberta))
    # MeZO SST-2 finished trials peak at 1.5, 1.25, 1, 1 GiB; the unfinished 9 GiB one is not used
    assert sections["Peak memory: SST-2"]["roberta-large"] == {
        "Zero-shot": "1.0",
        "MeZO": "1.5",
        "MeZO-momentum": "1.0",
        "FT": "3.0",
    }
    cfg, curve = writer.cfg, writer.curve
    writer.write_trial(
        tmp_path, cfg("facebook/opt-13b", "MultiRC", "mezo", None, 0, 1e-6), curve(0.6, 0.5, 0.6, peak_gib=25)
    )
    writer.write_trial(
        tmp_path, cfg("facebook/opt-13b", "MultiRC", "ft", None, 0, 1e-5), curve(0.7, 0.4, 0.7, peak_gib=300)
    )
    writer.write_trial(
        tmp_path, cfg("facebook/opt-13b", "MultiRC", "mezo", None, 0, 1e-4, mode="lora"), curve(0.6, 0.5, 0.6)
    )
    table22 = parse_markdown(render(tmp_path))["Table 22 (peak memory, MultiRC)"]
    assert table22 == {
        "facebook/opt-13b": {
            "MeZO": "25.0 [1× 26.0; -1.0]",
            "MeZO (LoRA)": "1.0",
            "FT": "300.0 [4× 316.0; -16.0]",
        }
    }


class FakeResult:
    """What the report reads from a ray.tune Result: config, metrics, metrics_dataframe, error, path."""

    def __init__(self, trial_dir: Path):
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        self.config = json.loads((trial_dir / "params.json").read_text())
        self.metrics = rows[-1]
        self.metrics_dataframe = pd.json_normalize(rows, sep="/")  # with config/<key> columns, as Tune's
        error = trial_dir / "error.txt"
        self.error = RuntimeError(error.read_text().splitlines()[-1]) if error.exists() else None
        self.path = str(trial_dir)


def test_result_grid_gives_the_same_tables_as_the_folders(experiments, roberta):
    dirs = sorted(p for name in ("roberta_mezo", "roberta_ft") for p in experiments[name].iterdir())
    grid = from_result_grid([FakeResult(d) for d in dirs])
    assert grid.trials[["trial_id", "status", "row", "test_acc"]].equals(
        roberta.trials[["trial_id", "status", "row", "test_acc"]]
    )
    for ours, theirs in zip(build_tables(grid), build_tables(roberta), strict=True):
        assert ours.title == theirs.title
        pd.testing.assert_frame_equal(ours.cells, theirs.cells)
    assert render(grid, fmt="csv") == render(roberta, fmt="csv")


def test_published_numbers_are_transcribed():
    assert published_score(RL, 512, "MeZO-Adam", "trec") == (95.1, 0.3, "")
    assert published_score(RL, 512, "Zero-shot", "SST-2") == (79.0, None, "")
    assert published_score(RL, 16, "MeZO-Adam", "RTE") == (59.2, 11.1, "†")
    assert published_score(RL, 16, "MeZO (LoRA, as published)", "SNLI") == (69.7, 6.0, "")
    assert published_score("facebook/opt-13b", None, "ICL", "ReCoRD") == (82.5, None, "")
    assert published_score("facebook/opt-13b", None, "FT", "DROP") == (31.3, None, "")
    assert published_score("opt-30b", None, "MeZO (prefix)", "SQuAD") == (83.9, None, "")
    assert published_score("opt-66b", None, "MeZO", "SQuAD").mean is None
    assert published_score("opt-30b", None, "LP", "SST2") is None
    assert published_score("opt-30b", None, "MeZO", "CB") is None
    assert published_score(RL, 16, "MeZO [10000 fwd, no prompt]", "trec") == (19.5, 9.0, "")
    assert published_score(RL, 16, "MeZO [n=16 linear, 10000 fwd]", "SNLI") == (62.8, 5.9, "")
    assert published_score(RL, 512, "MeZO [n=4, 10000 fwd]", "SST-2") is None
    assert PAPER_MEMORY["opt-30b"]["Full FT"] == (8, 633.0)
    assert PAPER_MEMORY["opt-66b"]["Prefix FT"] == (8, None)


@pytest.mark.parametrize(
    ("method", "tied", "paper_pick"),
    [
        ("mezo", [{"lr": 1e-7}, {"lr": 1e-6}], {"lr": 1e-6}),  # "lr1e-6" sorts before "lr1e-7"
        ("ft", [{"batch_size": b} for b in (8, 32, 16)], {"batch_size": 16}),  # "bs16" < "bs32" < "bs8"
    ],
)
def test_dev_ties_go_to_the_run_the_papers_gather_script_keeps(tmp_path, writer, method, tied, paper_pick):
    """gather_result.py: max(sorted(runs, key=output_dir), key=dev), so on a tie the first output folder in
    string order wins; here it is never the smallest trial id (the trials are written in the order given)."""
    for i, change in enumerate(tied):
        config = {**writer.cfg(RL, "SST-2", method, 16, 13, 1e-6), **change}
        writer.write_trial(tmp_path, config, writer.curve(0.80, 0.3, 0.5 + i / 10))
    (selected,) = select_best(from_experiment_dirs(tmp_path).trials).to_dict("records")
    assert {key: selected[key] for key in paper_pick} == paper_pick


def test_methods_at_a_budget_get_a_table_with_their_state_and_forward_passes_per_step(
    tmp_path, writer, parse_markdown
):
    """Per method and seed the dev-selected trial's test score (mean, std over seeds), and the state and
    forward passes per step its trials reported."""
    methods = {  # row: (config, optimizer state, forward passes per step, test per lr 1e-6 / 1e-7)
        "MeZO [4000 fwd]": ({}, 0, 2, (0.70, 0.60)),
        "FZOO [4000 fwd]": ({"estimator": "fzoo", "n_probes": 8}, 0, 9, (0.80, 0.50)),
        "LOZO-M [4000 fwd]": ({"estimator": "lozo", "lozo_momentum": 0.9}, 0.0123, 2, (0.75, 0.65)),
    }
    for change, state, per_step, tests in methods.values():
        for seed, shift in ((13, 0.0), (21, 0.1)):
            for lr, test, dev in zip((1e-6, 1e-7), tests, (0.9, 0.8), strict=True):  # dev picks lr 1e-6
                config = writer.cfg(RL, "SST-2", "mezo", 16, seed, lr, max_forward_passes=4000, **change)
                reports = writer.curve(dev, 0.3, test - shift)
                for report in reports:
                    report["forward_passes"] = per_step * report["step"]
                    report["optimizer_state_multiple"] = state
                writer.write_trial(tmp_path, config, reports)
    text = render(from_experiment_dirs(tmp_path))
    assert T18 not in text  # budgeted runs are not the paper's rows
    section = parse_markdown(text)[f"Methods at 4,000 forward passes: {RL}, k=16"]
    assert list(section) == ["MeZO [4000 fwd]", "FZOO [4000 fwd]", "LOZO-M [4000 fwd]"]
    expected = {"MeZO [4000 fwd]": ("0×", "2", "65.0 (5.0)"), "FZOO [4000 fwd]": ("0×", "9", "75.0 (5.0)")}
    expected["LOZO-M [4000 fwd]"] = ("0.0123×", "2", "70.0 (5.0)")
    for row, (state, per_step, score) in expected.items():
        assert section[row] == {"state (× params)": state, "forward passes / step": per_step, "SST-2": score}
