"""Which windows of the validation stream are scored, and which tokens inside each.

The stream is the validation documents joined by the separator token, with one separator
before the first document and none after the last (see ``posbench.data.streams``). A window
of length L holds inputs stream[s : s+L] and targets stream[s+1 : s+L+1], with positions
0..L-1 whatever its offset s. By default no BOS is added: a window that starts mid-document
starts mid-text, exactly as the random training windows do; the separator is context before
each document and a scored target at each document's end. With ``eval.add_bos`` every window
begins with a BOS token instead (lm-evaluation-harness's rolling windows and the YaRN
repository's eval/perplexity.py prepend the model's BOS): inputs BOS + stream[s : s+L-1],
targets stream[s : s+L], so the window still has L positions and L targets, the first
predicted from BOS alone; windows then start at s = 1, L + 1, ... (BOS stands in for the
stream's leading separator, which is neither input nor target).

- ``nonoverlapping`` ("nonoverlapping inference", the default of Press et al. 2022, "Train
  Short, Test Long"): windows tile the stream, s = 0, L, 2L, …; every target in a window is
  scored, so each token is scored once, with the context that precedes it in its window.
- ``sliding`` with stride S (sliding-window evaluation, as in Press et al. 2022 and Baevski &
  Auli 2019): s = 0, S, 2S, …; the first window scores all L targets, later ones only their
  last S, so each token is scored once with at least L−S tokens of context (the first
  window's head excepted).

- ``truncated`` (the YaRN repository's long-document perplexity, eval/perplexity.py with
  ``--truncate``; Peng et al. 2023, §4.3.1): one window per validation document, its first L
  tokens as targets (the separator before it, or BOS, as its first input), for the first
  ``eval.documents`` documents of at least ``eval.min_document_tokens`` tokens (default: the
  longest evaluated length, so every length scores the same documents, as YaRN's 128K filter).
  YaRN's window of L inputs scores L-1 tokens; this one scores L.

Only whole windows are used (a tail shorter than one window is not scored), and every
protocol stops after the window that brings the scored count to ``max_tokens``, so every
length is scored on the leading stretch of the stream (or documents), at least ``max_tokens``
long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

PROTOCOLS = ("nonoverlapping", "sliding", "truncated")


@dataclass(frozen=True)
class Window:
    start: int  # offset in the stream of the window's first token (after BOS, where one is added)
    score_from: int  # index inside the window of the first scored target


def stream_tokens(length: int, bos: bool) -> int:
    """Stream tokens a window of ``length`` positions reads: L + 1, or L after a BOS."""
    return length if bos else length + 1


def resolve_stride(length: int, protocol: str, stride: Optional[int]) -> Optional[int]:
    """The stride actually used at ``length``: None for nonoverlapping, ``stride`` or L/2 for sliding."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}")
    if protocol in ("nonoverlapping", "truncated"):
        if stride is not None:
            # Silently ignoring a stride would report nonoverlapping numbers to someone who
            # asked for sliding ones.
            raise ValueError(
                f"eval.stride is set but eval.protocol={protocol}; "
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
    bos: bool = False,
) -> Iterator[Window]:
    """Windows of ``length`` positions over a stream of ``stream_len`` tokens (nonoverlapping or
    sliding; ``truncated`` windows are ``document_windows``). With ``bos`` they start at 1: BOS
    stands in for the stream's leading separator."""
    step = resolve_stride(length, protocol, stride) or length
    last_start = stream_len - stream_tokens(length, bos)
    first = 1 if bos else 0
    scored, start = 0, first
    while start <= last_start and (max_tokens is None or scored < max_tokens):
        # Targets before index length-step were scored by the previous window.
        score_from = 0 if start == first else length - step
        yield Window(start, score_from)
        scored += length - score_from
        start += step


def document_spans(stream: np.ndarray, separator_id: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of every document of the stream: the tokens between two separators."""
    separators = np.flatnonzero(np.asarray(stream) == separator_id)
    return separators + 1, np.append(separators[1:], len(stream))


def document_windows(
    spans: tuple[np.ndarray, np.ndarray],
    length: int,
    min_tokens: int,
    documents: Optional[int],
    max_tokens: Optional[int],
    bos: bool = False,
) -> Iterator[Window]:
    """``truncated``: one window per document of at least ``min_tokens`` tokens (``length`` or more),
    whose targets are the document's first ``length`` tokens; the first ``documents`` of them (all
    when None), stopping once ``max_tokens`` targets are scored."""
    starts, ends = spans
    kept = np.flatnonzero(ends - starts >= min_tokens)[:documents]
    for i, doc in enumerate(kept):
        if max_tokens is not None and i * length >= max_tokens:
            return
        # without BOS the separator before the document is the window's first input
        yield Window(int(starts[doc]) - (0 if bos else 1), 0)


def count_windows(
    stream_len: int,
    length: int,
    protocol: str,
    stride: Optional[int] = None,
    max_tokens: Optional[int] = None,
) -> int:
    return sum(1 for _ in windows(stream_len, length, protocol, stride, max_tokens))


def protocol_statement(
    cfg: Any, bucket_kind: str, separator_id: int, bos_id: Optional[int]
) -> dict[str, Any]:
    """The protocol of ``cfg`` (``EvalConfig``) in words and numbers, written into every results file;
    ``bos_id``: the token that begins every window, None when none is added."""
    protocol = cfg.protocol.value
    truncated = protocol == "truncated"
    return {
        "name": protocol,
        "stride": cfg.stride
        if protocol == "sliding" and cfg.stride is not None
        else ("length/2" if protocol == "sliding" else None),
        "max_tokens_per_length": cfg.max_tokens,
        "position_buckets": cfg.position_buckets,
        "bucket_kind": bucket_kind,
        "stream": (
            f"validation documents joined by separator id {separator_id}; one separator before the first "
            "document, none after the last"
        ),
        "bos_id": bos_id,
        "bos": (
            f"every window begins with BOS id {bos_id}, then the stream: inputs BOS + stream[s : s+L-1], "
            "targets stream[s : s+L]; windows start after the stream's leading separator, which BOS "
            "stands in for"
            if bos_id is not None
            else "no BOS is added to windows; a window starting mid-document starts mid-text, "
            "as training windows do"
        ),
        "documents": {
            "documents": cfg.documents,
            "min_document_tokens": cfg.min_document_tokens or max(cfg.lengths),
        }
        if truncated
        else None,
        "scored": (
            "each window's every target: the first L tokens of each of the first `documents` validation "
            "documents of at least min_document_tokens tokens, until max_tokens targets are scored"
            if truncated
            else "every target of a scored window position, separators included; the stream's first token "
            "is context only; only whole windows; windows from the stream's start until max_tokens targets "
            "are scored"
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
