"""The paper's score tables as data: one ``Layout`` entry per table, its published cells verbatim.

A new table is one entry in ``LAYOUTS``: the models and k it covers, its columns (paper header -> our config
task name), its rows (our row labels, ``mezo_ray.report.load.row_label``), and the paper's cells as the
markdown text of mezo_protocol.md §3 (copied cell for cell, so a reviewer can diff them against the source).
A row label of that text may start with a model key ("opt-30b MeZO") or a k ("k=16 MeZO") when the table
holds several; ``paper_rows`` maps our label to the paper's where they differ ("ICL" -> "ICL (32 demos)"),
or to None where the paper has no number for a row that shares its label (Table 18's real LoRA).

A *main* layout (Tables 18, 1, 20) holds a (model, k) section: all its rows are shown, missing results stay
visible as missing, and the section's other methods follow as extra rows. An *ablation* layout (Tables 4,
5, 6) holds only its own rows, is drawn when one of them has a result, and takes those rows out of the
section's main table; a layout whose rows with results are all shown by a larger one is left out (Table 4's
row is Table 5's first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from mezo_ray.report.load import model_key
from mezo_ray.report.paper_numbers import Published, markdown_cells, parse_score

#: Paper column header -> our config task name, RoBERTa (MLM) family.
ROBERTA_TASKS = {
    "SST-2": "SST-2",
    "SST-5": "sst-5",
    "SNLI": "SNLI",
    "MNLI": "MNLI",
    "RTE": "RTE",
    "TREC": "trec",
}
#: The ablations' three tasks (Tables 4-6).
ABLATION_TASKS = {"SST-2": "SST-2", "SNLI": "SNLI", "TREC": "trec"}
#: Paper column header -> our config task name, OPT (causal) family.
OPT_TASKS = {
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
BUDGET = "10000 fwd"  # the ablations' "10,000 forward passes" (mezo_protocol.md §1.3)
#: Table 6's n-SPSA rows: n perturbations a step, constant or linearly rising (App. A.2).
N_SPSA_ROWS = tuple(f"MeZO [n={n}{schedule}, {BUDGET}]" for n in (4, 16) for schedule in ("", " linear"))


@dataclass(frozen=True)
class Layout:
    """One table of the paper: which sections it holds, its rows and columns, and its published cells."""

    name: str  # "Table 18"
    title: str  # str.format'ed with name, model, key (model key, upper case) and k
    models: tuple[str, ...]  # model keys
    ks: tuple[int | None, ...]
    columns: Mapping[str, str]  # paper header -> config task name
    rows: tuple[str, ...]  # our row labels, in the paper's order
    published: str = ""  # the paper's cells, markdown, verbatim
    paper_rows: Mapping[str, str | None] = field(default_factory=dict)  # our label -> the paper's, or None
    ablation: bool = False
    requires: tuple[str, ...] = ()  # ablation: drawn only when one of these rows has a result (default: any)
    lmbff_data: bool = False  # the paper ran it on LM-BFF's k-shot pack: cells from hub data get marked
    notes: tuple[str, ...] = ()

    def covers(self, model: str, k: int | None) -> bool:
        """Whether the (model, k) section is this table's."""
        return model_key(model) in self.models and k in self.ks

    @cached_property
    def scores(self) -> dict[tuple[str, int | None, str, str], Published]:
        """(model key, k, paper row label, task) -> Published, parsed from ``published``."""
        if not self.published:
            return {}
        header, body = markdown_cells(self.published)
        tasks = [self.columns[h] for h in header]
        cells = {}
        for label, texts in body:
            models, ks = self.models, self.ks
            first, _, rest = label.partition(" ")
            if first in self.models:
                models, label = (first,), rest
            first, _, rest = label.partition(" ")
            if first.startswith("k="):
                ks, label = (int(first.removeprefix("k=")),), rest
            for text, task in zip(texts, tasks, strict=True):
                for model in models:
                    for k in ks:
                        cells[(model, k, label, task)] = parse_score(text)
        return cells

    def published_cells(self, model: str, k: int | None, row: str) -> dict[str, Published]:
        """{task: Published} of one of our rows in the (model, k) section."""
        paper_row = self.paper_rows.get(row, row)
        if paper_row is None:
            return {}
        key = model_key(model)
        return {
            task: cell
            for (m, kk, label, task), cell in self.scores.items()
            if m == key and kk == k and label == paper_row
        }

    def format_title(self, model: str, k: int | None) -> str:
        return self.title.format(name=self.name, model=model, key=model_key(model).upper(), k=k)


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="Table 18",
        lmbff_data=True,
        title="{name} (RoBERTa-large, k={k}): {model}",
        models=("roberta-large",),
        ks=(16, 512),
        columns=ROBERTA_TASKS,
        rows=(
            "Zero-shot",
            "LP",
            "MeZO",
            "MeZO (LoRA, as published)",
            "MeZO (LoRA)",
            "MeZO (prefix)",
            "MeZO-Adam",
            "FT",
            "FT (LoRA, as published)",
            "FT (LoRA)",
            "FT (prefix)",
        ),
        # the paper's LoRA numbers came from its code's LoRA (FIDELITY row 6, models/modes.py): our
        # "as published" rows; real LoRA is a row of its own, which the paper has no number for
        paper_rows={
            "MeZO (LoRA, as published)": "MeZO (LoRA)",
            "FT (LoRA, as published)": "FT (LoRA)",
            "MeZO (LoRA)": None,
            "FT (LoRA)": None,
        },
        published="""
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
""",
    ),
    Layout(
        name="Table 1",
        title="{name} (OPT-13B): {model}",
        models=("opt-13b",),
        ks=(None,),
        columns=OPT_TASKS,
        rows=("Zero-shot", "ICL", "LP", "MeZO", "MeZO (LoRA)", "MeZO (prefix)", "FT"),
        paper_rows={"ICL": "ICL (32 demos)", "FT": "FT (12× memory)"},
        published="""
| | SST-2 | RTE | CB | BoolQ | WSC | WIC | MultiRC | COPA | ReCoRD | SQuAD | DROP |
| Zero-shot | 58.8 | 59.6 | 46.4 | 59.0 | 38.5 | 55.0 | 46.9 | 80.0 | 81.2 | 46.2 | 14.6 |
| ICL (32 demos) | 87.0 | 62.1 | 57.1 | 66.9 | 39.4 | 50.5 | 53.1 | 87.0 | 82.5 | 75.9 | 29.6 |
| LP | 93.4 | 68.6 | 67.9 | 59.3 | 63.5 | 60.2 | 63.5 | 55.0 | 27.1 | 3.7 | 11.1 |
| MeZO | 91.4 | 66.1 | 67.9 | 67.6 | 63.5 | 61.1 | 60.1 | 88.0 | 81.7 | 84.7 | 30.9 |
| MeZO (LoRA) | 89.6 | 67.9 | 66.1 | 73.8 | 64.4 | 59.7 | 61.5 | 84.0 | 81.2 | 83.8 | 31.4 |
| MeZO (prefix) | 90.7 | 70.8 | 69.6 | 73.1 | 60.6 | 59.9 | 63.7 | 87.0 | 81.4 | 84.2 | 28.9 |
| FT (12× memory) | 92.0 | 70.8 | 83.9 | 77.1 | 63.5 | 70.1 | 71.1 | 79.0 | 74.1 | 84.9 | 31.3 |
""",
    ),
    Layout(
        name="Table 20",
        title="{name} ({key}): {model}",
        models=("opt-30b", "opt-66b"),
        ks=(None,),
        columns=OPT_TASKS,
        rows=("Zero-shot", "ICL", "LP", "MeZO", "MeZO (LoRA)", "MeZO (prefix)", "FT"),
        # §3.2's prose laid out as a table; "*" = "needs more tuning"
        published="""
| | SST-2 | RTE | BoolQ | WSC | WIC | SQuAD |
| opt-30b Zero-shot | 56.7 | 52.0 | 39.1 | 38.5 | 50.2 | 46.5 |
| opt-30b ICL | 81.9 | 66.8 | 66.2 | 56.7 | 51.3 | 78.0 |
| opt-30b MeZO | 90.6 | 66.4 | 67.2 | 63.5 | 56.3 | 85.2 |
| opt-30b MeZO (prefix) | 87.5 | 72.6 | 73.5 | 55.8 | 59.1 | 83.9 |
| opt-66b Zero-shot | 57.5 | 67.2 | 66.8 | 43.3 | 50.6 | 48.1 |
| opt-66b ICL | 89.3 | 65.3 | 62.8 | 52.9 | 54.9 | 81.3 |
| opt-66b MeZO | 91.2 | 65.7 | 72.7 | 63.5 | 58.9 | * |
| opt-66b MeZO (prefix) | 93.6 | 66.4 | 73.7 | 57.7 | 58.6 | 85.0 |
""",
    ),
    Layout(
        name="Table 4",
        lmbff_data=True,
        title="{name} (ablation grid at 10,000 forward passes, RoBERTa-large, k={k}): {model}",
        models=("roberta-large",),
        ks=(16,),
        columns=ABLATION_TASKS,
        rows=(f"MeZO [{BUDGET}]",),
        paper_rows={f"MeZO [{BUDGET}]": "Prompt"},
        # Table 4 is the grid; its MeZO numbers are Table 5's prompt row (the same runs, App. E.6)
        published="""
| | SST-2 | SNLI | TREC |
| Prompt | 89.6 (1.2) | 65.1 (6.2) | 66.7 (6.2) |
""",
        ablation=True,
        notes=("paper: Table 5's prompt row, the same grid and budget",),
    ),
    Layout(
        name="Table 5",
        lmbff_data=True,
        title="{name} (prompt vs no prompt, 10,000 forward passes, RoBERTa-large, k={k}): {model}",
        models=("roberta-large",),
        ks=(16,),
        columns=ABLATION_TASKS,
        rows=(f"MeZO [{BUDGET}]", f"MeZO [{BUDGET}, no prompt]"),
        paper_rows={f"MeZO [{BUDGET}]": "Prompt", f"MeZO [{BUDGET}, no prompt]": "No prompt"},
        published="""
| | SST-2 | SNLI | TREC |
| Prompt | 89.6 (1.2) | 65.1 (6.2) | 66.7 (6.2) |
| No prompt | 51.9 (2.9) | 34.8 (2.1) | 19.5 (9.0) |
""",
        ablation=True,
        requires=(f"MeZO [{BUDGET}, no prompt]",),
    ),
    Layout(
        name="Table 6",
        lmbff_data=True,
        title="{name} (n-SPSA, 10,000 forward passes, RoBERTa-large, k={k}): {model}",
        models=("roberta-large",),
        ks=(16,),
        columns=ABLATION_TASKS,
        rows=(f"MeZO [{BUDGET}]", *N_SPSA_ROWS),
        paper_rows={
            f"MeZO [{BUDGET}]": "n=1 constant",
            **{
                f"MeZO [n={n}{schedule}, {BUDGET}]": f"n={n} {name}"
                for n in (4, 16)
                for schedule, name in (("", "constant"), (" linear", "linear"))
            },
        },
        # the paper's Table 6 (App. A.2), n = 1 being Table 4's runs (Table 5's prompt row)
        published="""
| | SST-2 | SNLI | TREC |
| n=1 constant | 89.6 (1.2) | 65.1 (6.2) | 66.7 (6.2) |
| n=4 constant | 89.5 (1.1) | 68.6 (3.2) | 62.3 (5.6) |
| n=4 linear | 89.6 (1.4) | 65.3 (6.4) | 66.1 (5.5) |
| n=16 constant | 90.4 (0.7) | 67.0 (3.4) | 62.8 (6.3) |
| n=16 linear | 88.9 (1.2) | 62.8 (5.9) | 64.2 (5.3) |
""",
        ablation=True,
        requires=N_SPSA_ROWS,
        notes=("n = 1: Table 4's grid (`roberta_table4_ablation`), as in the paper",),
    ),
)


def published_score(model: str, k: int | None, row: str, task: str) -> Published | None:
    """The paper's published cell for (model, k, row label, config task name), or None where it has none."""
    for layout in LAYOUTS:
        if layout.covers(model, k):
            cell = layout.published_cells(model, k, row).get(task)
            if cell is not None:
                return cell
    return None
