"""Task config schemas, one per ``task=`` choice.

The training part (which task, its training lengths and task-specific knobs) is the experiment;
the keys declared ``at_test(...)`` (``test_*``, ``decoding``, ``depth_buckets``) only say how a trained
model is tested, so ``posbench eval`` may change them and the run identity leaves them out
(``posbench/common/options.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import List

from omegaconf import MISSING

from posbench.common.checks import at_least
from posbench.common.options import at_test


class LengthSampling(str, Enum):
    # one length per training batch, uniform in train_lengths (the DeepMind suite's curriculum): every
    # row of a forward has the forward's length, so positions drawn for it (randomized positions)
    # and frequencies read from it (length-dependent RoPE scaling) are each row's own
    per_batch = "per_batch"
    # one length per example, rows padded to the longest: exact only for encodings whose positions
    # and frequencies do not depend on the forward's length (refused for the others)
    per_sequence = "per_sequence"


class Decoding(str, Enum):
    # one forward over prompt and true answer; an answer is exactly right iff every answer token is
    # the argmax, which is what greedy decoding would emit (README, "Tasks" > "Scoring")
    teacher_forced = "teacher_forced"
    greedy = "greedy"  # generate the answer tokens one forward at a time


@dataclass
class TaskConfig:
    name: str = MISSING
    # [shortest, longest] length of a training example, drawn uniformly per sequence; the unit is the
    # task's (input symbols, key-value pairs, or tokens for the retrieval tasks)
    train_lengths: List[int] = field(default_factory=lambda: [1, 40])
    length_sampling: LengthSampling = LengthSampling.per_batch
    # upper ends of the test buckets: the first starts at train_lengths[0], each next one past the last
    test_lengths: List[int] = at_test(default_factory=lambda: [40, 80, 160, 320])
    # examples per test bucket (per depth bucket for the retrieval tasks: see depth_buckets)
    test_examples: int = at_test(100)
    test_seed: int = at_test(1234)  # every bucket's test set is drawn from this seed: the same for every run
    test_batch_size: int = at_test(32)  # examples per forward in the test
    decoding: Decoding = at_test(Decoding.teacher_forced)
    depth_buckets: int = at_test(5)  # the retrieval tasks' test: equal-width depth buckets over [0, 1]

    def __post_init__(self) -> None:
        lo, hi = self.check_train_lengths()
        at_least("task.test_examples", self.test_examples, 1, "examples per test bucket")
        at_least("task.test_batch_size", self.test_batch_size, 1, "examples per forward")
        at_least("task.depth_buckets", self.depth_buckets, 1, "depth buckets of the retrieval test")
        edges = list(self.test_lengths)
        if not edges or edges[0] < lo or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(
                f"task.test_lengths={edges} must be increasing upper ends of test buckets, the first at "
                f"least task.train_lengths[0]={lo} (e.g. [{hi}, {2 * hi}, {4 * hi}, {8 * hi}])"
            )

    def check_train_lengths(self) -> tuple[int, int]:
        lengths = list(self.train_lengths)
        if len(lengths) != 2 or lengths[0] < 1 or lengths[1] < lengths[0]:
            raise ValueError(
                f"task.train_lengths={lengths} must be [shortest, longest] with 1 <= shortest <= longest"
            )
        return lengths[0], lengths[1]


@dataclass
class BinaryAddConfig(TaskConfig):
    name: str = "binary_add"
    train_lengths: List[int] = field(default_factory=lambda: [3, 40])  # a bit, the +, a bit at least


@dataclass
class AssocRecallConfig(TaskConfig):
    name: str = "assoc_recall"
    queries: int = 4  # keys asked after the pairs (at most the number of pairs)

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("task.queries", self.queries, 1, "keys asked after the pairs")


@dataclass
class RetrievalConfig(TaskConfig):
    """The filler-text tasks: lengths are in tokens (characters), training at one stated range."""

    train_lengths: List[int] = field(default_factory=lambda: [128, 256])
    test_lengths: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    test_examples: int = 20


@dataclass
class PasskeyConfig(RetrievalConfig):
    name: str = "passkey"


@dataclass
class NiahConfig(RetrievalConfig):
    name: str = "niah"
    train_lengths: List[int] = field(default_factory=lambda: [192, 256])  # four needles need 161
    needles: int = 4  # key-value needles in the haystack; one of them is asked for

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("task.needles", self.needles, 1, "needles in the haystack")


@dataclass
class VarTrackConfig(RetrievalConfig):
    name: str = "var_track"
    hops: int = 4  # assignments after the first in each chain (VAR B = A, ...); RULER's default
    chains: int = 1  # chains in the text, one of them asked for; RULER's default is one

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("task.hops", self.hops, 1, "assignments after the first in a chain")
        at_least("task.chains", self.chains, 1, "chains in the text")
