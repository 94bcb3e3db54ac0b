"""Which windows of the validation stream are scored, and which tokens inside each.

The stream is the validation documents joined by the separator token (see posbench.data).
A window of length L holds inputs stream[s : s+L] and targets stream[s+1 : s+L+1], with
positions 0..L-1: every window starts at position 0, whatever its offset in the stream.

- ``nonoverlapping`` (Press et al. 2022's default): windows tile the stream, s = 0, L, 2L, …;
  every target in a window is scored, so each token is scored once with the context that
  precedes it inside its window.
- ``sliding`` with stride S: s = 0, S, 2S, …; the first window scores all L targets, later
  ones only their last S, so each token is scored once with at least L−S tokens of context.

Both stop after the window that brings the scored count to ``max_tokens`` (whole windows
only), so every length is scored on the same leading stretch of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class Window:
    start: int  # offset of the first input token in the stream
    score_from: int  # index inside the window of the first scored target


def windows(stream_len: int, length: int, protocol: str, stride: Optional[int] = None, max_tokens: Optional[int] = None) -> Iterator[Window]:
    """Windows of ``length`` inputs (+1 target) over a stream of ``stream_len`` tokens."""
    last_start = stream_len - length - 1  # a window needs length + 1 tokens
    if protocol == "nonoverlapping":
        step, scored_later = length, length
    elif protocol == "sliding":
        step = stride if stride is not None else max(1, length // 2)
        if step > length:
            raise ValueError(f"eval.stride={step} exceeds the window length {length}; it would skip tokens")
        scored_later = step
    else:
        raise ValueError(f"unknown protocol {protocol!r}; choose nonoverlapping or sliding")
    scored, start = 0, 0
    while start <= last_start and (max_tokens is None or scored < max_tokens):
        score_from = 0 if start == 0 else length - scored_later
        yield Window(start, score_from)
        scored += length - score_from
        start += step


def count_windows(stream_len: int, length: int, protocol: str, stride: Optional[int] = None, max_tokens: Optional[int] = None) -> int:
    return sum(1 for _ in windows(stream_len, length, protocol, stride, max_tokens))
