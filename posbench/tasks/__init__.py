"""Synthetic tasks, trained short and tested long, scored by accuracy (``task=NAME``).

A task generates its examples on the fly from a seeded generator: ``TaskBatches`` feeds the
trainer (lengths drawn per sequence, loss on the answer tokens only) and ``fixed_examples`` gives the
fixed examples of every test bucket. Adding a task: a ``Task`` subclass (``base.py``) with its
format and source, registered with ``@TASKS.register("name", ItsConfig)`` (``registry.py``),
and one ``configs/task/NAME.yaml``.
"""

from __future__ import annotations

from posbench.tasks import algorithmic, retrieval  # noqa: F401  (their classes register themselves)
from posbench.tasks.base import BOS, PAD, VOCAB_SIZE, Example, Task, decode, encode
from posbench.tasks.batches import TaskBatches, collate
from posbench.tasks.config import Decoding, TaskConfig
from posbench.tasks.registry import TASKS
from posbench.tasks.testset import Bucket, fixed_examples, length_buckets


def build_task(cfg: TaskConfig) -> Task:
    return TASKS.implementation(cfg.name)(cfg)


__all__ = [
    "BOS",
    "PAD",
    "TASKS",
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
