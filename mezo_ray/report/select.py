"""Selection and aggregation as the paper did it (mezo_protocol.md §1.2).

For every (model, task, k, row, data_seed) the configuration with the best *dev* value is selected and its
*test* score reported; a cell is the mean and population std (ddof=0, numpy's default, as in the paper's
gather script) of those test scores over data seeds, ×100. Hyper-parameters are therefore selected per seed,
never by looking at test.
"""

from __future__ import annotations

import pandas as pd
import yaml

from mezo_ray.estimators import ALL_OWN_SETTINGS
from mezo_ray.report.load import ROW_KEYS

#: Selection metric -> direction, read from a trial's final report, whose dev metrics are those of the
#: checkpoint it tested (CONTRACTS.md): ``dev_acc`` (highest) is the medium-model (RoBERTa) gather script's
#: rule; ``dev_loss`` (lowest) is what the OPT code's HF Trainer used. Not ``best_dev_acc``: under a trial's
#: own dev-loss selection its running maximum may belong to a checkpoint that was never tested.
SELECTIONS = {"dev_acc": "max", "dev_loss": "min"}
#: A selection is made within each of these groups (one per data seed) ...
SEED_KEYS = ["model", "task", "k", "row", "data_seed"]
#: ... and aggregated over seeds into one table cell per these.
CELL_KEYS = ["model", "task", "k", "row"]
GIB = 2**30


def check_selection(select: str) -> str:
    """Return the direction ("max"/"min") of a selection metric; ValueError naming the allowed ones."""
    if select not in SELECTIONS:
        raise ValueError(f"select={select!r} is not a selection rule; use one of {sorted(SELECTIONS)}")
    return SELECTIONS[select]


def candidates(trials: pd.DataFrame, include_unfinished: bool = False) -> pd.DataFrame:
    """Return the trials that may be selected: finished ones, plus unfinished and errored ones (on their last
    reported values) when ``include_unfinished`` is set."""
    return trials if include_unfinished else trials[trials["status"] == "done"]


def select_best(
    trials: pd.DataFrame, select: str = "dev_acc", include_unfinished: bool = False
) -> pd.DataFrame:
    """Return one row per (model, task, k, row, data_seed): the trial with the best final ``select`` value.

    Ties go as in the paper's gather script (``paper_run_name``), then to the smaller trial id; a trial
    that lacks the selection metric ranks last (so a lone zero-shot trial without a dev metric is still
    reported).
    """
    ascending = check_selection(select) == "min"
    pool = candidates(trials, include_unfinished)
    ranked = pool.assign(_paper_name=[paper_run_name(row) for row in pool.to_dict("records")]).sort_values(
        [select, "_paper_name", "trial_id"],
        ascending=[ascending, True, True],
        na_position="last",
        kind="stable",
    )
    selected = ranked.drop_duplicates(SEED_KEYS, keep="first").drop(columns="_paper_name")
    return selected.sort_values(SEED_KEYS, kind="stable", ignore_index=True)


def paper_run_name(trial: dict) -> str:
    """The part of a run's output folder that the paper's ``medium_models/tools/gather_result.py`` orders
    tied runs by: ``max(sorted(runs, key=output_dir), key=dev)`` keeps the first in string order. Its
    scripts name a MeZO run ``...bs64-lr1e-6-eps1e-3-wd0-step100000-evalstep10000`` (``mezo.sh``) and an
    FT run ``...bs8-lr1e-5-step1000-evalstep100`` (``finetune.sh``), values as typed in shell, so on a tie
    lr 1e-6 wins over 1e-7, and batch size 16 over 32 over 8."""
    parts = [("bs", "batch_size"), ("lr", "lr")]
    if trial.get("method") != "ft":
        parts += [("eps", "eps"), ("wd", "weight_decay")]
    parts += [("step", "max_steps"), ("evalstep", "eval_steps")]
    return "-".join(f"{tag}{_as_typed(trial.get(key))}" for tag, key in parts)


def _as_typed(value: object) -> str:
    """A number as the paper's shell scripts wrote it: 64, 0, 100000, 1e-6, 5e-7, 1.5e-5."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    number = float(value)  # type: ignore[arg-type]
    if number == int(number) and (abs(number) >= 1 or number == 0):
        return str(int(number))
    mantissa, exponent = f"{number:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def aggregate(selected: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (model, task, k, row): ``mean`` and ``std`` (ddof=0) of test_acc ×100 over seeds,
    ``n`` seeds with a test score, ``seeds`` selected, ``includes_unfinished``, and ``hub_data`` (a
    selected trial read its task's hub data set: no ``data_source``, or "hub")."""
    source = selected["data_source"] if "data_source" in selected else pd.Series(None, index=selected.index)
    scored = selected.assign(
        score=selected["test_acc"] * 100,
        unfinished=selected["status"] != "done",
        hub_data=source.isna() | (source == "hub"),
    )
    grouped = scored.groupby(CELL_KEYS, dropna=False, sort=True)
    cells = grouped.agg(
        mean=("score", "mean"),
        n=("score", "count"),
        seeds=("score", "size"),
        includes_unfinished=("unfinished", "any"),
        hub_data=("hub_data", "any"),
    )
    cells["std"] = grouped["score"].std(ddof=0)
    return cells.reset_index()[[*CELL_KEYS, "mean", "std", "n", "seeds", "includes_unfinished", "hub_data"]]


def aggregate_memory(trials: pd.DataFrame, include_unfinished: bool = False) -> pd.DataFrame:
    """Return one row per (model, task, row) with ``peak_gib``, the largest peak_mem_bytes of any of its
    trials in GiB (what a run needs to be provisioned with), and ``n`` trials that reported memory."""
    pool = candidates(trials, include_unfinished).dropna(subset=["peak_mem_bytes"])
    pool = pool.assign(peak_gib=pool["peak_mem_bytes"] / GIB, unfinished=pool["status"] != "done")
    memory = pool.groupby(["model", "task", "row"], sort=True).agg(
        peak_gib=("peak_gib", "max"), n=("peak_gib", "size"), includes_unfinished=("unfinished", "any")
    )
    return memory.reset_index()


#: The settings a search tunes within a method: what a best-configuration line sets with ``--set``.
TUNED_KEYS = (
    "lr",
    "eps",
    "weight_decay",
    "batch_size",
    *ALL_OWN_SETTINGS,  # each estimator's own (mezo_ray/estimators.py)
)


def best_configurations(
    trials: pd.DataFrame, select: str = "dev_acc", include_unfinished: bool = False
) -> pd.DataFrame:
    """Per (model, task, k, row): the tuned settings (TUNED_KEYS) with the best mean final ``select``
    over data seeds, and ``rerun``, the ``python -m mezo_ray.tune`` arguments that run it again from
    the same space: ``--only`` for the task and the method settings that tell this row's trials from
    the experiment's others, ``--set`` for the tuned settings that vary within the row. Columns:
    model, task, k, row, the metric (mean), seeds, settings (a dict), rerun, pbt (the trials ran under
    PBT: the settings are those it ended with)."""
    ascending = check_selection(select) == "min"
    pool = candidates(trials, include_unfinished).dropna(subset=[select])
    tuned = [key for key in TUNED_KEYS if key in pool]
    varying_methods = [key for key in ("task", *ROW_KEYS) if key in trials and trials[key].nunique() > 1]
    rows = []
    for (model, task, k, row), cell in pool.groupby(["model", "task", "k", "row"], dropna=False, sort=True):
        varying = [key for key in tuned if cell[key].nunique(dropna=False) > 1]
        by_setting = cell.groupby(varying, dropna=False)[select] if varying else [((), cell[select])]
        scores = [(values, scores.mean(), scores.count()) for values, scores in by_setting]
        values, score, seeds = sorted(scores, key=lambda s: s[1], reverse=not ascending)[0]
        values = values if isinstance(values, tuple) else (values,)
        settings = dict(zip(varying, values, strict=True))
        first = cell.iloc[0]
        only = [f"--only {key}={_cli(first[key])}" for key in varying_methods if not pd.isna(first[key])]
        sets = [f"--set {key}={_cli(value)}" for key, value in settings.items()]
        rows.append(
            {
                "model": model,
                "task": task,
                "k": k,
                "row": row,
                select: score,
                "seeds": seeds,
                "settings": settings,
                "rerun": " ".join([*only, *sets]),
                # under PBT a trial's settings are a schedule: these are the ones it ended with
                "pbt": bool("pbt" in cell and cell["pbt"].any()),
            }
        )
    columns = ["model", "task", "k", "row", select, "seeds", "settings", "rerun", "pbt"]
    return pd.DataFrame(rows, columns=columns)


def search_cost(trials: pd.DataFrame) -> dict[str, float]:
    """What a search spent: ``trials`` run, ``finished`` ones, ``forward_passes`` (the sum of every
    trial's last reported count, finished or not) and ``trial_seconds`` (the sum of Tune's
    time_total_s per trial, where recorded)."""
    seconds = trials["time_total_s"] if "time_total_s" in trials else pd.Series(dtype=float)
    return {
        "trials": len(trials),
        "finished": int((trials["status"] == "done").sum()),
        "forward_passes": float(trials["forward_passes"].fillna(0).sum()),
        "trial_seconds": float(seconds.fillna(0).sum()),
    }


def _cli(value: object) -> str:
    """A value as ``--set`` / ``--only`` parse it back (YAML: 1.0e-06, true, null)."""
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and value != value:
        value = None
    elif isinstance(value, float) and value == int(value) and abs(value) < 1e15:
        value = int(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
