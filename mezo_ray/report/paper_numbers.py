"""Published numbers of the MeZO paper (arXiv 2305.17333 v3) that our tables print beside our own.

Score tables live with their layouts (``mezo_ray.report.layouts``, one entry per table); this module holds
what they share and the tables no score layout prints, as the text of /work/shared/reference/mezo_protocol.md
§3.3 (copied cell for cell, so a reviewer can diff them against the source), parsed once at import time:

- ``Published`` and ``parse_score``: one published score (accuracy or F1, ×100, std and footnote sign).
- ``PAPER_MEMORY[model_key][column] -> PublishedMemory`` (Table 22: GPUs and peak GB on MultiRC).
- ``PAPER_SECONDS_PER_STEP`` (Table 23), transcribed for completeness; no layout prints it yet.

A cell the paper leaves out is absent (never 0); a cell the paper marks without a number (OPT-66B MeZO
SQuAD, "*: needs more tuning") is a ``Published`` with ``mean=None`` and a note.
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


def markdown_cells(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split a markdown table into its header cells and (row label, cells) pairs."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.strip().splitlines()]
    header, body = lines[0][1:], lines[1:]
    return header, [(row[0], row[1:]) for row in body]


def parse_score(text: str) -> Published:
    """A published cell: "90.5 (1.2)", "64.3 (0.8)†", "79.0" or "*" (no number: needs more tuning)."""
    match = _SCORE.match(text)
    if match is None:
        raise ValueError(f"unparseable published score {text!r}")
    if match["mean"] == "*":
        return Published(None, None, "*")
    std = match["std"]
    return Published(float(match["mean"]), float(std) if std else None, match["mark"])


def _parse_memory() -> dict[str, dict[str, PublishedMemory]]:
    header, body = markdown_cells(_TABLE22)
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


#: model key (e.g. "opt-13b") -> Table 22 column -> PublishedMemory.
PAPER_MEMORY: dict[str, dict[str, PublishedMemory]] = _parse_memory()
