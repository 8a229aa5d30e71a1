"""What a search prints: a line per trial when it starts, naming only what sets it apart, its progress
lines, and every 30 s a status table of the running trials with the tuned settings as columns.

Tune's own terminal prints each trial's whole configuration (70 rows, most of them settings the trial
never reads), truncates numbers (lr 0.0 as ``0.``), and the trials' processes add Ray's own log lines.
So by default the search prints through ``SearchTerminal`` and worker output stays in the trials' logs;
``--verbose`` gives Tune's tables and the workers' output back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ray.tune import Callback

from mezo_ray.report.load import unused_keys
from mezo_ray.train.progress import method_name, progress_line

#: Where a trial runs, not what it computes: never part of its name.
RESOURCE_KEYS = frozenset(
    {"num_workers", "cpus_per_worker", "gpus_per_worker", "placement_strategy", "max_worker_failures"}
)
_ALWAYS = ("method", "estimator")  # the label's first word


def shown_keys(trials: Sequence[Mapping[str, Any]], tuned: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    """Per method (``method_name``), the settings that tell its trials apart: those that differ between
    them, and ``tuned`` (a searcher's or PBT's keys), less resources and the settings it does not read."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for trial in trials:
        groups.setdefault(method_name(trial["method"], trial.get("estimator")), []).append(trial)
    shown = {}
    for name, group in groups.items():
        unread = unused_keys(group[0]["method"], group[0].get("estimator")) | RESOURCE_KEYS | set(_ALWAYS)
        differ = [key for key in group[0] if len({repr(t.get(key)) for t in group}) > 1]
        shown[name] = tuple(k for k in dict.fromkeys([*differ, *tuned]) if k not in unread)
    return shown


def trial_label(config: Mapping[str, Any], shown: Mapping[str, Sequence[str]]) -> str:
    """``mezo lr=0.0005 data_seed=1``: the trial's method and the settings that set it apart."""
    name = method_name(config["method"], config.get("estimator"))
    settings = [f"{key}={_value(config.get(key))}" for key in shown.get(name, ())]
    return " ".join([name, *settings])


def _value(value: Any) -> str:
    """Numbers as ``:g`` writes them (1e-06, 0.0005, 0), never cut short; nothing as "-"."""
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


class SearchTerminal(Callback):
    """The search's lines (see the module's docstring), from the trial events Tune gives every callback.
    Tune's own reporter runs beside it at verbosity 0: the experiment's header, and errors."""

    HEARTBEAT_S = 30.0  # Tune's interval
    QUIET_S = 300.0  # the longest the status table stays away while the running trials have not reported

    def __init__(self, shown: Mapping[str, Sequence[str]], metric: str, mode: str) -> None:
        self._shown, self._metric, self._mode = shown, metric, mode
        self._columns = list(dict.fromkeys(key for keys in shown.values() for key in keys))
        self.setup()

    def setup(self, **info: Any) -> None:
        self._start = self._last_heartbeat = self._last_table = time.time()  # a resumed search: anew

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{_short(trial)} started: {trial_label(trial.config, self._shown)}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "dev_acc" not in result:
            return
        if result.get("step") == trial.config.get("max_steps") and "test_acc" not in result:
            return  # the last evaluation: the final report's line, next, says it with the test score
        label = trial_label(trial.config, self._shown)
        print(progress_line(label, result, trial.config.get("max_steps")), flush=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.time() - self._last_heartbeat >= self.HEARTBEAT_S:
            self._last_heartbeat = time.time()
            self.print_status(trials)

    def print_status(self, trials: list) -> None:
        """``Trial status: 2 TERMINATED | 2 RUNNING (01:00)`` and a table of the running trials and the
        best so far, with the tuned settings as columns."""
        running = [t for t in trials if t.status == "RUNNING"]
        if not running:  # nothing started yet, or the end (the search's summary follows)
            return
        reported = any("step" in (t.last_result or {}) for t in running)
        if not reported and time.time() - self._last_table < self.QUIET_S:
            return  # a table of "-" only says what the start lines said; every QUIET_S it says alive
        self._last_table = time.time()
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        elapsed = time.strftime("%M:%S", time.gmtime(time.time() - self._start))
        status = " | ".join(f"{n} {state}" for state, n in counts.items())
        print(f"Trial status: {status} ({elapsed})")
        best = self._best(trials)
        rows = [self._row(t) for t in running + ([best] if best and best not in running else [])]
        headers = ["trial", "status", "method", *self._columns, "step", self._metric]
        print(_table([headers, *rows]), flush=True)

    def _row(self, trial: Any) -> list[str]:
        result = trial.last_result or {}
        name = method_name(trial.config["method"], trial.config.get("estimator"))
        shown = self._shown.get(name, ())
        settings = [_value(trial.config.get(key)) if key in shown else "-" for key in self._columns]
        score = result.get(self._metric)
        status = trial.status if trial.status == "RUNNING" else "best so far"
        return [_short(trial), status, name, *settings, str(result.get("step", "-")), _value(score)]

    def _best(self, trials: list) -> Any:
        scored = [t for t in trials if (t.last_result or {}).get(self._metric) is not None]
        if not scored:
            return None
        sign = 1 if self._mode == "max" else -1
        return max(scored, key=lambda t: sign * t.last_result[self._metric])


def _table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, indented under the status line; no value is cut."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join("  " + line.rstrip() for line in lines)


def _short(trial: Any) -> str:
    """``trial 00003``: the trial's number in the experiment (its folder's and Tune's id end in it)."""
    return f"trial {trial.trial_id.rsplit('_', 1)[-1]}"
