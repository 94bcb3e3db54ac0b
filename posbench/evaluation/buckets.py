"""Per-position loss: mean NLL by bucket of position inside the window.

A model that breaks past its training length shows it here first: the loss of positions
beyond the training length rises while the earlier positions stay where they were.
``log`` buckets give equal room to every octave of context (short contexts are where the
loss falls fastest); ``linear`` buckets are equal widths, for reading off a position.
"""

from __future__ import annotations

import itertools

import numpy as np

BUCKET_KINDS = ("log", "linear")


def bucket_edges(length: int, buckets: int, kind: str = "log") -> list[int]:
    """Edges 0 = e0 < e1 < … < en = length; bucket i holds positions [e_i, e_i+1).

    Rounding merges buckets narrower than one position, so there may be fewer than ``buckets``.
    """
    if buckets < 1:
        raise ValueError(f"eval.position_buckets must be at least 1, got {buckets}")
    if kind == "log":
        # [0, 1) on its own, then log-spaced edges from position 1 to the window's end.
        inner = np.geomspace(1, length, buckets) if buckets > 1 else np.array([length])
    elif kind == "linear":
        inner = np.linspace(0, length, buckets + 1)
    else:
        raise ValueError(f"unknown bucket kind {kind!r}; choose {' or '.join(BUCKET_KINDS)}")
    edges = {0, length, *(int(e) for e in np.round(inner) if 0 < e < length)}
    return sorted(edges)


def position_curve(
    nll_sum: np.ndarray, counts: np.ndarray, buckets: int, kind: str = "log"
) -> dict[str, list]:
    """Bucketed mean NLL from per-position sums and counts, each (L,).

    -> {"start", "end", "nll", "tokens"}, one entry per bucket holding scored targets; the
    buckets cover every position, so the token-weighted mean of "nll" is the overall NLL.
    """
    edges = bucket_edges(len(nll_sum), buckets, kind)
    curve: dict[str, list] = {"start": [], "end": [], "nll": [], "tokens": []}
    for lo, hi in itertools.pairwise(edges):
        n = int(counts[lo:hi].sum())
        if n:  # an empty bucket has no mean; with at least one window none is empty
            curve["start"].append(lo)
            curve["end"].append(hi)
            curve["nll"].append(float(nll_sum[lo:hi].sum() / n))
            curve["tokens"].append(n)
    return curve


def attention_curves(
    entropy: np.ndarray, sink: np.ndarray, windows: int, buckets: int, kind: str = "log"
) -> dict[str, list]:
    """Per-layer means over each bucket of query positions, from per-position means (layers, L).

    -> {"start", "end", "entropy", "sink", "uniform_entropy", "windows"}; ``entropy`` and ``sink``
    hold one list per layer; ``uniform_entropy`` is ln(position + 1) averaged over the bucket, the
    entropy of attention spread evenly over every key a query sees (the ceiling)."""
    edges = bucket_edges(entropy.shape[1], buckets, kind)
    uniform = np.log(np.arange(entropy.shape[1]) + 1.0)
    spans = list(itertools.pairwise(edges))
    return {
        "start": [lo for lo, _ in spans],
        "end": [hi for _, hi in spans],
        "entropy": [[float(layer[lo:hi].mean()) for lo, hi in spans] for layer in entropy],
        "sink": [[float(layer[lo:hi].mean()) for lo, hi in spans] for layer in sink],
        "uniform_entropy": [float(uniform[lo:hi].mean()) for lo, hi in spans],
        "windows": windows,
    }
