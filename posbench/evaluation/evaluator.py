"""Perplexity at each evaluation length, token-weighted, with a per-position loss curve."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from posbench.config import EvalConfig, Precision
from posbench.evaluation.protocol import Window, windows
from posbench.model.transformer import Transformer
from posbench.runtime import autocast


@dataclass
class LengthResult:
    length: int
    protocol: str
    status: str  # "ok" or "n/a"
    reason: Optional[str] = None  # why a length is n/a
    nll: Optional[float] = None  # token-weighted mean negative log-likelihood, nats
    ppl: Optional[float] = None  # exp(nll)
    tokens_scored: int = 0
    windows: int = 0
    backend: Optional[str] = None
    wall_time_s: float = 0.0
    position_curve: Optional[dict] = None  # {"start", "end", "nll", "tokens"} per bucket

    def to_dict(self) -> dict:
        return asdict(self)


def bucket_edges(length: int, buckets: int) -> list[int]:
    """Log-spaced edges 0 = e0 < e1 < … < en = length; bucket i holds positions [e_i, e_i+1)."""
    inner = np.unique(np.round(np.geomspace(1, length, buckets)).astype(int))
    return sorted({0, length, *[int(e) for e in inner if 0 < e < length]})


def position_curve(nll_sum: np.ndarray, counts: np.ndarray, buckets: int) -> dict:
    edges = bucket_edges(len(nll_sum), buckets)
    curve: dict[str, list] = {"start": [], "end": [], "nll": [], "tokens": []}
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = int(counts[lo:hi].sum())
        if n:
            curve["start"].append(lo)
            curve["end"].append(hi)
            curve["nll"].append(float(nll_sum[lo:hi].sum() / n))
            curve["tokens"].append(n)
    return curve


@torch.no_grad()
def score_windows(model: Transformer, stream: np.ndarray, length: int, batch: list[Window], device: torch.device) -> torch.Tensor:
    """NLL of every target of a batch of windows, NaN where a target is not scored. -> (b, L) float64"""
    rows = np.stack([np.asarray(stream[w.start : w.start + length + 1], dtype=np.int64) for w in batch])
    tokens = torch.from_numpy(rows).to(device)
    logits = model(tokens[:, :-1])  # (b, L, V)
    nll = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none").double()  # (b, L)
    scored = torch.arange(length, device=device)[None, :] >= torch.tensor([w.score_from for w in batch], device=device)[:, None]
    return nll.masked_fill(~scored, float("nan")).cpu()


def evaluate_length(model: Transformer, stream: np.ndarray, length: int, cfg: EvalConfig, device: torch.device, precision: Precision = Precision.fp32, progress: bool = True) -> LengthResult:
    protocol = cfg.protocol.value
    limit = model.encoding.length_limit_reason(length)
    if limit is None and len(stream) < length + 1:
        limit = f"the validation stream has {len(stream)} tokens, fewer than one window of {length + 1}"
    if limit is not None:
        return LengthResult(length, protocol, "n/a", reason=limit)
    started = time.perf_counter()
    plan = list(windows(len(stream), length, protocol, cfg.stride, cfg.max_tokens))
    nll_sum, counts = np.zeros(length), np.zeros(length, dtype=np.int64)
    model.eval()
    bar = tqdm(total=len(plan), desc=f"eval L={length}", unit="win", disable=not progress, leave=False)
    for i in range(0, len(plan), cfg.batch_size):
        with autocast(device, precision):
            nll = score_windows(model, stream, length, plan[i : i + cfg.batch_size], device).numpy()
        scored = ~np.isnan(nll)
        nll_sum += np.where(scored, nll, 0.0).sum(axis=0)
        counts += scored.sum(axis=0)
        bar.update(nll.shape[0])
    bar.close()
    total = int(counts.sum())
    mean = float(nll_sum.sum() / total)
    return LengthResult(
        length, protocol, "ok", nll=mean, ppl=float(np.exp(mean)), tokens_scored=total, windows=len(plan),
        backend=model.backend_for(length), wall_time_s=time.perf_counter() - started,
        position_curve=position_curve(nll_sum, counts, cfg.position_buckets),
    )


def evaluate_lengths(model: Transformer, stream: np.ndarray, cfg: EvalConfig, device: torch.device, precision: Precision = Precision.fp32, progress: bool = True) -> list[LengthResult]:
    return [evaluate_length(model, stream, n, cfg, device, precision, progress) for n in cfg.lengths]
