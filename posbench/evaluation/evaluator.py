"""Perplexity at each evaluation length, token-weighted, with a per-position loss curve."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from posbench.common.runtime import autocast
from posbench.config import EvalConfig, Precision
from posbench.evaluation.buckets import attention_curves, position_curve
from posbench.evaluation.protocol import (
    Window,
    document_spans,
    document_windows,
    resolve_stride,
    stream_tokens,
    windows,
)
from posbench.model.backends import ByBlocks
from posbench.model.diagnostics import AttentionProbe
from posbench.model.loss import token_nll
from posbench.model.transformer import Transformer


@dataclass
class LengthResult:
    length: int
    protocol: str
    status: str  # "ok" or "n/a"
    stride: Optional[int] = None  # sliding: tokens scored per window after the first
    reason: Optional[str] = None  # why a length is n/a
    nll: Optional[float] = None  # token-weighted mean negative log-likelihood, nats
    ppl: Optional[float] = None  # exp(nll)
    tokens_scored: int = 0
    windows: int = 0
    backend: Optional[str] = None
    wall_time_s: float = 0.0  # scoring the windows, the attention diagnostics' own work left out
    diagnostics_wall_time_s: float = 0.0  # the attention diagnostics' own work
    position_curve: Optional[dict] = None  # {"start", "end", "nll", "tokens"} per bucket
    attention: Optional[dict] = None  # per layer and bucket: entropy and sink weight (diagnostics.py)

    def to_dict(self) -> dict:
        return asdict(self)


def bucket_kind(cfg: EvalConfig) -> str:
    """``eval.bucket_kind``: log | linear."""
    return cfg.bucket_kind.value


def perplexity(nll: float) -> float:
    """exp(nll); inf rather than an OverflowError for a model that has blown up."""
    try:
        return math.exp(nll)
    except OverflowError:
        return math.inf


@torch.no_grad()
def score_windows(
    model: Transformer,
    stream: np.ndarray,
    length: int,
    batch: list[Window],
    device: torch.device,
    probe: Optional[AttentionProbe] = None,
    loss_chunk: int = 0,
    bos_id: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """NLL of every target of a batch of windows and which of them are scored; a ``probe`` rides
    along the forward; ``loss_chunk`` > 0 builds the logits that many tokens at a time
    (``model/loss.py``: the same numbers to fp32 rounding); ``bos_id`` begins every window.
    -> (b, L) float64, (b, L) bool"""
    tokens = window_tokens(stream, length, batch, device, bos_id)
    if loss_chunk:  # the (b, L, V) logits never exist whole: loss_chunk tokens' at a time
        hidden = model(tokens[:, :-1], probe=probe, hidden=True)  # (b, L, D)
        nll = token_nll(hidden, model.lm_head, tokens[:, 1:], loss_chunk)  # (b, L)
    else:
        logits = model(tokens[:, :-1], probe=probe)  # (b, L, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")
    # A separate mask, not NaN sentinels: a diverged model's NaN losses must count, not vanish.
    scored = np.arange(length)[None, :] >= np.array([w.score_from for w in batch])[:, None]
    return nll.double().cpu().numpy(), scored


def window_tokens(
    stream: np.ndarray, length: int, batch: list[Window], device: torch.device, bos_id: Optional[int] = None
) -> torch.Tensor:
    """The inputs and targets of a batch of windows: L + 1 stream tokens, or BOS and L of them.
    -> (b, L + 1) int64"""
    span = stream_tokens(length, bos_id is not None)
    rows = np.stack([np.asarray(stream[w.start : w.start + span], dtype=np.int64) for w in batch])
    if bos_id is not None:
        rows = np.concatenate([np.full((len(batch), 1), bos_id, dtype=np.int64), rows], axis=1)
    return torch.from_numpy(rows).to(device)


def diagnostics_probe(model: Transformer, length: int, cfg: EvalConfig) -> Optional[AttentionProbe]:
    """The probe of the first ``eval.diagnostics_windows`` windows; None when that is 0."""
    if not cfg.diagnostics_windows:
        return None
    return AttentionProbe(model.cfg.n_layers, length, windows=cfg.diagnostics_windows)


def probe_rides_along(model: Transformer, length: int, precision: Precision) -> bool:
    """Whether the scoring forwards can carry the probe: not where evaluation runs the window one
    query block at a time through all layers (``ByBlocks``), which the probe cannot see whole."""
    plan = model.attention_plan(length, needs_grad=False, autocast=precision == Precision.bf16)
    return not isinstance(plan, ByBlocks)


@torch.no_grad()
def attention_diagnostics(
    model: Transformer,
    stream: np.ndarray,
    length: int,
    plan: list[Window],
    cfg: EvalConfig,
    device,
    probe,
    bos_id: Optional[int] = None,
) -> None:
    """Fills ``probe`` with forwards of its own over the first ``eval.diagnostics_windows`` windows
    (where the scoring forwards cannot carry it)."""
    chosen = plan[: cfg.diagnostics_windows]
    for i in range(0, len(chosen), cfg.batch_size):
        tokens = window_tokens(stream, length, chosen[i : i + cfg.batch_size], device, bos_id)
        model(tokens[:, :-1], probe=probe)


def diagnostics_curves(probe: Optional[AttentionProbe], cfg: EvalConfig) -> Optional[dict]:
    """Entropy and sink weight of every layer's attention, by bucket of query position."""
    if probe is None:
        return None
    entropy, sink = probe.mean()
    return attention_curves(
        entropy.numpy(), sink.numpy(), probe.seen[0], cfg.position_buckets, bucket_kind(cfg)
    )


def unavailable_reason(model: Transformer, stream_len: int, length: int, bos: bool = False) -> Optional[str]:
    """Why ``length`` cannot be evaluated (reported as n/a), or None."""
    reason = model.length_limit_reason(length)
    span = stream_tokens(length, bos)
    if reason is None and stream_len < span:
        reason = f"the validation stream has {stream_len} tokens, fewer than one window of {span}"
    return reason


def window_plan(
    stream: np.ndarray, length: int, cfg: EvalConfig, separator_id: Optional[int], bos: bool
) -> list[Window]:
    """The windows ``cfg.protocol`` scores at ``length``."""
    if cfg.protocol.value != "truncated":
        return list(windows(len(stream), length, cfg.protocol.value, cfg.stride, cfg.max_tokens, bos))
    if separator_id is None:
        raise ValueError("eval.protocol=truncated needs the stream's document separator id")
    spans = document_spans(stream, separator_id)
    least = cfg.document_minimum(length)
    return list(document_windows(spans, length, least, cfg.documents, cfg.max_tokens, bos))


def evaluate_length(
    model: Transformer,
    stream: np.ndarray,
    length: int,
    cfg: EvalConfig,
    device: torch.device,
    precision: Precision = Precision.fp32,
    progress: bool = True,
    separator_id: Optional[int] = None,
    bos_id: Optional[int] = None,
) -> LengthResult:
    """Perplexity at ``length`` by ``cfg``'s protocol; ``bos_id`` begins every window (None: no BOS);
    ``separator_id`` divides the stream into documents (``protocol=truncated``)."""
    protocol = cfg.protocol.value
    stride = resolve_stride(length, protocol, cfg.stride)
    reason = unavailable_reason(model, len(stream), length, bos_id is not None)
    started = time.perf_counter()
    plan = [] if reason else window_plan(stream, length, cfg, separator_id, bos_id is not None)
    if reason is None and not plan:  # truncated: no document is long enough
        reason = (
            f"no validation document has {cfg.document_minimum(length)} tokens (eval.min_document_tokens)"
        )
    if reason is not None:
        return LengthResult(length, protocol, "n/a", stride=stride, reason=reason)
    nll_sum, counts = np.zeros(length), np.zeros(length, dtype=np.int64)  # per position in the window
    model.eval()
    probe = diagnostics_probe(model, length, cfg)
    rider = probe if probe is not None and probe_rides_along(model, length, precision) else None
    bar = tqdm(total=len(plan), desc=f"eval L={length}", unit="win", disable=not progress, leave=False)
    for i in range(0, len(plan), cfg.batch_size):
        riding = rider if rider is not None and rider.wants_more() else None
        with autocast(device, precision):
            nll, scored = score_windows(
                model, stream, length, plan[i : i + cfg.batch_size], device, riding, cfg.loss_chunk, bos_id
            )
        nll_sum += np.where(scored, nll, 0.0).sum(axis=0)
        counts += scored.sum(axis=0)
        bar.update(len(scored))
    bar.close()
    scoring_s = time.perf_counter() - started - (0.0 if probe is None else probe.seconds)
    diagnostics_started = time.perf_counter()
    if probe is not None and rider is None:
        with autocast(device, precision):
            attention_diagnostics(model, stream, length, plan, cfg, device, probe, bos_id)
    diagnostics_s = time.perf_counter() - diagnostics_started + (0.0 if rider is None else rider.seconds)
    total = int(counts.sum())
    mean = float(nll_sum.sum() / total)  # token-weighted: every scored target counts once
    return LengthResult(
        length,
        protocol,
        "ok",
        stride=stride,
        nll=mean,
        ppl=perplexity(mean),
        tokens_scored=total,
        windows=len(plan),
        backend=model.attention_plan(length, needs_grad=False, autocast=precision == Precision.bf16).name,
        wall_time_s=scoring_s,
        diagnostics_wall_time_s=diagnostics_s,
        position_curve=position_curve(nll_sum, counts, cfg.position_buckets, bucket_kind(cfg)),
        attention=diagnostics_curves(probe, cfg),
    )


def evaluate_lengths(
    model: Transformer,
    stream: np.ndarray,
    cfg: EvalConfig,
    device: torch.device,
    precision: Precision = Precision.fp32,
    progress: bool = True,
    separator_id: Optional[int] = None,
    bos_id: Optional[int] = None,
) -> list[LengthResult]:
    for length in cfg.lengths:  # a bad stride fails before any length is computed
        resolve_stride(length, cfg.protocol.value, cfg.stride)
    bar = tqdm(cfg.lengths, desc="eval lengths", unit="len", disable=not progress)
    results = []
    for length in bar:
        bar.set_postfix(L=length)
        results.append(
            evaluate_length(model, stream, length, cfg, device, precision, progress, separator_id, bos_id)
        )
    return results
