"""write_report writes valid PNG plots; each figure draws what it says and fits inside its canvas."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text

from mezo_ray.report import (
    Report,
    aggregate,
    aggregate_memory,
    from_experiment_dirs,
    select_best,
    write_report,
)
from mezo_ray.report import paper_numbers as paper
from mezo_ray.report.layouts import published_score
from mezo_ray.report.plots import (
    curve_figures,
    memory_figure,
    methods_figure,
    selected_figures,
    write_plots,
)
from tests.report.conftest import GIB, cfg, write_trial

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RL, OPT = "roberta-large", "facebook/opt-13b"


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
    """One curves and one selected figure per (model, k) section (zero-shot, run without k, joins the
    k=16 section of its model rather than getting files of its own), and memory.png."""
    from matplotlib import image

    out, paths = written
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    assert pngs == [
        "curves_roberta-large_k16.png",
        "curves_tiny-roberta_k16.png",
        "memory.png",
        "selected_roberta-large_k16.png",
        "selected_tiny-roberta_k16.png",
    ]
    for name in pngs:
        path = out / "plots" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        pixels = image.imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600, name
        assert pixels.std() > 0.01, name  # something was drawn


def test_no_memory_plot_without_memory_data():
    empty = pd.DataFrame(columns=["model", "task", "row", "peak_gib", "n", "includes_unfinished"])
    assert memory_figure(empty) is None


# --- a synthetic experiment with every kind of thing a figure draws --------------------------------------


def _reports(devs, test=None, final_dev=None, peak_gib=1.0, steps=None):
    """Evaluation reports with the given dev scores, then (with ``test``) the final report, whose dev_acc
    is the selected checkpoint's (``final_dev``, default the best) at the last evaluation's step."""
    steps = steps or [100 * (i + 1) for i in range(len(devs))]
    reports = [
        {
            "step": step,
            "forward_passes": 2 * 64 * step,
            "dev_acc": dev,
            "dev_loss": 1 - dev,
            "peak_mem_bytes": int(peak_gib * GIB),
        }
        for step, dev in zip(steps, devs, strict=True)
    ]
    if test is not None:
        best = max(devs) if final_dev is None else final_dev
        reports.append({**reports[-1], "dev_acc": best, "test_acc": test, "done": True})
    return reports


def _write_plot_experiment(exp):
    """roberta-large k=16 on SST-2 and RTE: zero-shot (one final report, no k), MeZO at lr 1e-6 and 1e-7,
    FT, two seeds each; an errored MeZO trial (SST-2) and an unfinished one (RTE); OPT-13B on MultiRC with
    zero-shot, MeZO and FT whose peak memory spans more than 10×. MeZO curves dip at their last
    evaluation, so the final report (best dev) would end them in a jump if it were drawn."""
    for t, task in enumerate(("SST-2", "RTE")):
        for s, seed in enumerate((13, 21)):
            base = 0.6 + 0.05 * t + 0.02 * s
            write_trial(
                exp,
                cfg(RL, task, "zero_shot", None, seed, None),
                _reports([base], test=base - 0.01, peak_gib=1.0)[-1:],
            )
            for lr, up in ((1e-6, 0.2), (1e-7, 0.1)):
                devs = [base, base + up, base + up - 0.05]
                write_trial(
                    exp, cfg(RL, task, "mezo", 16, seed, lr), _reports(devs, base + up - 0.03, peak_gib=1.5)
                )
            write_trial(
                exp, cfg(RL, task, "ft", 16, seed, 1e-5), _reports([base + 0.25], base + 0.2, peak_gib=4)
            )
    write_trial(
        exp,
        cfg(RL, "SST-2", "mezo", 16, 13, 1e-5),
        _reports([0.55, 0.5]),
        error="Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory.",
    )
    write_trial(exp, cfg(RL, "RTE", "mezo", 16, 21, 1e-5), _reports([0.6, 0.62, 0.64]))
    write_trial(exp, cfg(OPT, "MultiRC", "zero_shot", None, 0, None), _reports([0.5], 0.45, peak_gib=26)[-1:])
    write_trial(
        exp, cfg(OPT, "MultiRC", "mezo", None, 0, 1e-6), _reports([0.6, 0.7, 0.68], 0.69, peak_gib=28)
    )
    write_trial(exp, cfg(OPT, "MultiRC", "ft", None, 0, 1e-5), _reports([0.75], 0.72, peak_gib=300))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    exp = tmp_path_factory.mktemp("plot_experiment")
    _write_plot_experiment(exp)
    report = from_experiment_dirs(exp)
    selected = select_best(report.trials)
    return report, selected, aggregate_memory(report.trials)


@pytest.fixture(scope="module")
def figures(synthetic):
    report, selected, memory = synthetic
    return {
        **curve_figures(report, selected),
        **selected_figures(selected),
        "memory.png": memory_figure(memory),
    }


def _visible(artist) -> bool:
    return artist.get_visible() and (artist.axes is None or artist.axes.get_visible())


def _ticks_out_of_view(fig) -> set[int]:
    """ids of the tick labels matplotlib does not draw: those of ticks outside their axis' view (a log
    locator places some beyond it; their Text objects exist, off the figure, but are never drawn)."""
    out = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            slack = (high - low) * 1e-9
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not low - slack <= tick.get_loc() <= high + slack:
                    out.update({id(tick.label1), id(tick.label2)})
    return out


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_synthetic_experiment_writes_the_expected_files(synthetic, tmp_path):
    report, selected, memory = synthetic
    names = sorted(p.name for p in write_plots(report, selected, memory, tmp_path))
    assert names == [
        "curves_opt-13b.png",
        "curves_roberta-large_k16.png",
        "memory.png",
        "selected_opt-13b.png",
        "selected_roberta-large_k16.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


@pytest.mark.parametrize(
    "name",
    [
        "curves_opt-13b.png",
        "curves_roberta-large_k16.png",
        "memory.png",
        "selected_opt-13b.png",
        "selected_roberta-large_k16.png",
    ],
)
def test_no_text_is_clipped_and_legends_stay_off_the_axes(figures, name):
    """Every visible text (titles, tick labels, legend entries, baseline labels) lies inside the figure,
    and the figure legend covers no panel and no other text (the title)."""
    _assert_fits(figures[name])


def _assert_fits(fig):
    assert fig.dpi == 100
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    frame = fig.bbox
    undrawn = _ticks_out_of_view(fig)
    texts = [t for t in fig.findobj(Text) if _visible(t) and t.get_text().strip() and id(t) not in undrawn]
    assert texts
    for text in texts:
        box = text.get_window_extent(renderer)
        inside = frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0
        assert inside and box.y1 <= frame.y1 + 1, (text.get_text(), box, frame)
    tight, inches = fig.get_tightbbox(renderer), fig.bbox_inches
    assert inches.x0 <= tight.x0 and inches.y0 <= tight.y0 and tight.x1 <= inches.x1 and tight.y1 <= inches.y1
    assert fig.legends
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not _overlaps(box, ax.get_window_extent(renderer)), ax.get_title()
        own = {id(t) for t in [*legend.get_texts(), legend.get_title()]}
        for text in texts:
            if id(text) not in own:
                assert not _overlaps(box, text.get_window_extent(renderer)), text.get_text()


def _lines(ax, prefix):
    return {
        line.get_gid().split(":", 1)[1]: line
        for line in ax.lines
        if (line.get_gid() or "").startswith(prefix)
    }


def test_curves_are_a_row_of_panels_per_task_with_baselines_as_lines(synthetic, figures):
    """Panels are tasks (by forward passes, by step), never methods: zero-shot is a horizontal line at the
    mean dev score of its selected trials, labelled, and no trial line of its own."""
    report, selected, _ = synthetic
    fig = figures["curves_roberta-large_k16.png"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["RTE: by forward passes", "RTE: by step", "SST-2: by forward passes", "SST-2: by step"]
    zero_shot = set(report.trials.loc[report.trials["row"] == "Zero-shot", "trial_id"])
    for ax in fig.axes:
        task = ax.get_title().split(":")[0]
        chosen = selected[(selected["task"] == task) & (selected["row"] == "Zero-shot")]
        assert len(chosen) == 2
        line = _lines(ax, "baseline:")["Zero-shot"]
        assert list(line.get_ydata()) == pytest.approx([chosen["dev_acc"].mean() * 100] * 2)
        assert list(line.get_xdata()) == [0, 1]  # axes coordinates: across the whole panel
        assert not zero_shot & set(_lines(ax, "trial:"))
        assert any(t.get_text() == f"Zero-shot {chosen['dev_acc'].mean() * 100:.1f}" for t in ax.texts)


def test_curves_draw_evaluations_only(synthetic, figures):
    """Every trained trial is one line per panel ending at its last evaluation: the final report (its
    selected checkpoint's dev score, here higher than the last evaluation's) is never a point."""
    report, _, _ = synthetic
    history = report.history
    final = history["final"].eq(True)
    trained = report.trials[report.trials["row"] != "Zero-shot"]
    seen = set()
    for fig in (figures["curves_roberta-large_k16.png"], figures["curves_opt-13b.png"]):
        for ax in fig.axes:
            x_key = "forward_passes" if "forward passes" in ax.get_title() else "step"
            for trial_id, line in _lines(ax, "trial:").items():
                evals = history[(history["trial_id"] == trial_id) & ~final]
                assert list(line.get_xdata()) == list(evals[x_key])
                assert list(line.get_ydata()) == pytest.approx(list(evals["dev_acc"] * 100))
                seen.add(trial_id)
    assert seen == set(trained["trial_id"])
    jumps = history[final].merge(history[~final], on=["trial_id", "step"])
    assert (jumps["dev_acc_x"] != jumps["dev_acc_y"]).any()  # the data would show the old jump


def test_curves_colour_per_method_style_per_lr_and_mark_unfinished_and_errored(synthetic, figures):
    report, _, _ = synthetic
    trials = report.trials.set_index("trial_id")
    fig = figures["curves_roberta-large_k16.png"]
    styles = {}
    for ax in fig.axes:
        for trial_id, line in _lines(ax, "trial:").items():
            styles.setdefault((trials.at[trial_id, "row"], trials.at[trial_id, "lr"]), set()).add(
                (line.get_color(), line.get_linestyle())
            )
    assert all(len(s) == 1 for s in styles.values())
    style = {key: next(iter(s)) for key, s in styles.items()}
    mezo = [style[("MeZO", lr)] for lr in (1e-7, 1e-6, 1e-5)]
    assert len({colour for colour, _ in mezo}) == 1 and len({ls for _, ls in mezo}) == 3
    assert style[("FT", 1e-5)][0] != mezo[0][0]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:4] == ["MeZO, lr 1e-7", "MeZO, lr 1e-6", "MeZO, lr 1e-5", "FT, lr 1e-5"]
    assert "last report of an unfinished trial" in legend and "last report of an errored trial" in legend
    for status, marker in (("unfinished", "o"), ("errored", "x")):
        (trial_id,) = trials.index[trials["status"] == status]
        task = trials.at[trial_id, "task"]
        last = report.history[report.history["trial_id"] == trial_id].iloc[-1]
        ax = next(ax for ax in fig.axes if ax.get_title() == f"{task}: by step")
        mark = _lines(ax, f"{status}:")[trial_id]
        assert mark.get_marker() == marker
        assert (mark.get_xdata()[0], mark.get_ydata()[0]) == pytest.approx(
            (last["step"], last["dev_acc"] * 100)
        )
        assert not _lines(ax, "errored:" if status == "unfinished" else "unfinished:").keys() & {trial_id}


def test_selected_scores_show_seeds_mean_std_and_the_paper(synthetic, figures):
    """Per task and method: a dot per seed, the mean with the std over seeds (ddof=0, the table's) as its
    error bar, the published mean as a marker where the paper has one; a y range of at least 20 points."""
    _, selected, _ = synthetic
    cells = aggregate(selected).set_index(["model", "task", "row"])
    papers = 0
    for model, name in ((RL, "selected_roberta-large_k16.png"), (OPT, "selected_opt-13b.png")):
        k = 16 if model == RL else None
        for ax in (ax for ax in figures[name].axes if ax.get_visible()):
            task = ax.get_title()
            bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
            assert sorted(bars) == sorted(
                selected.loc[(selected["model"] == model) & (selected["task"] == task), "row"].unique()
            )
            for row, container in bars.items():
                cell = cells.loc[(model, task, row)]
                assert container.lines[0].get_ydata()[0] == pytest.approx(cell["mean"])
                (low, high) = container.lines[2][0].get_segments()[0][:, 1]
                assert (high - low) / 2 == pytest.approx(cell["std"])
                chosen = selected[
                    (selected["model"] == model) & (selected["task"] == task) & (selected["row"] == row)
                ]
                seeds = _lines(ax, "seeds:")[row].get_ydata()
                assert sorted(seeds) == pytest.approx(sorted(chosen["test_acc"] * 100))
                published = published_score(model, k, row, task)
                marker = _lines(ax, "paper:").get(row)
                if published is None or published.mean is None:
                    assert marker is None
                else:
                    assert marker.get_ydata()[0] == published.mean
                    papers += 1
            low, high = ax.get_ylim()
            assert low >= 0 and high <= 100 and high - low >= 20
    assert papers >= 6  # Table 18: zero-shot, MeZO and FT on SST-2 and RTE
    assert any(cells["std"] > 0)


def test_memory_is_log_exactly_when_its_values_span_more_than_10x(figures, synthetic):
    _, _, memory = synthetic
    fig = figures["memory.png"]
    scales = {}
    for ax in fig.axes:
        heights = [bar.get_height() for bar in ax.patches]
        marks = [line.get_ydata()[0] for line in _lines(ax, "paper:").values()]
        values = [v for v in heights + marks if v > 0]
        scales[ax.get_title()] = ax.get_yscale()
        assert (ax.get_yscale() == "log") == (max(values) > 10 * min(values)), ax.get_title()
        low, high = ax.get_ylim()
        assert low <= min(values) and max(values) <= high
    assert scales == {"MultiRC": "log", "RTE": "linear", "SST-2": "linear"}
    multirc = next(ax for ax in fig.axes if ax.get_title() == paper.MEMORY_TASK)
    marks = {key: line.get_ydata()[0] for key, line in _lines(multirc, "paper:").items()}
    published = paper.PAPER_MEMORY["opt-13b"]
    assert marks == {
        f"{OPT}:Zero-shot": published["Zero-shot / MeZO"].gb,
        f"{OPT}:MeZO": published["Zero-shot / MeZO"].gb,
        f"{OPT}:FT": published["Full FT"].gb,
    }
    ours = memory[memory["task"] == "MultiRC"].set_index("row")["peak_gib"]
    assert sorted(bar.get_height() for bar in multirc.patches) == pytest.approx(sorted(ours))
    assert all(not _lines(ax, "paper:") for ax in fig.axes if ax is not multirc)


def test_methods_figure_draws_each_methods_mean_dev_curve_of_its_selected_trials(tmp_path, writer):
    """One panel per task; per method a thick line, the mean over seeds of the dev scores its selected
    trials reported at each evaluation (not the final report, which repeats the selected dev score);
    nothing drawn outside the figure, the legend off the panels and the title."""
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
    _assert_fits(fig)


def test_the_memory_benchmark_is_drawn_against_model_size_with_the_papers_table_22(tmp_path):
    """benchmarks/memory.py's cells: a line per method on log-log axes, measured sizes filled, the
    extrapolated ones apart (hollow, dashed), Table 22's GB as diamonds; nothing clipped; written by
    write_plots as memory_benchmark.png with no experiment at all."""
    import dataclasses

    from mezo_ray.report.load import memory_benchmark_cells
    from mezo_ray.report.plots import memory_scaling_figures

    gib = 2**30
    rows = {
        size: {"mezo": {"peak": peak * gib, **({"extrapolated": True} if size in ("13b", "30b") else {})}}
        for size, peak in (("125m", 1.0), ("1.3b", 3.3), ("13b", 25.6), ("30b", 59.0))
    }
    rows["1.3b"]["ft"] = {"peak": 10.9 * gib}
    rows["13b"]["ft"] = {"error": "killed"}
    cells = memory_benchmark_cells({"dtype": "bfloat16", "device": "cpu", "seq": 400, "rows": rows})
    ((name, fig),) = memory_scaling_figures(cells).items()
    assert name == "memory_benchmark.png"
    _assert_fits(fig)
    (ax,) = fig.axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    measured, guessed = _lines(ax, "measured:")["MeZO"], _lines(ax, "extrapolated:")["MeZO"]
    assert list(measured.get_xdata()) == [1.25e8, 1.3e9] and list(measured.get_ydata()) == pytest.approx(
        [1.0, 3.3]
    )
    assert list(guessed.get_xdata()) == [1.3e10, 3e10] and guessed.get_markerfacecolor() == "white"
    assert list(_lines(ax, "measured:")["FT"].get_ydata()) == pytest.approx([10.9])  # the failed 13b left out
    paper_mezo = _lines(ax, "paper:")["MeZO"]
    published = {m: c["Zero-shot / MeZO"].gb for m, c in paper.PAPER_MEMORY.items()}
    assert list(paper_mezo.get_ydata()) == [published[m] for m in paper.PAPER_MEMORY]
    report = dataclasses.replace(Report.empty(), memory_benchmark=cells)
    written = write_plots(report, select_best(report.trials), aggregate_memory(report.trials), tmp_path)
    assert [p.name for p in written] == ["memory_benchmark.png"]
