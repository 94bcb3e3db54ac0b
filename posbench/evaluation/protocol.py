"""Which windows of the validation stream are scored, and which tokens inside each.

The stream is the validation documents joined by the separator token, with one separator
before the first document and none after the last (see ``posbench.data.streams``). A window
of length L holds inputs stream[s : s+L] and targets stream[s+1 : s+L+1], with positions
0..L-1 whatever its offset s. No BOS is added: a window that starts mid-document starts
mid-text, exactly as the random training windows do; the separator is context before each
document and a scored target at each document's end.

- ``nonoverlapping`` ("nonoverlapping inference", the default of Press et al. 2022, "Train
  Short, Test Long"): windows tile the stream, s = 0, L, 2L, …; every target in a window is
  scored, so each token is scored once, with the context that precedes it in its window.
- ``sliding`` with stride S (sliding-window evaluation, as in Press et al. 2022 and Baevski &
  Auli 2019): s = 0, S, 2S, …; the first window scores all L targets, later ones only their
  last S, so each token is scored once with at least L−S tokens of context (the first
  window's head excepted).

Only whole windows are used (a tail shorter than one window is not scored), and both
protocols stop after the window that brings the scored count to ``max_tokens``, so every
length is scored on the leading stretch of the stream, at least ``max_tokens`` long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

PROTOCOLS = ("nonoverlapping", "sliding")


@dataclass(frozen=True)
class Window:
    start: int  # offset of the first input token in the stream
    score_from: int  # index inside the window of the first scored target


def resolve_stride(length: int, protocol: str, stride: Optional[int]) -> Optional[int]:
    """The stride actually used at ``length``: None for nonoverlapping, ``stride`` or L/2 for sliding."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}")
    if protocol == "nonoverlapping":
        if stride is not None:
            # Silently ignoring a stride would report nonoverlapping numbers to someone who
            # asked for sliding ones.
            raise ValueError(
                "eval.stride is set but eval.protocol=nonoverlapping; "
                "add eval.protocol=sliding or drop eval.stride"
            )
        return None
    step = stride if stride is not None else max(1, length // 2)
    if step > length:
        raise ValueError(
            f"eval.stride={step} exceeds the window length {length}; it would skip tokens: "
            f"use a stride of at most {length}"
        )
    return step


def windows(
    stream_len: int,
    length: int,
    protocol: str,
    stride: Optional[int] = None,
    max_tokens: Optional[int] = None,
) -> Iterator[Window]:
    """Windows of ``length`` inputs (+1 target) over a stream of ``stream_len`` tokens."""
    step = resolve_stride(length, protocol, stride) or length
    last_start = stream_len - length - 1  # a window needs length + 1 tokens
    scored, start = 0, 0
    while start <= last_start and (max_tokens is None or scored < max_tokens):
        # Targets before index length-step were scored by the previous window.
        score_from = 0 if start == 0 else length - step
        yield Window(start, score_from)
        scored += length - score_from
        start += step


def count_windows(
    stream_len: int,
    length: int,
    protocol: str,
    stride: Optional[int] = None,
    max_tokens: Optional[int] = None,
) -> int:
    return sum(1 for _ in windows(stream_len, length, protocol, stride, max_tokens))


def protocol_statement(
    protocol: str,
    stride: Optional[int],
    max_tokens: Optional[int],
    buckets: int,
    bucket_kind: str,
    separator_id: int,
) -> dict[str, Any]:
    """The protocol in words and numbers, written into every results file."""
    return {
        "name": protocol,
        "stride": stride
        if protocol == "sliding" and stride is not None
        else ("length/2" if protocol == "sliding" else None),
        "max_tokens_per_length": max_tokens,
        "position_buckets": buckets,
        "bucket_kind": bucket_kind,
        "stream": (
            f"validation documents joined by separator id {separator_id}; one separator before the first "
            "document, none after the last"
        ),
        "bos": (
            "no BOS is added to windows; a window starting mid-document starts mid-text, "
            "as training windows do"
        ),
        "scored": (
            "every target of a scored window position, separators included; the stream's first token is "
            "context only; only whole windows; windows from the stream's start until max_tokens targets are "
            "scored"
        ),
        "positions": "each window's positions are 0..L-1, whatever its offset in the stream",
        "aggregation": (
            "ppl = exp(token-weighted mean NLL over all scored targets), never a mean of window means"
        ),
        "position_curve": (
            "mean NLL of the scored targets whose index in the window falls in each bucket "
            "[start, end); its token-weighted mean equals the overall NLL"
        ),
    }
