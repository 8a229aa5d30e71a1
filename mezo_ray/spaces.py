"""Search spaces: ``search_spaces/*.yaml`` -> a validated ``SearchSpace`` -> Tune's inputs.

A space is data::

    description: one line
    metric: best_dev_acc            # what Tune optimises (mode: max)
    defaults: {model: roberta-large, max_steps: 100000, ...}   # every trial
    grids:                          # a union of grids: each expands to its cartesian product
      - name: MeZO
        set: {method: mezo, eps: 1.0e-3}
        grid: {task: [SST-2, sst-5], k: [16, 512], data_seed: [13, 21, 42, 87, 100], lr: [1.0e-7, 1.0e-6]}
    optuna:                         # distributions for --search optuna (optional)
      lr: {loguniform: [1.0e-7, 1.0e-4]}
      mode: {choice: [full, lora, prefix]}
    pbt:                            # what --scheduler pbt may mutate, and its range (optional)
      lr: [1.0e-7, 3.0e-7, 1.0e-6]  # a list: an exploit moves to a neighbouring value
      eps: {loguniform: [1.0e-4, 1.0e-2]}   # a range: it multiplies by 0.8 or 1.2

Every expanded trial is validated into a ``TrialConfig`` before Ray starts; errors name the space,
the grid, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mezo_ray.tasks.custom import with_data_paths_from
from mezo_ray.train.config import (
    FLAT_FIELDS,
    PATH_FIELDS,
    TrialConfig,
    absolute_path,
    flat_default,
    format_validation_error,
    parse_trial_config,
    task_definition,
)

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")
#: What PBT may change mid-trial: a MeZO step's record keeps its lr and eps, so a trial that takes over
#: another's checkpoint replays that trial's steps exactly and goes on with the new values.
PBT_KEYS = ("lr", "eps")


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        return grid


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    metric: str = "best_dev_acc"
    mode: Literal["max", "min"] = "max"
    defaults: dict[str, Any] = Field(default_factory=dict)
    grids: list[Grid] = Field(min_length=1)
    optuna: dict[str, dict[str, list[Any]]] | None = None
    pbt: dict[str, list[float] | dict[str, list[float]]] | None = None

    @field_validator("pbt")
    @classmethod
    def _mutable_keys(cls, pbt: dict[str, Any] | None) -> Any:
        for key, spec in (pbt or {}).items():
            if key not in PBT_KEYS:
                raise ValueError(f"pbt.{key}: PBT may mutate only {PBT_KEYS} (what a step's record keeps)")
            if isinstance(spec, dict) and (
                len(spec) != 1 or next(iter(spec)) not in ("loguniform", "uniform")
            ):
                raise ValueError(
                    f"pbt.{key}={spec!r}: expected a list of values or loguniform / uniform: [lo, hi]"
                )
            if isinstance(spec, list) and len(spec) < 2:
                raise ValueError(f"pbt.{key}={spec!r}: a list needs at least two values to move between")
        return pbt

    @field_validator("optuna")
    @classmethod
    def _known_distributions(cls, optuna: dict[str, dict[str, list[Any]]] | None) -> Any:
        for key, dist in (optuna or {}).items():
            if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
                raise ValueError(f"optuna.{key}={dist!r}: expected one of {DISTRIBUTIONS} with its arguments")
        return optuna

    # ------------------------------------------------------------------------------------------------
    def pbt_mutations(self) -> dict[str, Any]:
        """PBT's ``hyperparam_mutations``: lists as they are, ranges as Tune distributions."""
        from ray import tune

        if not self.pbt:
            raise ValueError(
                f"space {self.name!r} declares no pbt mutations; add e.g. `pbt: {{lr: [1.0e-4, 1.0e-3]}}`"
            )
        return {
            key: spec
            if isinstance(spec, list)
            else getattr(tune, next(iter(spec)))(*next(iter(spec.values())))
            for key, spec in self.pbt.items()
        }

    def optuna_space(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Tune's param_space for Optuna: constants plus distributions (explicit, or the grids' values)."""
        from ray import tune

        constants = task_definition({**self.defaults, **(overrides or {})})
        if constants.get("task_spec") is not None:  # the definition travels with the trials
            constants["task_spec"] = constants["task_spec"].model_dump(mode="json")
        constants = {k: absolute_path(k, v) if k in PATH_FIELDS else v for k, v in constants.items()}
        dists: dict[str, Any] = {}
        if self.optuna:
            for key, spec in self.optuna.items():
                ((kind, args),) = spec.items()
                dists[key] = getattr(tune, kind)(args) if kind == "choice" else getattr(tune, kind)(*args)
        else:  # every value a grid or a grid's `set` gives a key becomes a category
            values: dict[str, list[Any]] = {}
            for grid in self.grids:
                for key, options in [*((k, [v]) for k, v in grid.set.items()), *grid.grid.items()]:
                    values.setdefault(key, [])
                    values[key] += [v for v in options if v not in values[key]]
            for key, options in values.items():
                if key not in constants:
                    dists[key] = tune.choice(options) if len(options) > 1 else options[0]
        space = {**{k: v for k, v in constants.items() if k not in dists}, **dists}
        _check_keys(space, f"space {self.name!r} (optuna)")
        return space


def expand(
    space: SearchSpace,
    overrides: dict[str, Any] | None = None,
    only: dict[str, list[Any]] | None = None,
    gpus_per_trial: float | None = None,
    repeats: int = 1,
) -> list[TrialConfig]:
    """Every trial of the grid search, validated once: ``overrides`` (``--set``) applied last, then
    only the trials whose ``only`` keys take one of the listed values; ``gpus_per_trial`` spread over
    each trial's own workers; every trial ``repeats`` times, each with its own training seed.

    ``--set k=16`` rewrites every trial (a grid pinned to k=512 runs at k=16 with k=512's batch
    sizes); ``--only k=16`` keeps the trials the space itself runs at k=16.
    """
    overrides = overrides or {}
    seen, out = set(), []
    for grid in space.grids:
        keys = list(grid.grid)
        for values in itertools.product(*(grid.grid[k] for k in keys)):
            own = {**space.defaults, **grid.set, **dict(zip(keys, values, strict=True))}
            # --only selects by the space's own values (its defaults included), before --set rewrites
            # them; a value derived at validation (family) is read from the config
            own_values = {k: _scalar(own[k]) if k in own else _space_default(k) for k in only or {}}
            if not all(own_values[k] in v for k, v in (only or {}).items() if own_values[k] is not None):
                continue
            raw = {**own, **overrides}
            if gpus_per_trial is not None:  # grids may differ in num_workers
                workers = raw.get("num_workers", flat_default("num_workers")) or 1
                raw["gpus_per_worker"] = gpus_per_trial / workers
            where = f"space {space.name!r}, grid {grid.name!r}, trial {raw}"
            cfg = parse_trial_config(raw, where=where)
            if not all(cfg.to_flat()[k] in v for k, v in (only or {}).items() if own_values[k] is None):
                continue
            key = json.dumps(cfg.to_flat(), sort_keys=True)
            if key not in seen:  # an override can collapse a grid axis
                seen.add(key)
                out.append(cfg)
    if only and not out:
        raise ValueError(f"--only {only}: no trial of space {space.name!r} matches")
    if repeats == 1:
        return out
    return [  # --num-samples N with a grid: each repeat with its own training seed
        parse_trial_config({**cfg.to_flat(), "seed": cfg.training_seed + r}, where=f"space {space.name!r}")
        for r in range(repeats)
        for cfg in out
    ]


def _space_default(key: str) -> Any:
    """A field's value in a trial whose space does not set it (None: required or derived)."""
    return flat_default(key)


def _check_keys(raw: dict[str, Any], where: str) -> None:
    unknown = sorted(set(raw) - set(FLAT_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {sorted(FLAT_FIELDS)}")


# ----------------------------------------------------------------------------------------------------
def builtin_spaces() -> dict[str, str]:
    """Names of the spaces shipped with mezo_ray -> their YAML paths."""
    root = importlib.resources.files("mezo_ray.search_spaces")
    return {p.name.removesuffix(".yaml"): str(p) for p in root.iterdir() if p.name.endswith(".yaml")}


def load_space(name_or_path: str) -> SearchSpace:
    """A built-in space by name, or a user's YAML file by path."""
    spaces = builtin_spaces()
    if name_or_path in spaces:
        path = spaces[name_or_path]
    elif os.path.isfile(name_or_path):
        path = name_or_path
    else:
        where = os.path.abspath(name_or_path)
        job = (  # a Ray job runs in its unpacked --working-dir: a file outside it is not there
            f"; this Ray job runs in {os.getcwd()}, its --working-dir: submit from the folder that holds "
            "the file (ray job submit --working-dir .) or give a path every node sees"
            if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by the job supervisor for its driver
            else ""
        )
        raise ValueError(
            f"--space {name_or_path!r} is neither a built-in space {sorted(spaces)} "
            f"nor a YAML file that exists ({where}){job}"
        )
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ValueError(f"search space {path}: malformed YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"search space {path}: expected a mapping with description, defaults, grids")
    raw.setdefault("name", os.path.basename(path).removesuffix(".yaml"))
    _tasks_relative_to(raw, os.path.dirname(os.path.abspath(path)))
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise ValueError(f"search space {path}: {format_validation_error(err)}") from None
    for grid in space.grids:
        _check_keys({**space.defaults, **grid.set, **grid.grid}, f"search space {path}, grid {grid.name!r}")
    return space


def _tasks_relative_to(raw: dict[str, Any], folder: str) -> None:
    """Task files named in a space, and the data files of tasks written in it, are relative to the
    space file: rewrite them as absolute paths (in place)."""

    def resolve(task: Any) -> Any:
        if isinstance(task, str) and task.endswith((".yaml", ".yml")):
            return os.path.join(folder, os.path.expanduser(task))
        return with_data_paths_from(task, folder) if isinstance(task, dict) else task

    sections = [raw.get("defaults") or {}]
    for grid in raw.get("grids") or []:
        if isinstance(grid, dict):
            sections.append(grid.get("set") or {})
            if isinstance(grid.get("grid"), dict) and isinstance(grid["grid"].get("task"), list):
                grid["grid"]["task"] = [resolve(task) for task in grid["grid"]["task"]]
    for section in sections:
        if isinstance(section, dict) and "task" in section:
            section["task"] = resolve(section["task"])


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads 1e-6 (no dot) as a string; a user typing --set lr=1e-6 means a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """``--set key=value`` pairs -> a dict (values parsed as YAML: numbers, booleans, lists)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r}: expected key=value")
        out[key.strip()] = _scalar(yaml.safe_load(value))
    _check_keys(out, flag)
    return out


def parse_filters(pairs: list[str]) -> dict[str, list[Any]]:
    """``--only key=v1,v2`` pairs -> {key: [values]} (each value parsed as ``--set`` parses one)."""
    out: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--only {pair!r}: expected key=value or key=value1,value2")
        out[key.strip()] = [_scalar(yaml.safe_load(v)) for v in values.split(",")]
    _check_keys(out, "--only")
    return out
