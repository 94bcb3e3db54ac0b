"""The fixed test set of a task: length buckets, and for the retrieval tasks depth buckets in each.

Bucket k covers lengths (previous upper end, ``task.test_lengths[k]``], the first starting at
``task.train_lengths[0]``; its examples have lengths drawn uniformly in it from a generator seeded
with ``(task.test_seed, bucket)``, so every run, encoding and seed is tested on the same examples.
A retrieval task's bucket holds ``task.test_examples`` examples per depth bucket, with depths
uniform in each of ``task.depth_buckets`` equal parts of [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posbench.tasks.base import Example, Task
from posbench.tasks.config import TaskConfig


@dataclass(frozen=True)
class Bucket:
    lo: int
    hi: int

    @property
    def label(self) -> str:
        return str(self.hi) if self.lo == self.hi else f"{self.lo}-{self.hi}"


def length_buckets(cfg: TaskConfig) -> list[Bucket]:
    buckets, lo = [], cfg.train_lengths[0]
    for hi in cfg.test_lengths:
        buckets.append(Bucket(lo, hi))
        lo = hi + 1
    return buckets


def fixed_examples(task: Task, bucket: Bucket) -> list[Example]:
    cfg = task.cfg
    rng = np.random.default_rng([cfg.test_seed, bucket.lo, bucket.hi])
    examples = []
    for part in range(cfg.depth_buckets if task.retrieval else 1):
        for _ in range(cfg.test_examples):
            depth = (part + rng.random()) / cfg.depth_buckets if task.retrieval else None
            examples.append(task.example(rng, int(rng.integers(bucket.lo, bucket.hi + 1)), depth))
    return examples
