"""What a search prints: trial names from what sets a trial apart, progress lines, the status table."""

from types import SimpleNamespace

from mezo_ray.terminal import SearchTerminal, shown_keys, trial_label
from mezo_ray.train import parse_trial_config
from mezo_ray.train.progress import progress_line

DEMO = dict(model="tiny-causal", task="synthetic-sst2-causal", num_workers=1, max_steps=600, eval_steps=200)


def _trials(*overrides):
    return [parse_trial_config({**DEMO, **o}).to_flat() for o in overrides]


def _demo_trials():
    zero_shot = [{"method": "zero_shot", "num_workers": 0, "data_seed": s} for s in (0, 1)]
    mezo = [{"method": "mezo", "eps": 1e-3, "lr": lr, "data_seed": s} for lr in (5e-4, 1e-3) for s in (0, 1)]
    return _trials(*zero_shot, *mezo)


def test_a_trial_is_named_by_what_sets_it_apart_from_its_methods_other_trials():
    trials = _demo_trials()
    shown = shown_keys(trials)
    # eps differs from zero-shot's default but is the same in every MeZO trial; num_workers is a resource;
    # zero-shot reads neither lr nor eps
    assert shown == {"zero_shot": ("data_seed",), "mezo": ("data_seed", "lr")}
    assert [trial_label(t, shown) for t in trials] == [
        "zero_shot data_seed=0",
        "zero_shot data_seed=1",
        "mezo data_seed=0 lr=0.0005",
        "mezo data_seed=1 lr=0.0005",
        "mezo data_seed=0 lr=0.001",
        "mezo data_seed=1 lr=0.001",
    ]


def test_an_estimator_is_named_as_itself_and_numbers_are_never_cut():
    trials = _trials(
        {"method": "mezo", "estimator": "fzoo", "n_probes": 4, "lr": 1e-6},
        {"method": "mezo", "estimator": "fzoo", "n_probes": 8, "lr": 2.5e-4},
        {"method": "mezo", "lr": 1e-6},
    )
    shown = shown_keys(trials, tuned=["eps"])
    assert shown == {"fzoo": ("n_probes", "lr", "eps"), "mezo": ("eps",)}  # one mezo trial: only the tuned
    assert trial_label(trials[0], shown) == "fzoo n_probes=4 lr=1e-06 eps=0.001"
    assert trial_label(trials[1], shown) == "fzoo n_probes=8 lr=0.00025 eps=0.001"


def test_progress_lines_of_evaluations_final_reports_and_baselines():
    evaluation = {"step": 200, "dev_acc": 0.87, "best_dev_acc": 0.9, "dev_loss": 0.3716, "steps_per_s": 7.083}
    assert progress_line("mezo lr=0.001", evaluation, 600) == (
        "[mezo lr=0.001] step 200/600 dev_acc 0.8700 (best 0.9000) dev_loss 0.3716 7.08 steps/s"
    )
    final = {**evaluation, "done": True, "step": 600, "test_acc": 0.886, "selected_step": 200}
    assert progress_line("mezo lr=0.001", final, 600) == (
        "[mezo lr=0.001] step 600/600 best dev_acc 0.9000; test_acc 0.8860 of the weights at step 200"
    )
    baseline = {"done": True, "step": 0, "dev_acc": 0.665, "test_acc": 0.6}
    assert progress_line("zero_shot", baseline, 600) == "[zero_shot] dev_acc 0.6650 test_acc 0.6000"


def test_the_status_table_shows_running_trials_and_the_best_with_the_tuned_columns(capsys):
    trials = _demo_trials()
    shown = shown_keys(trials)
    terminal = SearchTerminal(shown, metric="best_dev_acc", mode="max")
    terminal.setup()

    def trial(i, status, result):
        return SimpleNamespace(trial_id=f"986eb_0000{i}", status=status, config=trials[i], last_result=result)

    population = [
        trial(0, "TERMINATED", {"best_dev_acc": 0.905, "step": 0}),
        trial(1, "TERMINATED", {"best_dev_acc": 0.585, "step": 0}),
        trial(2, "RUNNING", {"best_dev_acc": 0.87, "step": 200}),
        trial(3, "RUNNING", {}),
        trial(4, "PENDING", {}),
    ]
    terminal.print_status(population)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Trial status: 2 TERMINATED | 2 RUNNING | 1 PENDING (")
    assert lines[1].split() == ["trial", "status", "method", "data_seed", "lr", "step", "best_dev_acc"]
    assert lines[2].split() == ["trial", "00002", "RUNNING", "mezo", "0", "0.0005", "200", "0.87"]
    assert lines[3].split() == ["trial", "00003", "RUNNING", "mezo", "1", "0.0005", "-", "-"]
    # the best so far, finished: zero-shot reads no lr
    assert lines[4].split() == ["trial", "00000", "best", "so", "far", "zero_shot", "0", "-", "0", "0.905"]
    assert len(lines) == 5


def test_quiet_until_there_is_progress_and_the_last_evaluation_is_said_once(capsys):
    trials = _demo_trials()
    terminal = SearchTerminal(shown_keys(trials), metric="best_dev_acc", mode="max")
    terminal.setup()
    starting = SimpleNamespace(trial_id="986eb_00002", status="RUNNING", config=trials[2], last_result={})
    terminal.print_status([starting])  # a table of "-" only
    assert capsys.readouterr().out == ""
    terminal._last_table -= SearchTerminal.QUIET_S  # but now and then it says the search is alive
    terminal.print_status([starting])
    assert capsys.readouterr().out.startswith("Trial status: 1 RUNNING")
    last = {"step": 600, "dev_acc": 0.9, "best_dev_acc": 0.9, "dev_loss": 0.3, "steps_per_s": 7.0}
    terminal.on_trial_result(0, [], starting, last)  # the final report's line says it, with the test score
    assert capsys.readouterr().out == ""
    terminal.on_trial_result(0, [], starting, {**last, "done": True})  # Tune's done: not the final report
    assert capsys.readouterr().out == ""
    terminal.on_trial_result(0, [], starting, {**last, "test_acc": 0.91, "selected_step": 400})
    assert capsys.readouterr().out == (
        "[mezo data_seed=0 lr=0.0005] step 600/600 best dev_acc 0.9000; "
        "test_acc 0.9100 of the weights at step 400\n"
    )
