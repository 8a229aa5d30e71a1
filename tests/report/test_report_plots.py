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


def test_methods_figure_draws_each_methods_mean_dev_curve_of_its_selected_trials(tmp_path, writer):
    """One panel per task; per method a thick line, the mean over seeds of the dev scores its selected
    trials reported at each evaluation (not the final report, which repeats the selected dev score);
    nothing drawn outside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mezo_ray.report import from_experiment_dirs, select_best
    from mezo_ray.report.plots import methods_figure

    devs = {}
    for task in ("SST-2", "trec"):
        for change in ({}, {"estimator": "fzoo"}):
            for seed in (13, 21):
                for lr, shift in ((1e-6, 0.0), (1e-7, -0.2)):  # lr 1e-6 wins on dev
                    config = writer.cfg(
                        "roberta-large", task, "mezo", 16, seed, lr, max_forward_passes=400, **change
                    )
                    reports = writer.curve(0.7 + shift + seed / 1000, 0.3, 0.6, steps=(100, 200))
                    writer.write_trial(tmp_path, config, reports)
                    if lr == 1e-6:
                        devs.setdefault((task, bool(change)), []).append([r["dev_acc"] for r in reports[:2]])
    report = from_experiment_dirs(tmp_path)
    fig = methods_figure(report.history, select_best(report.trials))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["SST-2", "trec"]
    for ax in axes:
        thick = {line.get_label(): line.get_ydata() for line in ax.lines if line.get_linewidth() == 2}
        assert sorted(thick) == ["FZOO", "MeZO"]
        for label, ys in thick.items():
            seeds = devs[(ax.get_title(), label == "FZOO")]
            assert list(ys) == pytest.approx([100 * (a + b) / 2 for a, b in zip(*seeds, strict=True)])
    renderer = FigureCanvasAgg(fig).get_renderer()
    box, frame = fig.get_tightbbox(renderer), fig.bbox_inches  # both in inches
    assert frame.x0 <= box.x0 and frame.y0 <= box.y0 and box.x1 <= frame.x1 and box.y1 <= frame.y1, box
