"""Load a task's data and sample the paper's train / dev / test splits.

Sources (`DataSpec.source`):
- "hub": the hub data set the paper used, via `datasets.load_dataset` (needs network or a warm cache).
- "local": your CSV / TSV / JSONL files, `columns` mapping task fields to file columns.
- "lmbff": LM-BFF's pre-sampled k-shot folders `{data_dir}/{task}/{k}-{seed}/` (what RoBERTa runs read).
- "lmbff-original": LM-BFF's original pack `{data_dir}/{task}/train.*`, sampled here exactly as LM-BFF's
  `tools/generate_k_shot_data.py --mode k-shot-1k-test` does.
- "synthetic": the generated offline tasks (`synthetic-sst2`, `synthetic-sst2-causal`).

Sampling (the same seed always gives the same examples):
- MLM family (protocol §1.2): shuffle the train split once with `np.random.seed(seed)`, group by label in
  shuffled order; train = first k per label, dev = next k per label. Test = the task's test split, cut to
  1000 with seed 42 when larger (fixed across data seeds).
- Causal family (§2.1): one permutation of the train split under `seed`; its first num_train + num_dev
  examples, of which dev = the LAST num_dev. Test = the first num_test of a permutation of the test split.
"""

import csv
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mezo_ray.tasks.base import Example, HubSource, LocalSource, SyntheticSource, Task
from mezo_ray.tasks.mlm import LmBffFiles, MLMTask

SOURCES = ("hub", "local", "lmbff", "lmbff-original", "synthetic")
DEFAULT_K = 16
DEFAULT_SEED = {"mlm": 13, "causal": 0}  # MLM paper seeds: 13, 21, 42, 87, 100; causal: 0
MLM_TEST_SEED = 42
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


LMBFF_DOWNLOAD = "https://nlp.cs.princeton.edu/projects/lm-bff/datasets.tar"
LMBFF_HOW_TO = f"""
The paper's RoBERTa runs read LM-BFF's data pack. To get it:
  1. download {LMBFF_DOWNLOAD}, unpack it (`tar xf datasets.tar` gives original/) and use GLUE's SST-2
     as LM-BFF's data/download_dataset.sh does: `mv original/SST-2 original/SST-2-original;
     mv original/GLUE-SST-2 original/SST-2`;
  2. either set data_source=lmbff-original and data_dir=/path/to/original (mezo_ray draws the k-shot
     splits from it exactly as LM-BFF's script does),
     or run `for K in 16 512; do python tools/generate_k_shot_data.py --mode k-shot-1k-test --k $K; done`
     in LM-BFF or MeZO's medium_models and set data_source=lmbff and data_dir=/path/to/k-shot-1k-test.
On the command line: --set data_source=... --set data_dir=... To use the hub data sets instead, whose rows
and order are not the pack's (so the k-shot draws differ from the paper's): --set data_source=hub"""


class DatasetUnavailableError(RuntimeError):
    """A hub data set could not be loaded; the message says how to use local files instead."""


@dataclass(frozen=True)
class DataSpec:
    """Where a task's data comes from and how its splits are sampled; the defaults are the paper's.

    source: one of SOURCES; None means the task's own (the hub, or "synthetic" for synthetic tasks).
    data_dir: root folder for "lmbff" / "lmbff-original".
    train_file, test_file, columns: for "local"; `columns` maps a task field (or the target key "label" /
        "answer" / "answers") to the file's column name when they differ.
    k: examples per class, MLM family only (None: 16). seed: the data seed (None: 13 MLM, 0 causal).
    num_train, num_dev, num_test: causal sizes (num_dev None: the task's, 500; CB and Copa 100);
        num_test also caps the MLM test set.
    strict_k: raise instead of warning when a class has fewer than 2k train examples. The paper silently
        takes what exists (TREC k=512: "Expression" has 86, so 86 train and 0 dev examples).
    fix_wsc: cap dev at half of a train split that is smaller than num_train + num_dev. The paper's WSC has
        554 train examples and gets 54 train / 500 dev; fixed, 277 / 277. Other paper tasks are unaffected.
    hub_path: load this hub repo instead of the task's (e.g. a parquet mirror with the same columns).
    """

    source: str | None = None
    data_dir: str | None = None
    train_file: str | None = None
    test_file: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    k: int | None = None
    seed: int | None = None
    num_train: int = 1000
    num_dev: int | None = None
    num_test: int = 1000
    strict_k: bool = False
    fix_wsc: bool = False
    hub_path: str | None = None

    def __post_init__(self) -> None:
        if self.source is not None and self.source not in SOURCES:
            raise ValueError(
                f"DataSpec.source={self.source!r}; allowed: {list(SOURCES)} or None (the task's own)"
            )
        if self.k is not None and self.k < 1:
            raise ValueError(f"DataSpec.k={self.k}; must be a positive number of examples per class")
        for name in ("num_train", "num_dev", "num_test"):
            if (value := getattr(self, name)) is not None and value < 0:
                raise ValueError(f"DataSpec.{name}={value}; must be >= 0")


class Splits(NamedTuple):
    """The sampled splits of one task and data seed."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]


class Pool(NamedTuple):
    """A task's full, unsampled train and test data (the test split being the original dev set for GLUE)."""

    train: list[Example]
    test: list[Example]


def load_splits(task: Task, spec: DataSpec | None = None) -> Splits:
    """Train / dev / test examples of `task`, sampled as the paper did (see the module docstring)."""
    spec = spec or DataSpec()
    _check_family_options(task, spec)
    if source_of(task, spec) == "lmbff":
        return _read_lmbff_k_shot(task, spec)
    pool = load_pool(task, spec)
    seed = _seed(task, spec)
    if task.family == "mlm":
        train, dev = sample_k_shot(task, pool.train, spec.k or DEFAULT_K, seed, strict=spec.strict_k)
        return Splits(
            train, dev, first_of_permutation(pool.test, spec.num_test, MLM_TEST_SEED, keep_order=True)
        )
    return _sample_causal(task, pool, spec, seed)


def load_pool(task: Task, spec: DataSpec | None = None) -> Pool:
    """The full train and test data of `task` from `spec.source` (the ICL demonstrations come from here)."""
    spec = spec or DataSpec()
    source = source_of(task, spec)
    if source == "hub":
        return _hub_pool(task, spec)
    if source == "local":
        own = task.source if isinstance(task.source, LocalSource) else None  # a task's own files
        train_file = spec.train_file or (own.train_file if own else None)
        test_file = spec.test_file or (own.test_file if own else None)
        columns = spec.columns or (own.columns if own else {})
        if not train_file or not test_file:
            raise ValueError(
                f"source='local' needs both train_file and test_file; got train_file={train_file!r}, "
                f"test_file={test_file!r}"
            )
        return Pool(_read_local(task, train_file, columns), _read_local(task, test_file, columns))
    if source == "lmbff-original":
        files = _lmbff_files(task)
        folder = _data_dir(spec, source) / task.name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"LM-BFF folder {folder} does not exist (source='lmbff-original' reads "
                f"{{data_dir}}/{{task}}/ of the pack's original/ folder).{LMBFF_HOW_TO}"
            )
        train = _read_lmbff(task, files, folder / f"train.{files.format}")
        return Pool(train, _read_lmbff(task, files, folder / f"{files.original_test_name}.{files.format}"))
    if source == "synthetic":
        if not isinstance(task.source, SyntheticSource):
            raise ValueError(
                f"source='synthetic' is for the generated tasks; task {task.name} is a real data set"
            )
        generated = task.source.make(task.source.num_train + task.source.num_test, task.source.seed)
        return Pool(generated[: task.source.num_train], generated[task.source.num_train :])
    raise ValueError(f"source={source!r} holds pre-sampled splits; use load_splits, not load_pool")


# -- sampling ---------------------------------------------------------------------------------------------


def permutation(n: int, seed: int) -> list[int]:
    """`np.random.seed(seed); np.random.permutation(n)`: the legacy RNG both papers' scripts use.

    LM-BFF's `np.random.shuffle(lines)` and pandas' `sample(n, random_state=seed)` reorder by this same
    permutation, so one function reproduces all three.
    """
    return np.random.RandomState(seed).permutation(n).tolist()


def first_of_permutation(
    items: Sequence[Example], num: int, seed: int, keep_order: bool = False
) -> list[Example]:
    """The first `num` items of a seeded permutation; with `keep_order`, all items unshuffled if they fit."""
    if keep_order and len(items) <= num:
        return list(items)
    return [items[i] for i in permutation(len(items), seed)[:num]]


def sample_k_shot(
    task: Task, pool: Sequence[Example], k: int, seed: int, strict: bool = False
) -> tuple[list[Example], list[Example]]:
    """LM-BFF k-shot sampling: (train, dev) with k examples per class each, in LM-BFF's order."""
    by_label: dict[int, list[Example]] = {}
    for i in permutation(len(pool), seed):  # insertion order = first appearance in shuffled order
        by_label.setdefault(pool[i].label, []).append(pool[i])
    counts = {task.class_names[label]: len(by_label.get(label, [])) for label in range(len(task.label_names))}
    if missing := [name for name, count in counts.items() if count == 0]:
        raise ValueError(
            f"task {task.name}: classes {missing} have no train examples (class counts {counts})"
        )
    if short := [name for name, count in counts.items() if count < 2 * k]:
        message = (
            f"task {task.name}, k={k}: classes {short} have fewer than 2k={2 * k} train examples "
            f"(k train + k dev); class counts {counts}"
        )
        if strict:
            raise ValueError(f"{message}. Lower k, or set DataSpec(strict_k=False) to take what exists")
        warnings.warn(
            f"{message}. Taking what exists, as the paper did; DataSpec(strict_k=True) makes this an error",
            stacklevel=3,
        )
    train = [ex for group in by_label.values() for ex in group[:k]]
    dev = [ex for group in by_label.values() for ex in group[k : 2 * k]]
    return train, dev


def causal_split_sizes(task: Task, spec: DataSpec, available: int) -> tuple[int, int]:
    """(train, dev) sizes the causal sampling takes from a train split of ``available`` examples."""
    num_dev = _num_dev(task, spec)
    chosen = min(spec.num_train + num_dev, available)
    if chosen < spec.num_train + num_dev and spec.fix_wsc:
        num_dev = min(num_dev, chosen // 2)
    return chosen - num_dev, num_dev


def _num_dev(task: Task, spec: DataSpec) -> int:
    return getattr(task, "num_dev", 500) if spec.num_dev is None else spec.num_dev


def expected_train_size(task: Task, spec: DataSpec | None = None) -> int | None:
    """How many train examples ``load_splits`` returns, known without loading any data: causal tasks
    whose hub split size is published (``HubSource.train_rows``) or generated; otherwise None."""
    spec = spec or DataSpec()
    source = source_of(task, spec)
    if task.family != "causal" or spec.hub_path:
        return None
    if source == "hub" and isinstance(task.source, HubSource) and task.source.train_rows:
        return causal_split_sizes(task, spec, task.source.train_rows)[0]
    if source == "synthetic" and isinstance(task.source, SyntheticSource):
        return causal_split_sizes(task, spec, task.source.num_train)[0]
    return None


def _sample_causal(task: Task, pool: Pool, spec: DataSpec, seed: int) -> Splits:
    wanted = spec.num_train + _num_dev(task, spec)
    chosen = first_of_permutation(pool.train, wanted, seed)
    num_train, num_dev = causal_split_sizes(task, spec, len(chosen))
    if num_train <= 0:
        raise ValueError(
            f"task {task.name}: the train split has {len(chosen)} examples, leaving none for training after "
            f"num_dev={num_dev}; lower num_dev or set DataSpec(fix_wsc=True)"
        )
    if num_train < num_dev:
        warnings.warn(
            f"task {task.name}: the train split has {len(chosen)} < num_train + num_dev = {wanted} examples; "
            f"as in the paper, dev = the last {num_dev} and train = the {num_train} before them. "
            f"DataSpec(fix_wsc=True) caps dev at half instead",
            stacklevel=3,
        )
    test = first_of_permutation(pool.test, spec.num_test, seed)
    return Splits(chosen[:num_train], chosen[num_train:], test)


def sample_icl_demonstrations(
    train_pool: Sequence[Example], num_test: int, num_demos: int = 32, seed: int = 0
) -> list[list[Example]]:
    """One demonstration set per test example, as MeZO's ICL runs draw them from the full train split.

    Set i = the first `num_demos` of a permutation under seed s_i, with s = `np.random.seed(0);
    np.random.randint(0, 10000, num_test)`.
    """
    set_seeds = np.random.RandomState(seed).randint(0, 10000, num_test)
    return [first_of_permutation(train_pool, num_demos, int(s)) for s in set_seeds]


# -- sources ----------------------------------------------------------------------------------------------


def source_of(task: Task, spec: DataSpec) -> str:
    """Where ``task``'s data comes from under ``spec``: one of SOURCES."""
    if spec.source is not None:
        return spec.source
    if isinstance(task.source, LocalSource):
        return "local"
    return "synthetic" if isinstance(task.source, SyntheticSource) else "hub"


def _seed(task: Task, spec: DataSpec) -> int:
    return DEFAULT_SEED[task.family] if spec.seed is None else spec.seed


def _check_family_options(task: Task, spec: DataSpec) -> None:
    if task.family == "causal" and spec.k is not None:
        raise ValueError(
            f"DataSpec.k={spec.k} applies to the MLM family; causal task {task.name} samples num_train / "
            f"num_dev / num_test (set k=None)"
        )


def _data_dir(spec: DataSpec, source: str) -> Path:
    if not spec.data_dir:
        raise ValueError(f"source={source!r} needs data_dir (the folder holding LM-BFF's per-task folders)")
    return Path(spec.data_dir)


def _hub_pool(task: Task, spec: DataSpec) -> Pool:
    hub = task.source
    if not isinstance(hub, HubSource):
        raise ValueError(
            f"task {task.name} has no hub data set; it is generated offline (source='synthetic')"
        )
    path = spec.hub_path or hub.path
    dataset = _load_hub_dataset(task, path, hub.name)
    return Pool(
        _hub_examples(task, hub, dataset[hub.train_split]), _hub_examples(task, hub, dataset[hub.test_split])
    )


def check_hub_dataset(task: Task, spec: DataSpec | None = None) -> None:
    """Raise DatasetUnavailableError (with how to use local files) when the task's hub data set is
    neither cached nor reachable; reads metadata only, so it is cheap to run before any trial."""
    import datasets

    hub = task.source
    if not isinstance(hub, HubSource):
        return
    path = (spec.hub_path if spec else None) or hub.path
    try:
        datasets.load_dataset_builder(path, hub.name)
    except Exception as err:
        raise DatasetUnavailableError(offline_help(task, path, hub.name, err)) from err


def _load_hub_dataset(task: Task, path: str, name: str | None) -> Any:
    import datasets  # heavy import, only when the hub is used

    try:
        return datasets.load_dataset(path, name)
    except Exception as err:  # network, offline cache miss, removed repo, script-based repo, ...
        raise DatasetUnavailableError(offline_help(task, path, name, err)) from err


def offline_help(task: Task, path: str, name: str | None, err: BaseException) -> str:
    """Why a hub data set failed to load, and the exact DataSpec that points the task at local files."""
    offline = [var for var in _OFFLINE_VARS if os.environ.get(var, "").upper() in {"1", "ON", "YES", "TRUE"}]
    cause = (
        f"offline mode is on ({', '.join(f'{var}=1' for var in offline)}) and the data set is not cached"
        if offline
        else "the Hugging Face Hub could not be reached (no network?) and the data set is not cached"
    )
    columns = {name_: name_ for name_ in task.record_fields}
    config = f" (config {name!r})" if name else ""
    lines = [
        f"Could not load hub dataset {path!r}{config} for {task.family} task {task.name}: "
        f"{type(err).__name__}: {err}",
        f"If {cause}, point the task at local files instead (CSV, TSV or JSONL):",
        f"  DataSpec(source='local', train_file='/path/train.jsonl', test_file='/path/test.jsonl', "
        f"columns={columns})",
        "  where `columns` maps each task field to your file's column name.",
    ]
    if isinstance(task, MLMTask) and task.lmbff is not None:
        lines.append(
            "  or LM-BFF's data: DataSpec(source='lmbff', data_dir='data/k-shot-1k-test', k=16, seed=13)"
            " or DataSpec(source='lmbff-original', data_dir='data/original', k=16, seed=13)"
        )
    lines.append(
        "  On the command line, set the same DataSpec fields (source, train_file, test_file, columns)."
    )
    return "\n".join(lines)


def _hub_examples(task: Task, hub: HubSource, rows: Any) -> list[Example]:
    columns = {name: hub.columns.get(name, name) for name in task.record_fields}
    examples = []
    for row in rows:
        record = {name: row[column] for name, column in columns.items()}
        if task.target_field == "label":
            if record["label"] == -1:  # unlabelled (SNLI without gold label, GLUE test sets)
                continue
            if hub.label_names is not None:
                record["label"] = hub.label_names[record["label"]]
        examples.append(task.example_from_record(record))
    return examples


def _read_table(path: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """Rows and column names of a CSV / TSV / JSONL / parquet file; CSV / TSV cells stay strings."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    try:
        if suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            present = set.intersection(*(set(row) for row in rows)) if rows else set()
        elif suffix == ".parquet":
            table = pd.read_parquet(path)
            rows, present = table.to_dict("records"), set(table.columns)
        else:
            table = pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
                dtype=str,
                keep_default_na=False,
            )
            rows, present = table.to_dict("records"), set(table.columns)
    except (ValueError, OSError, pd.errors.ParserError) as err:  # EmptyDataError is a ValueError
        raise ValueError(f"{path}: unreadable as {suffix[1:]}: {type(err).__name__}: {err}") from None
    if not rows:
        raise ValueError(f"{path}: the file has no data rows")
    return rows, present


def _read_local(task: Task, path: str, columns: Mapping[str, str]) -> list[Example]:
    if unknown := sorted(set(columns) - set(task.record_fields)):
        raise ValueError(
            f"DataSpec.columns has keys {unknown} that task {task.name} does not use; "
            f"allowed keys: {list(task.record_fields)}"
        )
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file {file} for task {task.name} does not exist")
    rows, present = _read_table(file)
    wanted = {name: columns.get(name, name) for name in task.record_fields}
    if missing := sorted({column for column in wanted.values() if column not in present}):
        raise ValueError(
            f"{file} lacks column(s) {missing} needed by task {task.name}; the task needs fields "
            f"{list(task.record_fields)} (mapped to columns {wanted}); the file has {sorted(present)}. "
            f"Map them with DataSpec(columns={{'field': 'your_column'}})"
        )
    return [
        _example(task, {name: row[column] for name, column in wanted.items()}, file, i)
        for i, row in enumerate(rows)
    ]


def _example(task: Task, record: Mapping[str, Any], file: Path, row: int) -> Example:
    try:
        return task.example_from_record(record)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{file}, data row {row}: {err}") from err


def _lmbff_files(task: Task) -> LmBffFiles:
    if not isinstance(task, MLMTask) or task.lmbff is None:
        raise ValueError(
            f"LM-BFF data covers the MLM paper tasks (SST-2, sst-5, trec, MNLI, SNLI, RTE); "
            f"{task.family} task {task.name} is not one of them"
        )
    return task.lmbff


def _read_lmbff(task: Task, files: LmBffFiles, path: Path) -> list[Example]:
    """Examples of one LM-BFF file: a GLUE TSV (header, columns by position) or a header-less CSV."""
    if not path.is_file():
        raise FileNotFoundError(f"LM-BFF file {path} for task {task.name} does not exist")
    if files.format == "tsv":
        with open(path, encoding="utf-8") as f:  # line-based like LM-BFF: quotes are literal text
            rows = [line.rstrip("\r\n").split("\t") for line in f.readlines()[1:]]
    else:
        rows = pd.read_csv(path, header=None, dtype=str, keep_default_na=False).values.tolist()
    needed = max(max(files.text_columns), files.label_column, -files.label_column - 1) + 1
    examples = []
    for i, row in enumerate(rows):
        if len(row) < needed:
            raise ValueError(f"{path}, data row {i}: {len(row)} columns, task {task.name} reads {needed}")
        record = dict(zip(task.input_fields, (row[c] for c in files.text_columns), strict=True))
        examples.append(_example(task, {**record, "label": row[files.label_column]}, path, i))
    return examples


def _read_lmbff_k_shot(task: Task, spec: DataSpec) -> Splits:
    files = _lmbff_files(task)
    k, seed = spec.k or DEFAULT_K, _seed(task, spec)
    folder = _data_dir(spec, "lmbff") / task.name / f"{k}-{seed}"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"LM-BFF k-shot folder {folder} does not exist (source='lmbff' reads "
            "{data_dir}/{task}/{k}-{seed}/, as LM-BFF's tools/generate_k_shot_data.py --mode "
            f"k-shot-1k-test writes it).{LMBFF_HOW_TO}"
        )
    return Splits(
        *(
            _read_lmbff(task, files, folder / f"{stem}.{files.format}")
            for stem in ("train", files.dev_name, files.test_name)
        )
    )
