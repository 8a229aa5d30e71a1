"""Every bad input is refused before Ray starts, with a message naming the value and what is allowed."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from mezo_ray.tune import main

SMOKE = ["--space", "smoke"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_models):
    """A malformed space, a CSV with the wrong columns, and a model whose tokenizer splits the label words."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    root = tmp_path_factory.mktemp("bad")
    (root / "malformed.yaml").write_text("description: x\ngrids: [{name: a, grid: {lr: [1e-6}]}\n")
    (root / "no_grids.yaml").write_text(json.dumps({"description": "x", "defaults": {}}))
    (root / "wrong_columns.csv").write_text("text,polarity\ngood film,1\nbad film,0\n")
    model = root / "split-words"
    shutil.copytree(tiny_models.mlm, model)
    for name in os.listdir(model):
        if "token" in name or name in ("vocab.json", "merges.txt"):
            os.remove(model / name)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["a b c d e f g h"] * 20, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    bpe.save_model(str(model))
    RobertaTokenizer(str(model / "vocab.json"), str(model / "merges.txt")).save_pretrained(model)
    encoder = root / "encoder-only"  # e.g. a sentence-transformers export: no masked-LM head
    shutil.copytree(tiny_models.mlm, encoder)
    config = json.loads((encoder / "config.json").read_text())
    (encoder / "config.json").write_text(json.dumps({**config, "architectures": ["RobertaModel"]}))
    task = {
        "name": "mine",
        "family": "mlm",
        "input_fields": ["text"],
        "labels": {"neg": "terrible", "pos": "great"},
        "template": "{text} It was {mask}.",
        "data": {"train_file": "labels.csv", "test_file": "labels.csv"},
    }
    (root / "labels.csv").write_text("text,label\ngood film,pos\nbad film,neg\nso so,meh\n")
    (root / "task.yaml").write_text(json.dumps(task))
    (root / "task_extra_key.yaml").write_text(json.dumps({**task, "colour": "red"}))
    demo = {"description": "x", "defaults": {"model": "tiny-mlm", "task": "synthetic-sst2", "k": 16}}
    demo["grids"] = [{"name": "a", "grid": {"lr": [1e-4, 1e-3]}}]
    (root / "pbt_batch.yaml").write_text(json.dumps({**demo, "pbt": {"batch_size": [8, 16]}}))
    (root / "pbt_one_value.yaml").write_text(json.dumps({**demo, "pbt": {"lr": [1e-4]}}))
    (root / "pbt_ok.yaml").write_text(json.dumps({**demo, "pbt": {"lr": [1e-4, 1e-3]}}))
    return root


CASES = [
    (["--space", "roberta_table99"], "neither a built-in space"),
    (["--space", "{root}/malformed.yaml"], "malformed YAML"),
    (["--space", "{root}/no_grids.yaml"], "grids"),
    ([*SMOKE, "--set", "task=SST-3"], "unknown task 'SST-3'"),
    ([*SMOKE, "--set", "mode=adapter"], "mode='adapter'"),
    ([*SMOKE, "--set", "method=sgd"], "method='sgd'"),
    ([*SMOKE, "--set", "zo_variant=lion"], "zo_variant='lion'"),
    ([*SMOKE, "--set", "lr=0"], "lr=0"),
    ([*SMOKE, "--set", "lr=-1e-3"], "lr=-0.001"),
    ([*SMOKE, "--set", "eps=0"], "eps=0"),
    ([*SMOKE, "--set", "eval_steps=100"], "eval_steps=100 is larger than max_steps=6"),
    ([*SMOKE, "--set", "learning_rate=1e-3"], "unknown keys ['learning_rate']"),
    ([*SMOKE, "--set", "lr"], "expected key=value"),
    ([*SMOKE, "--resume", "--storage-path", "s3://bucket/runs"], "s3://bucket/runs: pass --name"),
    ([*SMOKE, "--storage-path", "/proc/forbidden"], "--storage-path /proc/forbidden: cannot write there"),
    ([*SMOKE, "--only", "k=17"], "--only {'k': [17]}: no trial of space 'smoke' matches"),
    ([*SMOKE, "--only", "shots=16"], "--only: unknown keys ['shots']"),
    ([*SMOKE, "--set", "batch_size=0"], "batch_size=0"),
    ([*SMOKE, "--set", "dtype=float8"], "dtype='float8'"),
    ([*SMOKE, "--set", "selection=test_acc"], "selection='test_acc'"),
    ([*SMOKE, "--set", "micro_batch_size=64"], "micro_batch_size=64 > batch_size=16"),
    ([*SMOKE, "--set", "method=icl"], "causal-family baseline"),
    ([*SMOKE, "--set", "prompt=false", "--set", "method=lp"], "prompt=false (a sequence classification head"),
    ([*SMOKE, "--set", "fsdp=true"], "fsdp=true needs num_workers >= 1"),
    ([*SMOKE, "--num-samples", "0"], "--num-samples=0"),
    ([*SMOKE, "--max-concurrent", "0"], "--max-concurrent=0"),
    ([*SMOKE, "--max-failures", "-1"], "--max-failures=-1"),
    ([*SMOKE, "--set", "stochastic_rounding=true"], "stochastic_rounding=true rounds bfloat16 / float16"),
    ([*SMOKE, "--workers-per-trial", "-1"], "--workers-per-trial=-1"),
    ([*SMOKE, "--set", "k=5000"], "5000"),
    (
        [*SMOKE, "--set", "model=tiny-causal"],
        "model='tiny-causal' is OPTForCausalLM but the task is mlm-family",
    ),
    ([*SMOKE, "--set", "task=SST-2"], "Could not load hub dataset 'nyu-mll/glue' (config 'sst2')"),
    ([*SMOKE, "--set", "task=Copa", "--set", "k=null", "--set", "method=lp"], "'Copa' is multiple_choice"),
    ([*SMOKE, "--set", "model=/no/such/model"], "model='/no/such/model': no config.json"),
    ([*SMOKE, "--set", "model=roberta-large"], "'roberta-large' is not in the local Hugging Face cache"),
    ([*SMOKE, "--set", "model={root}/split-words"], "label words must be single tokens"),
    (
        [
            *SMOKE,
            "--set",
            "task=SST-2",
            "--set",
            "data_source=local",
            "--set",
            "train_file=/no/train.csv",
            "--set",
            "test_file=/no/test.csv",
        ],
        "/no/train.csv",
    ),
    (
        [
            *SMOKE,
            "--set",
            "task=SST-2",
            "--set",
            "data_source=local",
            "--set",
            "train_file={root}/wrong_columns.csv",
            "--set",
            "test_file={root}/wrong_columns.csv",
        ],
        "sentence",
    ),
    ([*SMOKE, "--set", "model={root}/encoder-only"], "an encoder saved without its masked-LM head"),
    ([*SMOKE, "--set", "task={root}/task_extra_key.yaml"], "unknown key 'colour'"),
    ([*SMOKE, "--set", "task={root}/task.yaml", "--set", "k=1"], "label 'meh' is not one of"),
    ([*SMOKE, "--gpus-per-trial", "1"], "asks for 1 GPU(s) but the cluster has 0"),
    ([*SMOKE, "--scheduler", "pbt"], "space 'smoke' declares no pbt mutations"),
    ([*SMOKE, "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing listens at 127.0.0.1:1"),
    ([*SMOKE, "--address", "http://127.0.0.1:8265"], "that is the job server's (dashboard's) address"),
    ([*SMOKE, "--address", "headnode"], "expected host:port"),
    (["--space", "{root}/pbt_batch.yaml", "--scheduler", "pbt"], "pbt.batch_size: PBT may mutate only"),
    (["--space", "{root}/pbt_one_value.yaml", "--scheduler", "pbt"], "a list needs at least two values"),
    (["--space", "{root}/pbt_ok.yaml", "--scheduler", "pbt", "--set", "num_workers=1"], "got num_workers=1"),
    (["--space", "{root}/pbt_ok.yaml", "--scheduler", "pbt", "--search", "optuna"], "use --search grid"),
    ([*SMOKE, "--workers-per-trial", "64"], "asks for 64 CPUs"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a[2:] or a) for a, _ in CASES])
def test_bad_input_is_refused_before_ray_with_a_clear_message(argv, message, bad_files, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started for a bad input"))
    # the machine these cases describe: 2 CPUs, no GPU (the test host may have GPUs or 64 cores)
    monkeypatch.setattr("mezo_ray.tune.local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    argv = [a.replace("{root}", str(bad_files)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_a_storage_path_some_node_cannot_see_is_refused_and_the_marker_removed(tmp_path, monkeypatch):
    """Two nodes, one of which does not mount the storage path: refused, naming the fix."""
    import ray

    from mezo_ray.tune import check_storage_visible

    nodes = [{"NodeID": "a" * 56, "Alive": True}, {"NodeID": "b" * 56, "Alive": True}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)

    class Task:  # node a sees the head's files, node b does not
        def options(self, scheduling_strategy):
            self.node = scheduling_strategy.node_id
            return self

        def remote(self, path):
            return os.path.exists(path) and self.node.startswith("a")

    monkeypatch.setattr(ray, "remote", lambda **_: lambda fn: Task())
    monkeypatch.setattr(ray, "get", lambda refs, timeout: refs)
    with pytest.raises(ValueError, match=r"not visible from 1 of the cluster's 2 nodes \(bbbbbbbb\).*NFS"):
        check_storage_visible(str(tmp_path))
    assert not list(tmp_path.iterdir())  # the marker file is gone
    check_storage_visible("s3://bucket/runs")  # a bucket: every node reaches it
