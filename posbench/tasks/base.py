"""What every task shares: a character vocabulary, examples with an answer mask, the Task interface.

Every task writes its examples as text over one vocabulary (two specials, then the printable
ASCII characters), so an example can be read as it is stored, one model fits every task, and
the answer mask says which tokens are scored: only those carry loss in training (inputs
masked, as the McGill suite's ``decoder_only_mask_inputs``, Kazemnejad et al. 2023) and only
those are scored in the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from posbench.tasks.config import TaskConfig

PAD, BOS = 0, 1  # padding after an example (never scored), and the first token of every example
SPECIALS = ("<pad>", "<bos>")
CHARS = "".join(chr(c) for c in range(32, 127))  # printable ASCII, space included
VOCAB_SIZE = len(SPECIALS) + len(CHARS)
VOCABULARY_VERSION = 1  # part of every task checkpoint's fingerprint: bump when ids change meaning
_IDS = {c: i + len(SPECIALS) for i, c in enumerate(CHARS)}


def encode(text: str) -> list[int]:
    try:
        return [_IDS[c] for c in text]
    except KeyError as exc:
        raise ValueError(f"task text may only hold printable ASCII, not {exc.args[0]!r}") from None


def decode(ids: Sequence[int]) -> str:
    return "".join(SPECIALS[i] if i < len(SPECIALS) else CHARS[i - len(SPECIALS)] for i in ids)


Segment = tuple[str, bool]  # (text, whether it is answer)


@dataclass(frozen=True)
class Example:
    tokens: np.ndarray  # (T,) int64: BOS, then the text of every segment
    answer: np.ndarray  # (T,) bool: True at the tokens of the answer segments
    length: int  # this example's length in its task's unit
    depth: Optional[float] = None  # retrieval: where the asked-for needle sits, 0 = start, 1 = end

    @classmethod
    def of(cls, segments: Sequence[Segment], length: int, depth: Optional[float] = None) -> Example:
        tokens, answer = [BOS], [False]
        for text, is_answer in segments:
            tokens += encode(text)
            answer += [is_answer] * len(text)
        return cls(np.asarray(tokens, dtype=np.int64), np.asarray(answer, dtype=bool), length, depth)

    @property
    def text(self) -> str:
        return decode(self.tokens[1:].tolist())

    @property
    def answer_text(self) -> str:
        return decode(self.tokens[self.answer].tolist())


class Task:
    """A task makes one example of a given length from a generator; subclasses set the class fields
    and ``segments``. ``statement`` is what results files say about the format and the scoring."""

    name: str = ""
    unit: str = "input symbols"  # what a length counts
    source: str = ""  # where the task comes from (paper, suite and its task name)
    format: str = ""  # the exact text of an example, with its answer marked
    retrieval: bool = False  # a needle at a depth: tested by length and depth

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        if cfg.train_lengths[0] < self.shortest():
            raise ValueError(
                f"task {self.name} needs lengths of at least {self.shortest()} {self.unit}: raise "
                f"task.train_lengths[0] (now {cfg.train_lengths[0]})"
            )
        longest = max(cfg.train_lengths[1], cfg.test_lengths[-1])
        if longest > self.longest():
            raise ValueError(
                f"task {self.name} can make lengths of at most {self.longest()} {self.unit}, not {longest}: "
                "lower task.train_lengths or task.test_lengths"
            )

    def shortest(self) -> int:
        """The least length this task (with its config) can make."""
        return 1

    def longest(self) -> int:
        return 10**9

    def example(self, rng: np.random.Generator, length: int, depth: Optional[float] = None) -> Example:
        """One example of ``length`` (in ``unit``); ``depth`` in [0, 1] places a retrieval task's needle
        (drawn uniformly when None)."""
        if depth is None and self.retrieval:
            depth = float(rng.random())
        return Example.of(self.segments(rng, length, depth), length, depth if self.retrieval else None)

    def segments(self, rng: np.random.Generator, length: int, depth: Optional[float]) -> list[Segment]:
        raise NotImplementedError

    def statement(self) -> dict:
        return {
            "name": self.name,
            "unit": self.unit,
            "source": self.source,
            "format": self.format,
            "scored": "the answer tokens only (the rest of each example is input, never scored)",
            "accuracy": "exact match: every answer token of the example right",
            "token_accuracy": "the fraction of answer tokens right, averaged over examples",
        }
