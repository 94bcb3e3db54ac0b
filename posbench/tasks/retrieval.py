"""Recall and retrieval tasks: associative recall, and three needles in filler text.

The filler-text tasks (passkey, niah, var_track) count lengths in tokens, i.e. characters plus
the leading ``<bos>``: an example of length n is exactly n tokens, the filler cut to fit. The
filler is the sentence group of the passkey test of Mohtashami & Jaggi 2023 (landmark attention,
§4.2) and of RULER's "noise" haystack (Hsieh et al. 2024, §3), repeated. The templates are
shortened from the references' so that they fit a character-level model's training length.
"""

from __future__ import annotations

import itertools
import string
from typing import Optional

import numpy as np

from posbench.tasks.base import Segment, Task
from posbench.tasks.config import AssocRecallConfig, NiahConfig, PasskeyConfig, VarTrackConfig
from posbench.tasks.registry import TASKS

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PAIR_KEYS = ["".join(p) for p in itertools.product(string.ascii_lowercase, repeat=2)]  # 676 two-letter keys


def filler(start: int, count: int) -> str:
    """``count`` characters of the endless filler, from offset ``start``."""
    repeats = -(-(start + count) // len(FILLER)) + 1
    return (FILLER * repeats)[start : start + count]


def distinct(rng: np.random.Generator, pool: list[str], count: int) -> list[str]:
    return [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]


def letters(rng: np.random.Generator, alphabet: str, count: int) -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=count))


def in_filler(pieces: list[tuple[float, list[Segment]]], total: int) -> list[Segment]:
    """The pieces, each at its depth (0..1) in ``total`` characters of filler, in depth order."""
    segments, used = [], 0
    for depth, piece in sorted(pieces, key=lambda item: item[0]):
        offset = round(depth * total)
        segments.append((filler(used, offset - used), False))
        segments += piece
        used = offset
    segments.append((filler(used, total - used), False))
    return segments


def width(segments: list[Segment]) -> int:
    return sum(len(text) for text, _ in segments)


class FillerTask(Task):
    """A task whose examples are exactly ``length`` tokens: ``<bos>``, filler with pieces in it, a query."""

    unit = "tokens"

    def parts(self, rng: np.random.Generator, depth: Optional[float]):
        """-> (pieces at depths, query segments)."""
        raise NotImplementedError

    def segments(self, rng, length, depth) -> list[Segment]:
        pieces, query = self.parts(rng, depth)
        room = length - 1 - sum(width(p) for _, p in pieces) - width(query)
        if room < 0:  # a key or value drawn longer than the worst case shortest() allows for
            raise AssertionError(f"{self.name}: {length} tokens cannot hold the example")
        return in_filler(pieces, room) + query


@TASKS.register("assoc_recall", AssocRecallConfig)
class AssocRecall(Task):
    name = "assoc_recall"
    unit = "key-value pairs"
    source = (
        "multi-query associative recall, Arora et al. 2024 (Zoology, ICLR, §3.1); "
        "associative recall, Ba et al. 2016"
    )
    format = (
        "<bos> k1:v1,k2:v2,...,kn:vn; q1=[v] q2=[v] ...: n distinct keys of two lowercase letters, "
        "values single digits; min(n, task.queries) distinct keys are asked, each followed by its value"
    )

    def longest(self) -> int:
        return len(PAIR_KEYS)

    def segments(self, rng, length, depth) -> list[Segment]:
        cfg: AssocRecallConfig = self.cfg  # type: ignore[assignment]
        keys = distinct(rng, PAIR_KEYS, length)
        values = [str(v) for v in rng.integers(0, 10, size=length)]
        pairs = ",".join(f"{k}:{v}" for k, v in zip(keys, values))
        segments: list[Segment] = [(pairs + ";", False)]
        for i in rng.choice(length, size=min(length, cfg.queries), replace=False):
            segments += [(f" {keys[i]}=", False), (values[i], True)]
        return segments


@TASKS.register("passkey", PasskeyConfig)
class Passkey(FillerTask):
    name = "passkey"
    source = (
        "passkey retrieval, Mohtashami & Jaggi 2023 (landmark attention, §4.2), as in the YaRN "
        "evaluation (Peng et al. 2024, §4.3.2): a key drawn from 1..50000 at a uniformly random depth"
    )
    format = (
        "<bos> filler, 'The pass key is K. Remember it. K is the pass key. ' at the depth, filler, "
        "'What is the pass key? The pass key is ' [K]"
    )
    retrieval = True

    def shortest(self) -> int:
        return 1 + width(self.needle("50000")) + width(self.query("50000"))

    @staticmethod
    def needle(key: str) -> list[Segment]:
        return [(f"The pass key is {key}. Remember it. {key} is the pass key. ", False)]

    @staticmethod
    def query(key: str) -> list[Segment]:
        return [("What is the pass key? The pass key is ", False), (key, True)]

    def parts(self, rng, depth):
        key = str(int(rng.integers(1, 50001)))
        return [(depth, self.needle(key))], self.query(key)


@TASKS.register("niah", NiahConfig)
class Niah(FillerTask):
    name = "niah"
    source = "multi-key needle in a haystack, RULER (Hsieh et al. 2024, §3, NIAH multi-key), shortened"
    format = (
        "<bos> filler with task.needles needles 'The number for KEY is VALUE. ' (KEY four lowercase "
        "letters, VALUE five digits; the asked one at the depth, the others uniformly), "
        "'What is the number for KEY? It is ' [VALUE]"
    )
    retrieval = True

    def shortest(self) -> int:
        cfg: NiahConfig = self.cfg  # type: ignore[assignment]
        return 1 + cfg.needles * width(self.needle("abcd", "12345")) + width(self.query("abcd", "12345"))

    @staticmethod
    def needle(key: str, value: str) -> list[Segment]:
        return [(f"The number for {key} is {value}. ", False)]

    @staticmethod
    def query(key: str, value: str) -> list[Segment]:
        return [(f"What is the number for {key}? It is ", False), (value, True)]

    def parts(self, rng, depth):
        cfg: NiahConfig = self.cfg  # type: ignore[assignment]
        keys = []
        while len(keys) < cfg.needles:  # distinct keys
            key = letters(rng, string.ascii_lowercase, 4)
            keys += [key] if key not in keys else []
        values = [letters(rng, string.digits, 5) for _ in keys]
        depths = [depth, *rng.random(cfg.needles - 1)]
        pieces = [(float(d), self.needle(k, v)) for d, k, v in zip(depths, keys, values)]
        return pieces, self.query(keys[0], values[0])


@TASKS.register("var_track", VarTrackConfig)
class VarTrack(FillerTask):
    name = "var_track"
    source = "variable tracking, RULER (Hsieh et al. 2024, §3, VT), shortened"
    format = (
        "<bos> filler with task.chains chains of assignments 'VAR A = 12345. ', 'VAR B = A. ', ... "
        "(task.hops after the first; names two capital letters, distinct; each chain's statements in "
        "order at random depths), 'Which variables hold V? ' [the names of V's chain in order, "
        "space-separated]"
    )

    def shortest(self) -> int:
        cfg: VarTrackConfig = self.cfg  # type: ignore[assignment]
        chain = len("VAR AB = 12345. ") + cfg.hops * len("VAR AB = CD. ")
        return 1 + cfg.chains * chain + len("Which variables hold 12345? ") + 3 * (cfg.hops + 1) - 1

    def longest(self) -> int:
        cfg: VarTrackConfig = self.cfg  # type: ignore[assignment]
        if cfg.chains * (cfg.hops + 1) > len(PAIR_KEYS):
            raise ValueError(f"var_track has {len(PAIR_KEYS)} variable names: lower task.chains or task.hops")
        return super().longest()

    def parts(self, rng, depth):
        cfg: VarTrackConfig = self.cfg  # type: ignore[assignment]
        names = [n.upper() for n in distinct(rng, PAIR_KEYS, cfg.chains * (cfg.hops + 1))]
        values: list[str] = []
        while len(values) < cfg.chains:  # distinct five-digit values
            value = str(int(rng.integers(10000, 100000)))
            values += [value] if value not in values else []
        pieces = []
        for c, value in enumerate(values):
            chain = names[c * (cfg.hops + 1) : (c + 1) * (cfg.hops + 1)]
            statements = [f"VAR {chain[0]} = {value}. "] + [
                f"VAR {b} = {a}. " for a, b in itertools.pairwise(chain)
            ]
            depths = np.sort(rng.random(len(statements)))
            pieces += [(float(d), [(s, False)]) for d, s in zip(depths, statements)]
        asked = int(rng.integers(0, cfg.chains))
        chain = names[asked * (cfg.hops + 1) : (asked + 1) * (cfg.hops + 1)]
        return pieces, [(f"Which variables hold {values[asked]}? ", False), (" ".join(chain), True)]
