"""write_report writes every format and valid, non-trivial PNG plots."""

from __future__ import annotations

import pandas as pd
import pytest

from mezo_ray.report import write_report
from mezo_ray.report.plots import plot_memory

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def written(experiments, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(
        [experiments["roberta_mezo"], experiments["roberta_ft"], experiments["tiny"]], out
    )


def test_every_format_and_table_file_is_written(written):
    out, paths = written
    for name in ("report.md", "report.tex", "report.csv", "trials.csv", "selected.csv"):
        assert out / name in paths and (out / name).stat().st_size > 0
    assert len(pd.read_csv(out / "trials.csv")) == 13 + 2 + 4  # conftest: roberta_mezo, roberta_ft, tiny
    assert "Table 18" in (out / "report.md").read_text()


def test_plots_are_valid_pngs_of_real_size(written):
    from matplotlib import image

    out, paths = written
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    assert pngs == [
        "curves_roberta-large_RTE_k16.png",
        "curves_roberta-large_SST-2.png",
        "curves_roberta-large_SST-2_k16.png",
        "curves_tiny-roberta_synthetic-sst2_k16.png",
        "memory.png",
        "selected_roberta-large.png",
        "selected_roberta-large_k16.png",
        "selected_tiny-roberta_k16.png",
    ]
    for name in pngs:
        path = out / "plots" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        pixels = image.imread(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300, name
        assert pixels.std() > 0.01, name  # something was drawn


def test_no_memory_plot_without_memory_data(tmp_path):
    empty = pd.DataFrame(columns=["model", "task", "row", "peak_gib", "n", "includes_unfinished"])
    assert plot_memory(empty, tmp_path) is None
    assert not list(tmp_path.iterdir())
