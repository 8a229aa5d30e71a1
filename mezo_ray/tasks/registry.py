"""The task registry: every task definition, looked up by canonical name (and family, for RTE)."""

import difflib

from mezo_ray.tasks.base import Family, Task
from mezo_ray.tasks.causal import CAUSAL_TASKS
from mezo_ray.tasks.mlm import MLM_TASKS
from mezo_ray.tasks.synthetic import SYNTHETIC_TASKS

FAMILIES: tuple[Family, ...] = ("mlm", "causal")
_TASKS: dict[tuple[str, str], Task] = {
    (t.family, t.name): t for t in (*MLM_TASKS, *CAUSAL_TASKS, *SYNTHETIC_TASKS)
}


def list_tasks(family: str | None = None) -> list[str]:
    """Sorted canonical task names, of one family or of both."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family={family!r}; allowed: {list(FAMILIES)} or None")
    return sorted({name for fam, name in _TASKS if family in (None, fam)})


def get_task(name: str, family: str | None = None) -> Task:
    """The task called `name`; `family` ("mlm" / "causal") is needed only for names in both (RTE)."""
    families = [fam for fam in FAMILIES if (fam, name) in _TASKS and family in (None, fam)]
    if len(families) == 1:
        return _TASKS[(families[0], name)]
    if len(families) > 1:
        raise ValueError(
            f"task {name!r} exists in both families: 'mlm' (RoBERTa, LM-BFF prompt) and 'causal' "
            f"(OPT prompt); pass family='mlm' or family='causal'"
        )
    known = list_tasks(family)
    by_lower = {k.lower(): k for k in known}
    close = [by_lower[k] for k in difflib.get_close_matches(name.lower(), by_lower, n=3, cutoff=0.6)]
    hint = f" Did you mean {close}?" if close else ""
    scope = f" in family {family!r}" if family else ""
    raise ValueError(f"unknown task {name!r}{scope}; known tasks: {known}.{hint}")
