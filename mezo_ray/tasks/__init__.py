"""Task layer: prompted examples for MeZO's RoBERTa (LM-BFF) and OPT tasks, their data splits and metrics.

```python
task = get_task("SST-2")                       # or get_task("RTE", family="causal")
splits = load_splits(task, DataSpec(k=16, seed=13))
task.score(predictions, splits.test)
```
"""

from mezo_ray.tasks.base import Example, HubSource, SyntheticSource, Task
from mezo_ray.tasks.causal import CausalTask
from mezo_ray.tasks.data import (
    DatasetUnavailableError,
    DataSpec,
    Pool,
    Splits,
    check_hub_dataset,
    expected_train_size,
    load_pool,
    load_splits,
    sample_icl_demonstrations,
)
from mezo_ray.tasks.metrics import max_token_f1, normalize_answer, token_f1
from mezo_ray.tasks.mlm import LmBffFiles, MLMTask, encode_template
from mezo_ray.tasks.registry import get_task, list_tasks
from mezo_ray.tasks.synthetic import (
    synthetic_pretraining_corpus,
    synthetic_sst2_examples,
    synthetic_vocabulary,
)

__all__ = [
    "CausalTask",
    "DataSpec",
    "DatasetUnavailableError",
    "Example",
    "HubSource",
    "LmBffFiles",
    "MLMTask",
    "Pool",
    "Splits",
    "SyntheticSource",
    "Task",
    "check_hub_dataset",
    "encode_template",
    "expected_train_size",
    "get_task",
    "list_tasks",
    "load_pool",
    "load_splits",
    "max_token_f1",
    "normalize_answer",
    "sample_icl_demonstrations",
    "synthetic_pretraining_corpus",
    "synthetic_sst2_examples",
    "synthetic_vocabulary",
    "token_f1",
]
