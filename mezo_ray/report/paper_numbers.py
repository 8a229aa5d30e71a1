"""Published numbers of the MeZO paper (arXiv 2305.17333 v3) that our tables print beside our own.

The tables are kept as the text of /work/shared/reference/mezo_protocol.md §3.1-§3.3 (copied cell for cell,
so a reviewer can diff them against the source) and parsed once at import time into plain dicts:

- ``PAPER_SCORES[(model_key, k)][row][task] -> Published`` (accuracy or F1, ×100) for Table 18 (RoBERTa-large,
  k=16/512), Table 1 (OPT-13B, k=None) and Table 20 (OPT-30B/66B, k=None). Keys are our config task names
  and our row labels (``mezo_ray.report.load.row_label``), so a lookup needs no translation.
- ``PAPER_MEMORY[model_key][column] -> PublishedMemory`` (Table 22: GPUs and peak GB on MultiRC).
- ``PAPER_SECONDS_PER_STEP`` (Table 23), transcribed for completeness; no layout prints it yet.

A cell the paper leaves out is absent from the dict (never 0); a cell the paper marks without a number
(OPT-66B MeZO SQuAD, "*: needs more tuning") is a ``Published`` with ``mean=None`` and a note.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Published(NamedTuple):
    """One published score ×100: mean (and std where the paper gives one); ``mark``: a footnote sign."""

    mean: float | None
    std: float | None = None
    mark: str = ""


class PublishedMemory(NamedTuple):
    """One cell of Table 22: number of 80GB A100s and peak GB (None where only the GPU count is given)."""

    gpus: int
    gb: float | None


# --- Table 18, RoBERTa-large (mezo_protocol.md §3.1, verbatim) ------------------------------------------
_TABLE18 = """
| | SST-2 | SST-5 | SNLI | MNLI | RTE | TREC |
| Zero-shot | 79.0 | 35.5 | 50.2 | 48.8 | 51.4 | 32.0 |
| k=16 LP | 76.0 (2.8) | 40.3 (1.9) | 66.0 (2.7) | 56.5 (2.5) | 59.4 (5.3) | 51.3 (5.5) |
| k=16 MeZO | 90.5 (1.2) | 45.5 (2.0) | 68.5 (3.9) | 58.7 (2.5) | 64.0 (3.3) | 76.9 (2.7) |
| k=16 MeZO (LoRA) | 91.4 (0.9) | 43.0 (1.6) | 69.7 (6.0) | 64.0 (2.5) | 64.9 (3.6) | 73.1 (6.5) |
| k=16 MeZO (prefix) | 90.8 (1.7) | 45.8 (2.0) | 71.6 (2.5) | 63.4 (1.8) | 65.4 (3.9) | 80.3 (3.6) |
| k=16 MeZO-Adam | 90.4 (1.4) | 45.4 (1.5) | 74.1 (2.7) | 64.3 (0.8)† | 59.2 (11.1)† | 78.3 (1.4) |
| k=16 FT | 91.9 (1.8) | 47.5 (1.9) | 77.5 (2.6) | 70.0 (2.3) | 66.4 (7.2) | 85.0 (2.5) |
| k=16 FT (LoRA) | 91.4 (1.7) | 46.7 (1.1) | 74.9 (4.3) | 67.7 (1.4) | 66.1 (3.5) | 82.7 (4.1) |
| k=16 FT (prefix) | 91.9 (1.0) | 47.7 (1.1) | 77.2 (1.3) | 66.5 (2.5) | 66.6 (2.0) | 85.7 (1.3) |
| k=512 LP | 91.3 (0.5) | 51.7 (0.5) | 80.9 (1.0) | 71.5 (1.1) | 73.1 (1.5) | 89.4 (0.5) |
| k=512 MeZO | 93.3 (0.7) | 53.2 (1.4) | 83.0 (1.0) | 78.3 (0.5) | 78.6 (2.0) | 94.3 (1.3) |
| k=512 MeZO (LoRA) | 93.4 (0.4) | 52.4 (0.8) | 84.0 (0.8) | 77.9 (0.6) | 77.6 (1.3) | 95.0 (0.7) |
| k=512 MeZO (prefix) | 93.3 (0.1) | 53.6 (0.5) | 84.8 (1.1) | 79.8 (1.2) | 77.2 (0.8) | 94.4 (0.7) |
| k=512 MeZO-Adam | 93.3 (0.6) | 53.9 (0.8) | 85.3 (0.8) | 79.6 (0.4) | 79.2 (1.2) | 95.1 (0.3) |
| k=512 FT | 93.9 (0.7) | 55.9 (0.9) | 88.7 (0.8) | 84.4 (0.8) | 82.7 (1.4) | 97.3 (0.2) |
| k=512 FT (LoRA) | 94.2 (0.2) | 55.3 (0.7) | 88.3 (0.5) | 83.9 (0.6) | 83.2 (1.3) | 97.0 (0.3) |
| k=512 FT (prefix) | 93.7 (0.3) | 54.6 (0.7) | 88.3 (0.7) | 83.3 (0.5) | 82.5 (0.8) | 97.4 (0.2) |
"""
#: Paper column header -> our config task name (CONTRACTS.md), for the RoBERTa (MLM) family.
TABLE18_TASKS = {
    "SST-2": "SST-2",
    "SST-5": "sst-5",
    "SNLI": "SNLI",
    "MNLI": "MNLI",
    "RTE": "RTE",
    "TREC": "trec",
}
TABLE18_ROWS = (
    "Zero-shot",
    "LP",
    "MeZO",
    "MeZO (LoRA)",
    "MeZO (prefix)",
    "MeZO-Adam",
    "FT",
    "FT (LoRA)",
    "FT (prefix)",
)

# --- Table 1, OPT-13B (§3.2, verbatim) -------------------------------------------------------------------
_TABLE1 = """
| | SST-2 | RTE | CB | BoolQ | WSC | WIC | MultiRC | COPA | ReCoRD | SQuAD | DROP |
| Zero-shot | 58.8 | 59.6 | 46.4 | 59.0 | 38.5 | 55.0 | 46.9 | 80.0 | 81.2 | 46.2 | 14.6 |
| ICL (32 demos) | 87.0 | 62.1 | 57.1 | 66.9 | 39.4 | 50.5 | 53.1 | 87.0 | 82.5 | 75.9 | 29.6 |
| LP | 93.4 | 68.6 | 67.9 | 59.3 | 63.5 | 60.2 | 63.5 | 55.0 | 27.1 | 3.7 | 11.1 |
| MeZO | 91.4 | 66.1 | 67.9 | 67.6 | 63.5 | 61.1 | 60.1 | 88.0 | 81.7 | 84.7 | 30.9 |
| MeZO (LoRA) | 89.6 | 67.9 | 66.1 | 73.8 | 64.4 | 59.7 | 61.5 | 84.0 | 81.2 | 83.8 | 31.4 |
| MeZO (prefix) | 90.7 | 70.8 | 69.6 | 73.1 | 60.6 | 59.9 | 63.7 | 87.0 | 81.4 | 84.2 | 28.9 |
| FT (12× memory) | 92.0 | 70.8 | 83.9 | 77.1 | 63.5 | 70.1 | 71.1 | 79.0 | 74.1 | 84.9 | 31.3 |
"""
#: Paper column header -> our config task name, for the OPT (causal) family.
TABLE1_TASKS = {
    "SST-2": "SST2",
    "RTE": "RTE",
    "CB": "CB",
    "BoolQ": "BoolQ",
    "WSC": "WSC",
    "WIC": "WIC",
    "MultiRC": "MultiRC",
    "COPA": "Copa",
    "ReCoRD": "ReCoRD",
    "SQuAD": "SQuAD",
    "DROP": "DROP",
}
TABLE1_ROWS = ("Zero-shot", "ICL", "LP", "MeZO", "MeZO (LoRA)", "MeZO (prefix)", "FT")
_TABLE1_ROW_ALIASES = {"ICL (32 demos)": "ICL", "FT (12× memory)": "FT"}

# --- Table 20, OPT-30B / OPT-66B (§3.2 prose, laid out as a table; "*" = "needs more tuning") -----------
_TABLE20 = """
| | SST-2 | RTE | BoolQ | WSC | WIC | SQuAD |
| opt-30b Zero-shot | 56.7 | 52.0 | 39.1 | 38.5 | 50.2 | 46.5 |
| opt-30b ICL | 81.9 | 66.8 | 66.2 | 56.7 | 51.3 | 78.0 |
| opt-30b MeZO | 90.6 | 66.4 | 67.2 | 63.5 | 56.3 | 85.2 |
| opt-30b MeZO (prefix) | 87.5 | 72.6 | 73.5 | 55.8 | 59.1 | 83.9 |
| opt-66b Zero-shot | 57.5 | 67.2 | 66.8 | 43.3 | 50.6 | 48.1 |
| opt-66b ICL | 89.3 | 65.3 | 62.8 | 52.9 | 54.9 | 81.3 |
| opt-66b MeZO | 91.2 | 65.7 | 72.7 | 63.5 | 58.9 | * |
| opt-66b MeZO (prefix) | 93.6 | 66.4 | 73.7 | 57.7 | 58.6 | 85.0 |
"""

# --- Table 22, memory on MultiRC (§3.3, verbatim; "1×A100 (4GB)" and "1× (4GB)" mean the same) ----------
_TABLE22 = """
| OPT | Zero-shot / MeZO | ICL | Prefix FT | Full FT |
| 1.3B | 1×A100 (4GB) | 1× (6GB) | 1× (19GB) | 1× (27GB) |
| 2.7B | 1× (7GB) | 1× (8GB) | 1× (29GB) | 1× (55GB) |
| 6.7B | 1× (14GB) | 1× (16GB) | 1× (46GB) | 2× (156GB) |
| 13B | 1× (26GB) | 1× (29GB) | 2× (158GB) | 4× (316GB) |
| 30B | 1× (58GB) | 1× (62GB) | 4× (315GB) | 8× (633GB) |
| 66B | 2× (128GB) | 2× (134GB) | 8× | 16× |
"""
#: Our row label -> Table 22 column it is compared with (the paper measured MultiRC, per-device batch 1).
MEMORY_COLUMN_OF_ROW = {
    "Zero-shot": "Zero-shot / MeZO",
    "MeZO": "Zero-shot / MeZO",
    "ICL": "ICL",
    "FT (prefix)": "Prefix FT",
    "FT": "Full FT",
}
MEMORY_TASK = "MultiRC"

#: Table 23, seconds per step (number of GPUs): MeZO at batch 16, FT at batch 8. Not rendered yet.
PAPER_SECONDS_PER_STEP = {
    "MeZO": {
        "opt-1.3b": (0.815, 1),
        "opt-2.7b": (1.400, 1),
        "opt-13b": (2.702, 1),
        "opt-30b": (5.896, 1),
        "opt-66b": (12.438, 4),
    },
    "FT": {
        "opt-1.3b": (0.784, 1),
        "opt-2.7b": (1.326, 1),
        "opt-13b": (13.638, 4),
        "opt-30b": (45.608, 8),
        "opt-66b": (84.098, 20),
    },
}

_SCORE = re.compile(r"^(?P<mean>[0-9.]+|\*)(?: \((?P<std>[0-9.]+)\))?(?P<mark>†?)$")
_MEMORY = re.compile(r"^(?P<gpus>\d+)×(?:A100)?(?: \((?P<gb>[0-9.]+)GB\))?$")


def _cells(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split a markdown table into its header cells and (row label, cells) pairs."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.strip().splitlines()]
    header, body = lines[0][1:], lines[1:]
    return header, [(row[0], row[1:]) for row in body]


def _score(text: str) -> Published:
    match = _SCORE.match(text)
    if match is None:
        raise ValueError(f"unparseable published score {text!r}")
    if match["mean"] == "*":
        return Published(None, None, "*")
    std = match["std"]
    return Published(float(match["mean"]), float(std) if std else None, match["mark"])


def _parse_scores() -> dict[tuple[str, int | None], dict[str, dict[str, Published]]]:
    scores: dict[tuple[str, int | None], dict[str, dict[str, Published]]] = {}
    header, body = _cells(_TABLE18)
    tasks = [TABLE18_TASKS[h] for h in header]
    for label, cells in body:
        row_cells = {task: _score(c) for task, c in zip(tasks, cells, strict=True)}
        if label == "Zero-shot":  # one zero-shot row in the paper, shared by both k sections
            for k in (16, 512):
                scores.setdefault(("roberta-large", k), {})[label] = row_cells
        else:
            k_text, row = label.split(" ", 1)
            section = scores.setdefault(("roberta-large", int(k_text.removeprefix("k="))), {})
            section[row] = row_cells
            if row.endswith("(LoRA)"):  # the paper's LoRA rows came from its code's LoRA (models/modes.py)
                section[row.replace("(LoRA)", "(LoRA, as published)")] = row_cells
    header, body = _cells(_TABLE1)
    tasks = [TABLE1_TASKS[h] for h in header]
    for label, cells in body:
        row = _TABLE1_ROW_ALIASES.get(label, label)
        scores.setdefault(("opt-13b", None), {})[row] = {
            t: _score(c) for t, c in zip(tasks, cells, strict=True)
        }
    header, body = _cells(_TABLE20)
    tasks = [TABLE1_TASKS[h] for h in header]
    for label, cells in body:
        model, row = label.split(" ", 1)
        scores.setdefault((model, None), {})[row] = {t: _score(c) for t, c in zip(tasks, cells, strict=True)}
    return scores


def _parse_memory() -> dict[str, dict[str, PublishedMemory]]:
    header, body = _cells(_TABLE22)
    memory: dict[str, dict[str, PublishedMemory]] = {}
    for size, cells in body:
        row = {}
        for column, text in zip(header, cells, strict=True):
            match = _MEMORY.match(text)
            if match is None:
                raise ValueError(f"unparseable published memory {text!r}")
            row[column] = PublishedMemory(int(match["gpus"]), float(match["gb"]) if match["gb"] else None)
        memory[f"opt-{size.lower()}"] = row
    return memory


#: (model key, k) -> row label -> config task name -> Published.
PAPER_SCORES: dict[tuple[str, int | None], dict[str, dict[str, Published]]] = _parse_scores()
#: model key (e.g. "opt-13b") -> Table 22 column -> PublishedMemory.
PAPER_MEMORY: dict[str, dict[str, PublishedMemory]] = _parse_memory()
