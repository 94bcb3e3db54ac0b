"""Synthetic tasks, trained short and tested long, scored by accuracy (``task=NAME``).

A task generates its examples on the fly from a seeded generator: ``TaskBatches`` feeds the
trainer (lengths drawn per sequence, loss on the answer tokens only) and ``fixed_examples`` gives the
fixed examples of every test bucket. Adding a task: a ``Task`` subclass (``base.py``) with its
format and source, one line in ``TASKS``, one ``configs/task/NAME.yaml``.
"""

from __future__ import annotations

from posbench.tasks.algorithmic import BinaryAdd, Copy, ModularSum, Parity, Reverse, Sort
from posbench.tasks.base import BOS, PAD, VOCAB_SIZE, Example, Task, decode, encode
from posbench.tasks.batches import TaskBatches, collate
from posbench.tasks.config import TASK_SCHEMAS, TEST_KEYS, Decoding, TaskConfig
from posbench.tasks.retrieval import AssocRecall, Niah, Passkey, VarTrack
from posbench.tasks.testset import Bucket, fixed_examples, length_buckets

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (Copy, Reverse, Parity, ModularSum, BinaryAdd, Sort, AssocRecall, Passkey, Niah, VarTrack)
}
assert set(TASKS) == set(TASK_SCHEMAS), "every task has a config schema (tasks/config.py)"


def build_task(cfg: TaskConfig) -> Task:
    if cfg.name not in TASKS:
        raise ValueError(f"unknown task {cfg.name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[cfg.name](cfg)


__all__ = [
    "BOS",
    "PAD",
    "TASKS",
    "TASK_SCHEMAS",
    "TEST_KEYS",
    "VOCAB_SIZE",
    "Bucket",
    "Decoding",
    "Example",
    "Task",
    "TaskBatches",
    "TaskConfig",
    "build_task",
    "collate",
    "decode",
    "encode",
    "fixed_examples",
    "length_buckets",
]
