"""The algorithmic tasks of the Chomsky-hierarchy suite (Delétang et al. 2023, ICLR) as Ruoss et al.
2023 (ACL, §4 and Table 1) train them for length generalisation: inputs of 1..40 symbols in training,
longer ones in the test.

Each example is ``<bos>`` + input + ``=`` + answer. The reference models are non-causal encoders that
read the input and emit every output token at once; here a causal decoder reads the input, then
predicts the answer one token at a time after ``=`` (README, "Tasks").
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from posbench.tasks.base import Segment, Task
from posbench.tasks.config import BinaryAddConfig, TaskConfig
from posbench.tasks.registry import TASKS

SUITE = "Delétang et al. 2023 / Ruoss et al. 2023 (google-deepmind/randomized_positional_encodings, tasks/{})"


def symbols(rng: np.random.Generator, alphabet: str, n: int) -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))


@TASKS.register("copy", TaskConfig)
class Copy(Task):
    name = "copy"
    source = SUITE.format("cs/duplicate_string.py")
    format = "<bos> s = [s s]: s is n symbols of {a, b}; the answer is s written twice (2n tokens)"

    def segments(self, rng, length, depth) -> list[Segment]:
        s = symbols(rng, "ab", length)
        return [(s + "=", False), (s + s, True)]


@TASKS.register("reverse", TaskConfig)
class Reverse(Task):
    name = "reverse"
    source = SUITE.format("dcf/reverse_string.py")
    format = "<bos> s = [reversed(s)]: s is n symbols of {a, b}"

    def segments(self, rng, length, depth) -> list[Segment]:
        s = symbols(rng, "ab", length)
        return [(s + "=", False), (s[::-1], True)]


@TASKS.register("parity", TaskConfig)
class Parity(Task):
    name = "parity"
    source = SUITE.format("regular/parity_check.py")
    format = "<bos> s = [p]: s is n symbols of {0, 1}; p is 1 if s holds an odd number of 1s, else 0"

    def segments(self, rng, length, depth) -> list[Segment]:
        s = symbols(rng, "01", length)
        return [(s + "=", False), (str(s.count("1") % 2), True)]


@TASKS.register("modular_sum", TaskConfig)
class ModularSum(Task):
    name = "modular_sum"
    source = SUITE.format("regular/modular_arithmetic.py") + ", with addition only"
    format = "<bos> d1+d2+...+dn = [r]: n digits in 0..4; r is their sum mod 5"

    def segments(self, rng, length, depth) -> list[Segment]:
        digits = rng.integers(0, 5, size=length)
        return [("+".join(map(str, digits)) + "=", False), (str(int(digits.sum()) % 5), True)]


@TASKS.register("binary_add", BinaryAddConfig)
class BinaryAdd(Task):
    name = "binary_add"
    source = SUITE.format("cs/binary_addition.py")
    format = (
        "<bos> x+y = [z]: x and y little-endian binary numbers (least significant bit first), n symbols "
        "with the +; x has 1..n-2 bits, uniformly, y the rest; each value uniform in 1..2^bits - 1, "
        "zero-padded to its bits; z is x + y little-endian, without trailing zeros"
    )

    def shortest(self) -> int:
        return 3  # a bit, the +, a bit

    def segments(self, rng, length, depth) -> list[Segment]:
        left = int(rng.integers(1, length - 1))  # bits of x; y gets the rest but the +
        x, y = (uniform_number(rng, bits) for bits in (left, length - 1 - left))
        return [
            (f"{little_endian(x, left)}+{little_endian(y, length - 1 - left)}=", False),
            (little_endian(x + y), True),
        ]


def uniform_number(rng: np.random.Generator, bits: int) -> int:
    """Uniform in 1..2^bits - 1, for any number of bits (numpy's integers stop at 2^63)."""
    while True:
        value = int("".join(map(str, rng.integers(0, 2, size=bits))), 2)
        if value:
            return value


def little_endian(value: int, bits: int = 0) -> str:
    """``value`` in binary, least significant bit first, zero-padded to ``bits`` digits."""
    return format(value, f"0{bits}b")[::-1] if bits else format(value, "b")[::-1]


@TASKS.register("sort", TaskConfig)
class Sort(Task):
    name = "sort"
    source = SUITE.format("cs/bucket_sort.py")
    format = "<bos> s = [sorted(s)]: s is n digits in 0..4; the answer is its digits in ascending order"

    def segments(self, rng, length, depth: Optional[float]) -> list[Segment]:
        s = symbols(rng, "01234", length)
        return [(s + "=", False), ("".join(sorted(s)), True)]
