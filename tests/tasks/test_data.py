"""Data loading and the paper's sampling, on small generated files shaped like each data set."""

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mezo_ray.tasks import (
    DataSpec,
    expected_train_size,
    get_task,
    load_pool,
    load_splits,
    sample_icl_demonstrations,
)
from mezo_ray.tasks import data as data_module

REPO = Path(__file__).resolve().parents[2]

# -- writers for LM-BFF's original pack ---------------------------------------------------------------------

GLUE_HEADERS = {
    "SST-2": ["sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
    "MNLI": [
        "index",
        "promptID",
        "pairID",
        "genre",
        "s1_binary_parse",
        "s2_binary_parse",
        "s1_parse",
        "s2_parse",
        "sentence1",
        "sentence2",
        "label1",
        "gold_label",
    ],
    "SNLI": [
        "index",
        "captionID",
        "pairID",
        "s1_binary_parse",
        "s2_binary_parse",
        "s1_parse",
        "s2_parse",
        "sentence1",
        "sentence2",
        "label1",
        "gold_label",
    ],
}
LABELS = {
    "SST-2": ["0", "1"],
    "sst-5": ["0", "1", "2", "3", "4"],
    "trec": ["0", "1", "2", "3", "4", "5"],
    "MNLI": ["contradiction", "entailment", "neutral"],
    "SNLI": ["contradiction", "entailment", "neutral"],
    "RTE": ["entailment", "not_entailment"],
}


def glue_line(name: str, i: int, label: str, split: str) -> str:
    """One GLUE TSV line whose text columns say which row it is (e.g. "train 7 a")."""
    cells = [f"{split} {i} {col}" if col.startswith("s") else str(i) for col in GLUE_HEADERS[name][:-1]]
    return "\t".join([*cells, label]) + "\n"


def write_lmbff_original(root, name: str, num_train: int, num_test: int, labels=None) -> None:
    """LM-BFF's original layout: GLUE TSVs with a header, or header-less (label, text) CSVs."""
    folder = root / name
    folder.mkdir(parents=True)
    labels = labels or LABELS[name]
    for split, n in (("train", num_train), ("test", num_test)):
        split_labels = [labels[(i * 7 + i // 3) % len(labels)] for i in range(n)]  # unbalanced, not sorted
        if name in GLUE_HEADERS:
            stem = "train" if split == "train" else ("dev_matched" if name == "MNLI" else "dev")
            header = "\t".join(GLUE_HEADERS[name]) + "\n"
            lines = [glue_line(name, i, y, split) for i, y in enumerate(split_labels)]
            (folder / f"{stem}.tsv").write_text(header + "".join(lines))
        else:
            rows = [(y, f"{split} {i} text") for i, y in enumerate(split_labels)]
            pd.DataFrame(rows).to_csv(folder / f"{split}.csv", header=False, index=False)


def text_of(ex) -> str:
    return next(iter(ex.fields.values()))


# -- MLM family: LM-BFF k-shot sampling ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LABELS))
def test_k_shot_sizes_and_determinism_per_task(tmp_path, name):
    write_lmbff_original(tmp_path, name, num_train=20 * len(LABELS[name]), num_test=30)
    task = get_task(name, family="mlm")

    def load(seed):
        return load_splits(task, DataSpec(source="lmbff-original", data_dir=str(tmp_path), k=4, seed=seed))

    splits = load(13)
    num_classes = len(LABELS[name])
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (4 * num_classes, 4 * num_classes, 30)
    for part in (splits.train, splits.dev):
        assert sorted(ex.label for ex in part) == sorted(list(range(num_classes)) * 4)
    assert not {text_of(ex) for ex in splits.train} & {text_of(ex) for ex in splits.dev}
    assert [text_of(ex) for ex in splits.test] == [
        text_of(ex) for ex in load_pool(task, _original(tmp_path)).test
    ]
    assert load(13) == splits
    assert load(21).train != splits.train
    assert load(21).test == splits.test  # the test set does not depend on the data seed


def _original(root) -> DataSpec:
    return DataSpec(source="lmbff-original", data_dir=str(root))


def lmbff_reference(lines: list[str], k: int, seed: int) -> tuple[list[str], list[str]]:
    """tools/generate_k_shot_data.py, GLUE branch, transcribed: the oracle for our sampler."""
    np.random.seed(seed)
    train_lines = lines[1:]
    np.random.shuffle(train_lines)
    label_list: dict[str, list[str]] = {}
    for line in train_lines:
        label_list.setdefault(line.strip().split("\t")[-1], []).append(line)
    train = [line for label in label_list for line in label_list[label][:k]]
    dev = [line for label in label_list for line in label_list[label][k : 2 * k]]
    return train, dev


@pytest.mark.parametrize("seed", [13, 21, 42, 87, 100])
def test_k_shot_matches_lm_bff_script_exactly(tmp_path, seed):
    write_lmbff_original(tmp_path, "RTE", num_train=80, num_test=10)
    lines = (tmp_path / "RTE" / "train.tsv").read_text().splitlines(keepends=True)
    ref_train, ref_dev = lmbff_reference(lines, k=8, seed=seed)
    splits = load_splits(
        get_task("RTE", family="mlm"),
        DataSpec(source="lmbff-original", data_dir=str(tmp_path), k=8, seed=seed),
    )
    assert [ex.fields["premise"] for ex in splits.train] == [line.split("\t")[1] for line in ref_train]
    assert [ex.fields["premise"] for ex in splits.dev] == [line.split("\t")[1] for line in ref_dev]


def test_glue_test_set_is_capped_at_1000_with_seed_42(tmp_path):
    write_lmbff_original(tmp_path, "MNLI", num_train=30, num_test=1100)
    test_lines = (tmp_path / "MNLI" / "dev_matched.tsv").read_text().splitlines(keepends=True)[1:]
    np.random.seed(42)
    np.random.shuffle(test_lines)
    splits = load_splits(get_task("MNLI"), DataSpec(source="lmbff-original", data_dir=str(tmp_path), k=2))
    assert [ex.fields["premise"] for ex in splits.test] == [line.split("\t")[8] for line in test_lines[:1000]]


def test_csv_test_set_is_capped_like_pandas_sample(tmp_path):
    write_lmbff_original(tmp_path, "sst-5", num_train=50, num_test=1200)
    frame = pd.read_csv(tmp_path / "sst-5" / "test.csv", header=None)
    expected = frame.sample(n=1000, random_state=42)[1].tolist()
    splits = load_splits(get_task("sst-5"), DataSpec(source="lmbff-original", data_dir=str(tmp_path), k=2))
    assert [ex.fields["sentence"] for ex in splits.test] == expected


def test_too_large_k_takes_what_exists_and_warns(tmp_path):
    # trec's class 2 ("Expression", ABBR) is small: 3 examples here, as 86 < 2 * 512 in the paper.
    write_lmbff_original(tmp_path, "trec", num_train=60, num_test=5, labels=["0", "1", "3", "4", "5"])
    with open(tmp_path / "trec" / "train.csv", "a") as f:
        f.write("2,abbr one\n2,abbr two\n2,abbr three\n")
    spec = DataSpec(source="lmbff-original", data_dir=str(tmp_path), k=4, seed=13)
    with pytest.warns(UserWarning, match=r"task trec, k=4: classes \['Expression'\].*'Expression': 3"):
        splits = load_splits(get_task("trec"), spec)
    assert sum(ex.label == 2 for ex in splits.train) == 3
    assert sum(ex.label == 2 for ex in splits.dev) == 0
    assert len(splits.train) == 5 * 4 + 3
    strict = DataSpec(source="lmbff-original", data_dir=str(tmp_path), k=4, seed=13, strict_k=True)
    with pytest.raises(
        ValueError, match=r"task trec, k=4.*class counts \{'Description': 12, .*'Expression': 3"
    ):
        load_splits(get_task("trec"), strict)


def test_lmbff_k_shot_folders_are_read_as_is(tmp_path):
    sst2 = tmp_path / "SST-2" / "16-13"
    sst2.mkdir(parents=True)
    for stem, n in (("train", 4), ("dev", 2), ("test", 3)):
        (sst2 / f"{stem}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{stem} {i} .\t{i % 2}\n" for i in range(n))
        )
    mnli = tmp_path / "MNLI" / "16-13"
    mnli.mkdir(parents=True)
    for stem in ("train", "dev_matched", "test_matched"):
        header = "\t".join(GLUE_HEADERS["MNLI"]) + "\n"
        (mnli / f"{stem}.tsv").write_text(header + glue_line("MNLI", 0, "neutral", stem))
    trec = tmp_path / "trec" / "16-13"
    trec.mkdir(parents=True)
    for stem in ("train", "dev", "test"):
        pd.DataFrame([(2, f'{stem} "quoted", text')]).to_csv(trec / f"{stem}.csv", header=False, index=False)

    spec = DataSpec(source="lmbff", data_dir=str(tmp_path), k=16, seed=13)
    sst2_splits = load_splits(get_task("SST-2"), spec)
    assert [len(s) for s in sst2_splits] == [4, 2, 3]
    assert (sst2_splits.test[2].fields, sst2_splits.test[2].label) == ({"sentence": "test 2 ."}, 0)
    mnli_test = load_splits(get_task("MNLI"), spec).test[0]
    assert (mnli_test.fields["hypothesis"], mnli_test.label) == ("test_matched 0 sentence2", 2)
    trec_dev = load_splits(get_task("trec"), spec).dev[0]
    assert (trec_dev.fields["sentence"], trec_dev.label) == ('dev "quoted", text', 2)
    for source in ("lmbff", "lmbff-original"):  # what to download, where to put it, and the hub way out
        with pytest.raises(FileNotFoundError) as missing:
            load_splits(get_task("RTE", family="mlm"), DataSpec(source=source, data_dir=str(tmp_path)))
        assert f"{tmp_path / 'RTE'}" in str(missing.value)
        needed = ("lm-bff/datasets.tar", "data_source=lmbff-original", "k-shot-1k-test", "data_source=hub")
        assert all(text in str(missing.value) for text in needed), missing.value


# -- causal family: 1000 / 500 / 1000 ----------------------------------------------------------------------

CAUSAL_ROWS = {
    "CB": lambda i: {"premise": f"p{i}", "hypothesis": "h", "label": i % 3},
    "WSC": lambda i: {"text": f"t{i}", "span1_text": "a", "span2_text": "b", "label": i % 2},
    "Copa": lambda i: {
        "premise": f"p{i}",
        "choice1": "x",
        "choice2": "y",
        "question": "cause",
        "label": i % 2,
    },
    "SST2": lambda i: {"sentence": f"s{i}", "label": i % 2},
}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def causal_spec(tmp_path, name: str, num_train: int, num_test: int, **kwargs) -> DataSpec:
    make = CAUSAL_ROWS[name]
    train = write_jsonl(tmp_path / "train.jsonl", [make(i) for i in range(num_train)])
    test = write_jsonl(tmp_path / "test.jsonl", [make(10_000 + i) for i in range(num_test)])
    return DataSpec(source="local", train_file=train, test_file=test, **kwargs)


@pytest.mark.parametrize(
    ("name", "num_train", "num_test", "sizes"),
    [
        ("CB", 250, 56, (150, 100, 56)),
        ("Copa", 400, 100, (300, 100, 100)),
        ("SST2", 3000, 1200, (1000, 500, 1000)),
    ],
)
def test_opt_split_arithmetic(tmp_path, name, num_train, num_test, sizes):
    splits = load_splits(get_task(name), causal_spec(tmp_path, name, num_train, num_test))
    assert tuple(len(s) for s in splits) == sizes


def test_opt_dev_is_the_last_num_dev_of_one_permutation(tmp_path):
    splits = load_splits(get_task("CB"), causal_spec(tmp_path, "CB", 250, 56))
    np.random.seed(0)  # MeZO: temp_seed(train_set_seed) + np.random.permutation, for train and for valid
    chosen = np.random.permutation(250)[:1100]
    np.random.seed(0)
    test = np.random.permutation(56)[:1000]
    assert [ex.fields["premise"] for ex in splits.train] == [f"p{i}" for i in chosen[:150]]
    assert [ex.fields["premise"] for ex in splits.dev] == [f"p{i}" for i in chosen[150:]]
    assert [ex.fields["premise"] for ex in splits.test] == [f"p{10_000 + i}" for i in test]


def test_wsc_quirk_is_reproduced_and_can_be_fixed(tmp_path):
    with pytest.warns(UserWarning, match=r"dev = the last 500 and train = the 54 before them.*fix_wsc=True"):
        splits = load_splits(get_task("WSC"), causal_spec(tmp_path, "WSC", 554, 104))
    assert tuple(len(s) for s in splits) == (54, 500, 104)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = load_splits(get_task("WSC"), causal_spec(tmp_path, "WSC", 554, 104, fix_wsc=True))
    assert tuple(len(s) for s in fixed) == (277, 277, 104)


@pytest.mark.parametrize(("name", "fix_wsc"), [("CB", False), ("Copa", False), ("WSC", False), ("WSC", True)])
def test_the_train_size_known_without_data_is_what_sampling_gives(tmp_path, name, fix_wsc):
    """A dry run derives epoch lengths from the published split sizes; sampling a split of that size
    must give as many train examples."""
    task = get_task(name)
    rows = task.source.train_rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the WSC quirk's warning
        splits = load_splits(task, causal_spec(tmp_path, name, rows, 10, fix_wsc=fix_wsc))
    assert expected_train_size(task, DataSpec(fix_wsc=fix_wsc)) == len(splits.train)
    assert expected_train_size(task, causal_spec(tmp_path, name, rows, 10)) is None  # local: unknown
    assert expected_train_size(get_task("SST-2"), DataSpec(k=16)) is None  # k-shot: per-class counts


def test_causal_splits_depend_only_on_the_seed(tmp_path):
    spec = causal_spec(tmp_path, "SST2", 2000, 50)
    task = get_task("SST2")
    assert load_splits(task, spec) == load_splits(task, spec)
    other = load_splits(task, DataSpec(**{**spec.__dict__, "seed": 1}))
    assert other.train != load_splits(task, spec).train


def test_icl_demonstrations_follow_mezo_seeds():
    pool = [get_task("SST2").example_from_record({"sentence": f"s{i}", "label": i % 2}) for i in range(100)]
    sets = sample_icl_demonstrations(pool, num_test=3, num_demos=4)
    np.random.seed(0)
    seeds = np.random.randint(0, 10000, 3)
    expected = []
    for s in seeds:
        np.random.seed(s)
        expected.append([f"s{i}" for i in np.random.permutation(100)[:4]])
    assert [[ex.fields["sentence"] for ex in demos] for demos in sets] == expected


def test_k_is_rejected_for_causal_tasks():
    with pytest.raises(ValueError, match="k=16 applies to the MLM family"):
        load_splits(get_task("CB"), DataSpec(k=16))


# -- local files --------------------------------------------------------------------------------------------


def test_local_csv_with_column_mapping(tmp_path):
    rows = [{"text": f"review {i} , with comma", "polarity": i % 2, "extra": "x"} for i in range(40)]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[:7]).to_csv(tmp_path / "test.csv", index=False)
    spec = DataSpec(
        source="local",
        train_file=str(tmp_path / "train.csv"),
        test_file=str(tmp_path / "test.csv"),
        columns={"sentence": "text", "label": "polarity"},
        k=5,
    )
    splits = load_splits(get_task("SST-2"), spec)
    assert [len(s) for s in splits] == [10, 10, 7]
    assert splits.test[3].fields == {"sentence": "review 3 , with comma"} and splits.test[3].label == 1


def test_local_tsv_keeps_quotes_literal(tmp_path):
    body = 'premise\thypothesis\tlabel\nHe said "hi.\tA "quote".\tneutral\n'
    (tmp_path / "data.tsv").write_text(body)
    spec = DataSpec(
        source="local", train_file=str(tmp_path / "data.tsv"), test_file=str(tmp_path / "data.tsv")
    )
    pool = load_pool(get_task("SNLI"), spec)
    assert pool.test[0].fields == {"premise": 'He said "hi.', "hypothesis": 'A "quote".'}
    assert pool.test[0].label == 2


def test_missing_columns_are_named_with_the_file(tmp_path):
    pd.DataFrame([{"text": "a", "stars": 1}]).to_csv(tmp_path / "train.csv", index=False)
    spec = DataSpec(
        source="local",
        train_file=str(tmp_path / "train.csv"),
        test_file=str(tmp_path / "train.csv"),
        columns={"sentence": "text"},
    )
    with pytest.raises(ValueError, match=r"train\.csv lacks column\(s\) \['label'\] needed by task SST-2"):
        load_splits(get_task("SST-2"), spec)


def test_missing_file_is_named(tmp_path):
    spec = DataSpec(
        source="local", train_file=str(tmp_path / "nope.jsonl"), test_file=str(tmp_path / "nope.jsonl")
    )
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl for task CB does not exist"):
        load_splits(get_task("CB"), spec)


def test_bad_label_names_file_and_row(tmp_path):
    rows = [{"sentence": "fine", "label": "1"}, {"sentence": "odd", "label": "positive"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"train\.jsonl, data row 1: .*label 'positive'.*\['0', '1'\]"):
        load_pool(get_task("SST-2"), DataSpec(source="local", train_file=path, test_file=path))


def test_unknown_column_key_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 0}])
    spec = DataSpec(source="local", train_file=path, test_file=path, columns={"text": "sentence"})
    with pytest.raises(ValueError, match=r"keys \['text'\].*allowed keys: \['sentence', 'label'\]"):
        load_pool(get_task("SST-2"), spec)


# -- hub ----------------------------------------------------------------------------------------------------


def fake_hub(monkeypatch, splits: dict) -> list:
    calls = []

    def load(task, path, name):
        calls.append((path, name))
        return splits

    monkeypatch.setattr(data_module, "_load_hub_dataset", load)
    return calls


def test_hub_class_ids_are_mapped_to_lm_bff_labels(monkeypatch):
    rows = [
        {"text": f"q{i}", "coarse_label": i % 6, "fine_label": 0} for i in range(6)
    ]  # ABBR, ENTY, DESC, ...
    calls = fake_hub(monkeypatch, {"train": rows, "test": rows})
    pool = load_pool(get_task("trec"))
    assert calls == [("CogComp/trec", None)]
    assert [get_task("trec").label_words[ex.label] for ex in pool.train] == [
        "Expression",
        "Entity",
        "Description",
        "Human",
        "Location",
        "Number",
    ]


def test_hub_unlabelled_rows_are_dropped_and_nli_ids_mapped(monkeypatch):
    rows = [{"premise": f"p{i}", "hypothesis": "h", "label": y} for i, y in enumerate([0, 1, 2, -1])]
    fake_hub(monkeypatch, {"train": rows, "validation": rows})
    pool = load_pool(get_task("SNLI"))
    assert [ex.label for ex in pool.train] == [1, 2, 0]  # entailment, neutral, contradiction in LM-BFF order


def test_hub_nested_answers_and_path_override(monkeypatch):
    rows = [{"passage": "P", "question": "Q", "answers_spans": {"spans": ["4", "four"], "types": ["n", "n"]}}]
    calls = fake_hub(monkeypatch, {"train": rows, "validation": rows})
    pool = load_pool(get_task("DROP"), DataSpec(hub_path="mirror/drop"))
    assert calls == [("mirror/drop", None)]
    assert pool.test[0].answers == ("4", "four")


def test_offline_hub_error_says_how_to_use_local_files(tmp_path):
    script = textwrap.dedent(
        """
        from mezo_ray.tasks import DataSpec, DatasetUnavailableError, get_task, load_splits
        try:
            load_splits(get_task("SST-2"), DataSpec(k=16))
        except DatasetUnavailableError as err:
            print(err)
        """
    )
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    message = out.stdout
    assert out.returncode == 0 and message, out.stderr
    assert "Could not load hub dataset 'nyu-mll/glue' (config 'sst2') for mlm task SST-2" in message
    assert "offline mode is on (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1)" in message
    assert (
        "DataSpec(source='local', train_file='/path/train.jsonl', test_file='/path/test.jsonl', "
        "columns={'sentence': 'sentence', 'label': 'label'})"
    ) in message
    assert "DataSpec(source='lmbff', data_dir='data/k-shot-1k-test', k=16, seed=13)" in message
