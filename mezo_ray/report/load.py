"""Tune experiment folders or a ResultGrid -> one tidy table of trials and one of their reports.

Both entry points go through the same ``_build`` so a table printed at the end of a search (from the live
ResultGrid) and one printed later from the copied folder are the same table. Folders are read with json and
pandas only, so a laptop without torch or ray can report on an experiment copied from a cluster.

A trial counts as finished only when its last report has ``done: true`` *and* a ``test_acc``: Tune itself
sets ``done`` on the last row when a scheduler (ASHA) or a stop criterion ends a trial early, and such a
trial never reached the final test evaluation (CONTRACTS.md: only the final report carries ``test_acc``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mezo_ray.estimators import ALL_OWN_SETTINGS, ESTIMATORS, OWN_SETTINGS, ROW_SETTINGS

#: Trial config keys of CONTRACTS.md, in the order the trials table shows them.
CONFIG_KEYS = (
    "model",
    "task",
    "k",
    "data_seed",
    "method",
    "zo_variant",
    "estimator",
    "mode",
    "lr",
    "eps",
    "weight_decay",
    "batch_size",
    "max_steps",
    "eval_steps",
    "n_perturbations",
    "perturbation_schedule",
    "objective",
    "max_forward_passes",
    "prompt",
    "seed",
    "data_source",
    "lp_init",
    "layer_wise",
    "perturbation_scale",
    "xgblora_steps_per_iteration",
    *ALL_OWN_SETTINGS,  # each estimator's own (mezo_ray/estimators.py)
)
#: Metrics taken from a trial's last report (``lr``/``eps`` stay the config's, not the reported schedule's).
FINAL_METRICS = (
    "step",
    "forward_passes",
    "dev_acc",
    "best_dev_acc",
    "dev_loss",
    "train_loss",
    "test_acc",
    "selected_step",
    "selection",
    "steps_per_s",
    "nonfinite_steps",
    "optimizer_state_multiple",
    "time_total_s",  # Tune's: the trial's seconds so far
)
#: Metrics kept per report, for the learning-curve plots (and ``final``: the report is the trial's last,
#: with test_acc, whose dev metrics repeat those of the checkpoint it tested: not an evaluation).
HISTORY_METRICS = (
    "step",
    "forward_passes",
    "dev_acc",
    "best_dev_acc",
    "dev_loss",
    "train_loss",
    "peak_mem_bytes",
)
STATUSES = ("done", "unfinished", "errored")

_ZO_VARIANT_NAMES = {"sgd": "MeZO", "adam": "MeZO-Adam", "momentum": "MeZO-momentum", "sign": "MeZO-sign"}
_MODE_SUFFIX = {
    "full": "",
    "lora": " (LoRA)",
    "prefix": " (prefix)",
    "lora_as_published": " (LoRA, as published)",  # the paper code's LoRA: see models/modes.py
}
#: Methods that do not train -> their rows (the plots draw them as reference lines).
UNTRAINED_ROWS = {"zero_shot": "Zero-shot", "icl": "ICL", "lp": "LP"}
#: Settings of the zeroth-order estimate: no other method reads them.
_ZO_KEYS = (
    "eps",
    "zo_variant",
    "estimator",
    "n_perturbations",
    "perturbation_schedule",
    "perturbation_scale",
    "layer_wise",
    "lp_init",
    *ALL_OWN_SETTINGS,
)
_TRAINING_KEYS = (
    "mode",
    "lr",
    "weight_decay",
    "batch_size",
    "max_steps",
    "eval_steps",
    "objective",
    "max_forward_passes",
    "xgblora_steps_per_iteration",
)
#: Config keys a method does not read: every table and summary shows them as missing ("-"), never as the
#: default its config carried (zero-shot's lr 1e-6 was never used).
UNUSED_KEYS = {
    "zero_shot": _ZO_KEYS + _TRAINING_KEYS,
    "icl": _ZO_KEYS + _TRAINING_KEYS,
    "lp": _ZO_KEYS + _TRAINING_KEYS,
    "ft": _ZO_KEYS,
}


def unused_keys(method: Any, estimator: Any = None) -> set[str]:
    """The config keys a trial of ``method`` (and, for MeZO, ``estimator``) does not read."""
    if method == "mezo":
        mine = str(estimator) if _present(estimator) else "mezo"
        return {key for name, keys in OWN_SETTINGS.items() if name != mine for key in keys}
    return set(UNUSED_KEYS.get(str(method), ()))


#: Rows that use no training data: their k is dropped, so one run shows in every k section of its model.
K_FREE_ROWS = ("Zero-shot",)
#: The settings that make a trial's row (method and ablation): ``row_label``'s arguments, in order.
ROW_KEYS = (
    "method",
    "zo_variant",
    "mode",
    "n_perturbations",
    "perturbation_schedule",
    "objective",
    "max_forward_passes",
    "prompt",
    "lp_init",
    "layer_wise",
    "perturbation_scale",
    "estimator",
    "xgblora_steps_per_iteration",
    *ROW_SETTINGS,  # the estimators' own settings that name their rows
)
_TUNE_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})(?:_|$)")


@dataclass(frozen=True)
class Report:
    """What the report layer knows about one or more Tune experiments.

    ``trials``: one row per trial (config keys, ``row`` label, ``status`` in STATUSES, ``reason``, final
    metrics, ``peak_mem_bytes`` = max over reports, ``n_reports``, ``experiment``, ``path``).
    ``history``: one row per report (``trial_id``, ``report`` index, HISTORY_METRICS and ``final``: the
    trial's last report, holding test_acc, not an evaluation), for plots.
    ``memory_benchmark``: ``benchmarks/memory.py --json`` results to render as Table 22
    (``read_memory_benchmark``), or None.
    """

    trials: pd.DataFrame
    history: pd.DataFrame
    memory_benchmark: pd.DataFrame | None = None

    @classmethod
    def empty(cls) -> Report:
        """A Report of no trial (its tables: only what is added to it, e.g. a memory benchmark)."""
        return _build([])


def row_label(
    method: Any,
    zo_variant: Any = None,
    mode: Any = None,
    n_perturbations: Any = None,
    perturbation_schedule: Any = None,
    objective: Any = None,
    max_forward_passes: Any = None,
    prompt: Any = None,
    lp_init: Any = None,
    layer_wise: Any = None,
    perturbation_scale: Any = None,
    estimator: Any = None,
    xgblora_steps_per_iteration: Any = None,
    **own: Any,
) -> str:
    """Return the paper's row label for a trial, e.g. ("mezo", "sgd", "lora") -> "MeZO (LoRA)".

    ``own``: the estimator's own settings (``mezo_ray.estimators``), which may name its row.
    Settings that make a different experiment (n-SPSA, the metric objective, a forward-pass budget, no
    prompt) go in brackets, e.g. "MeZO [n=4 linear, 10000 fwd]", so ablations never share a cell (or a
    published number) with the plain row. Unknown values still give a readable label, never dropped.
    """
    method = str(method) if _present(method) else "unknown"
    mode = str(mode) if _present(mode) else "full"
    if method in UNTRAINED_ROWS:
        return UNTRAINED_ROWS[method]
    suffix = _MODE_SUFFIX.get(mode, f" ({mode})")
    if _present(xgblora_steps_per_iteration):
        suffix = " (XGBLoRA)"
    if method == "mezo" and estimator in ESTIMATORS:
        present = {key: value for key, value in own.items() if _present(value)}
        label = ESTIMATORS[str(estimator)].row_label(present) + suffix
    elif method == "mezo":
        variant = str(zo_variant) if _present(zo_variant) else "sgd"
        label = _ZO_VARIANT_NAMES.get(variant, f"MeZO-{variant}") + suffix
    elif method == "ft" and mode == "head":
        label = "LP"  # head tuning: the paper's LP for OPT tasks that are not classification (Table 1)
    elif method == "ft":
        label = "FT" + suffix
    else:
        label = method + suffix
    if method == "mezo" and lp_init is True:
        label = "LP-" + label  # Table 19's LP-MeZO
    qualifiers = []
    if _present(n_perturbations) and int(n_perturbations) > 1:
        linear = " linear" if perturbation_schedule == "linear" else ""
        qualifiers.append(f"n={int(n_perturbations)}{linear}")
    if _present(objective) and objective != "loss":
        qualifiers.append(f"{objective} objective")
    if _present(max_forward_passes):
        qualifiers.append(f"{int(max_forward_passes)} fwd")
    if prompt is False:
        qualifiers.append("no prompt")
    if layer_wise is True:
        qualifiers.append("layer-wise")
    if _present(xgblora_steps_per_iteration):
        qualifiers.append(f"merge every {int(xgblora_steps_per_iteration)}")
    if _present(perturbation_scale) and perturbation_scale != "none":
        qualifiers.append(str(perturbation_scale).replace("_", "-"))
    return label + (f" [{', '.join(qualifiers)}]" if qualifiers else "")


def model_key(model: Any) -> str:
    """Return the lower-case last path component of a hub name or local path ("facebook/opt-13b" ->
    "opt-13b"), the key the published numbers are filed under."""
    return str(model).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()


def find_trial_dirs(path: str | os.PathLike) -> list[Path]:
    """Return the trial folders (those holding ``params.json``) under ``path``, which may be an experiment
    folder, a folder of experiments, or one trial folder; checkpoint folders are not searched."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"experiment folder {str(root)!r} does not exist or is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "params.json" in filenames:
            found.append(Path(dirpath))
            dirnames.clear()  # a trial folder holds checkpoints, not further trials
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("checkpoint_"))
    return sorted(found)


def from_experiment_dirs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Report:
    """Return the Report of every trial under one or more experiment folders written by Tune.

    Raises FileNotFoundError when a path is missing and ValueError when no folder holds any trial.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = list(paths)
    records = [_record_from_dir(d) for p in paths for d in find_trial_dirs(p)]
    if not records:
        raise ValueError(
            f"no Tune trial folders (sub-folders with params.json) under {[str(p) for p in paths]}"
        )
    return _build(records)


#: ``benchmarks/memory.py``'s methods -> our row labels.
BENCHMARK_MEMORY_ROWS = {
    "zero-shot": "Zero-shot",
    "icl": "ICL",
    "mezo": "MeZO",
    "mezo-prefix": "MeZO (prefix)",
    "mezo-lora": "MeZO (LoRA)",
    "ft-prefix": "FT (prefix)",
    "ft": "FT",
}


def read_memory_benchmark(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Return the cells of ``benchmarks/memory.py --json`` output files (``memory_benchmark_cells``);
    ValueError names a file that is not such an output."""
    frames = []
    for path in paths:
        try:
            frames.append(memory_benchmark_cells(json.loads(Path(path).read_text())))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{str(path)!r} is not the output of benchmarks/memory.py --json ({error!r})"
            ) from error
    return pd.concat(frames, ignore_index=True)


def memory_benchmark_cells(result: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (OPT size, method) of a ``benchmarks/memory.py`` result: model ("opt-1.3b"), row (our
    label), peak_gib, extrapolated (a fit, not a measurement), dtype, device, seq. A method that failed
    to run is left out."""
    rows = [
        {
            "model": f"opt-{size}",
            "row": BENCHMARK_MEMORY_ROWS.get(method, method),
            "peak_gib": cell["peak"] / 2**30,
            "extrapolated": bool(cell.get("extrapolated")),
            "dtype": result["dtype"],
            "device": result["device"],
            "seq": result["seq"],
        }
        for size, methods in result["rows"].items()
        for method, cell in methods.items()
        if "peak" in cell
    ]
    return pd.DataFrame(rows, columns=["model", "row", "peak_gib", "extrapolated", "dtype", "device", "seq"])


def from_result_grid(results: Iterable[Any]) -> Report:
    """Return the Report of a Tune ResultGrid (or any iterable of objects with ``.config``, ``.metrics``,
    ``.metrics_dataframe``, ``.error`` and ``.path``); works on a restored grid without a live cluster."""
    records = []
    for result in results:
        path = getattr(result, "path", None) or ""
        config = getattr(result, "config", None)
        if not config and path and (Path(path) / "params.json").is_file():
            config = json.loads((Path(path) / "params.json").read_text())
        reports = getattr(result, "metrics_dataframe", None)
        reports = pd.DataFrame() if reports is None else reports.copy()
        metrics = dict(getattr(result, "metrics", None) or {})
        if metrics:  # the last result: carries the done flag Tune sets when it stops a trial
            reports = _with_final(reports, metrics)
        error = getattr(result, "error", None)
        error_text = None if error is None else f"{type(error).__name__}: {error}"
        trial_id = metrics.get("trial_id") or _trial_id_from(reports, Path(path).name if path else "")
        experiment = Path(path).parent.name if path else ""
        records.append(_Record(str(trial_id), experiment, str(path), dict(config or {}), reports, error_text))
    if not records:
        raise ValueError("the ResultGrid holds no results")
    return _build(records)


@dataclass(frozen=True)
class _Record:
    trial_id: str
    experiment: str
    path: str
    config: dict
    reports: pd.DataFrame
    error: str | None


def _record_from_dir(trial_dir: Path) -> _Record:
    config = json.loads((trial_dir / "params.json").read_text())
    reports = _read_reports(trial_dir)
    error_file = trial_dir / "error.txt"
    error = error_file.read_text(errors="replace") if error_file.is_file() else None
    trial_id = _trial_id_from(reports, trial_dir.name)
    return _Record(trial_id, trial_dir.parent.name, str(trial_dir), config, reports, error)


def _read_reports(trial_dir: Path) -> pd.DataFrame:
    """Read result.json (JSON lines; a half-written last line of a running trial is skipped), else
    progress.csv; the nested ``config`` copy Tune adds to every row is dropped."""
    result_json = trial_dir / "result.json"
    if result_json.is_file():
        rows = []
        for line in result_json.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        frame = pd.DataFrame.from_records(rows)
    elif (trial_dir / "progress.csv").is_file() and (trial_dir / "progress.csv").stat().st_size:
        frame = pd.read_csv(trial_dir / "progress.csv")
    else:
        frame = pd.DataFrame()
    return frame.drop(columns=[c for c in frame.columns if c == "config" or str(c).startswith("config/")])


def _with_final(reports: pd.DataFrame, metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Make ``metrics`` (a ResultGrid's last result) the last row, replacing the copy in metrics_dataframe."""
    final = {k: v for k, v in metrics.items() if k != "config" and not isinstance(v, Mapping)}
    reports = reports.drop(columns=[c for c in reports.columns if str(c).startswith("config/")])
    last = pd.DataFrame([final])
    if len(reports) and "training_iteration" in reports and "training_iteration" in final:
        same = reports["training_iteration"].iloc[-1] == final["training_iteration"]
        reports = reports.iloc[:-1] if same else reports
    return pd.concat([reports, last], ignore_index=True) if len(reports) else last


def _trial_id_from(reports: pd.DataFrame, dirname: str) -> str:
    if "trial_id" in reports and reports["trial_id"].notna().any():
        return str(reports["trial_id"].dropna().iloc[-1])
    match = _TUNE_TRIAL_ID.search(dirname)
    return match.group(1) if match else dirname


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "error (no message)"
    return line if len(line) <= 160 else line[:157] + "..."


def _status(final: Mapping[str, Any], error: str | None, n_reports: int, max_steps: Any) -> tuple[str, str]:
    """Classify a trial as done / unfinished / errored and say why in a line for the report footer."""
    finished = bool(final.get("done")) and _present(final.get("test_acc"))
    if finished:
        return "done", "" if error is None else f"completed after an error (resumed): {_last_line(error)}"
    if error is not None:
        return "errored", _last_line(error)
    if n_reports == 0:
        return "unfinished", "no reports yet"
    step = final.get("step")
    where = f"at step {int(step)}" if _present(step) else f"after {n_reports} reports"
    if _present(max_steps) and _present(step):
        where += f" of {int(max_steps)}"
    if final.get("done"):
        return "unfinished", f"stopped by Tune {where} before its final report (no test_acc)"
    return "unfinished", f"no final report (last report {where})"


def _build(records: list[_Record]) -> Report:
    trial_rows, histories = [], []
    for rec in records:
        reports = rec.reports.reset_index(drop=True)
        final = reports.iloc[-1].to_dict() if len(reports) else {}
        config = {key: rec.config.get(key) for key in CONFIG_KEYS}
        row = row_label(**{key: config[key] for key in ROW_KEYS})
        if row in K_FREE_ROWS:
            config["k"] = None
        status, reason = _status(final, rec.error, len(reports), config["max_steps"])
        config.update(dict.fromkeys(unused_keys(config["method"], config["estimator"]) & set(config)))
        peak = pd.to_numeric(reports.get("peak_mem_bytes", pd.Series(dtype=float)), errors="coerce").max()
        trial_rows.append(
            {
                "trial_id": rec.trial_id,
                "experiment": rec.experiment,
                "status": status,
                "reason": reason,
                **config,
                "row": row,
                **{m: final.get(m) for m in FINAL_METRICS},
                "peak_mem_bytes": peak,
                "n_reports": len(reports),
                "path": rec.path,
                # Tune's PBT log beside the trial: its settings changed as it took over others' checkpoints
                "pbt": os.path.exists(os.path.join(os.path.dirname(str(rec.path)), "pbt_global.txt")),
            }
        )
        history = reports.reindex(columns=list(HISTORY_METRICS)).apply(pd.to_numeric, errors="coerce")
        final_report = reports["test_acc"].notna() if "test_acc" in reports else False
        histories.append(
            history.assign(trial_id=rec.trial_id, report=range(len(history)), final=final_report)
        )
    columns = ["trial_id", "experiment", "status", "reason", *CONFIG_KEYS, "row", *FINAL_METRICS]
    trials = pd.DataFrame(trial_rows, columns=[*columns, "peak_mem_bytes", "n_reports", "path", "pbt"])
    for key in ("k", "data_seed", "batch_size", "max_steps", "eval_steps", "n_perturbations", "seed"):
        trials[key] = pd.to_numeric(trials[key], errors="coerce").astype("Int64")
    numeric = [
        "lr",
        "eps",
        "max_forward_passes",
        "weight_decay",
        *(m for m in FINAL_METRICS if m != "selection"),
        "peak_mem_bytes",
    ]
    trials[numeric] = trials[numeric].apply(pd.to_numeric, errors="coerce")
    for key in (
        "model",
        "task",
        "method",
        "zo_variant",
        "mode",
        "perturbation_schedule",
        "objective",
        "data_source",
    ):
        trials[key] = trials[key].astype(object).where(trials[key].notna(), None)
    trials["model"] = trials["model"].fillna("unknown")
    trials["task"] = trials["task"].fillna("unknown")
    history_columns = ["trial_id", "report", *HISTORY_METRICS, "final"]
    history = pd.concat(histories or [pd.DataFrame(columns=history_columns)], ignore_index=True)
    history = history[history_columns].astype({m: float for m in HISTORY_METRICS} | {"final": bool})
    return Report(trials=trials.sort_values("trial_id", kind="stable", ignore_index=True), history=history)
