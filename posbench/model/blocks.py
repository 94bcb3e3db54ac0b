"""Attention one query block at a time over its causal key prefix: memory grows with T, not T².

Blocks have ``block`` rows, fewer where one block's (H, rows, prefix) bias (or CoPE's explicit
(B, H, rows, prefix) scores) would pass BLOCK_BIAS_BYTES (``query_blocks``). A bias of the distance
alone is one shared table every block views (``toeplitz_blockwise``); a q/k decay (xPos) is
re-centred on each block (``decayed_blockwise``), so its factors stay finite at any length.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from posbench.encodings.scores import BiasFn, DecayFn, ScoreMod
from posbench.model import linear_bias
from posbench.model.masks import block_causal_bias, causal_bias, distance_table

BLOCK_BIAS_BYTES = 8 * 2**20  # one blockwise step's (H, rows, prefix) bias stays under this


def block_rows(block: int, n_heads: int, end: int, budget: Optional[int] = None) -> int:
    """Query rows of one ``blockwise`` step ending near ``end``: ``block``, fewer where its
    (H, rows, end) fp32 bias would pass ``budget`` bytes (default BLOCK_BIAS_BYTES; memory stays
    linear in length)."""
    budget = BLOCK_BIAS_BYTES if budget is None else budget
    return max(1, min(block, budget // (4 * n_heads * end)))


def query_blocks(
    seq_len: int, block: int, n_heads: int, budget: Optional[int] = None
) -> Iterator[tuple[int, int]]:
    """(start, end) of each query block, rows from ``block_rows``: shrinking as the prefix grows."""
    start = 0
    while start < seq_len:
        end = min(start + block_rows(block, n_heads, min(start + block, seq_len), budget), seq_len)
        yield start, end
        start = end


def blockwise(q, k, v, pos, bias_fn: BiasFn, scale: float, block: int) -> torch.Tensor:
    outputs = []
    for start, end in query_blocks(q.shape[-2], block, q.shape[1]):
        mask = block_causal_bias(bias_fn, pos, start, end, q.dtype)
        outputs.append(
            F.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, :end], v[:, :, :end], attn_mask=mask, scale=scale
            )
        )
    return torch.cat(outputs, dim=2)


def toeplitz_blockwise(q, k, v, pos, bias_fn: BiasFn, scale: float, block: int) -> torch.Tensor:
    """``blockwise`` for a bias of the distance alone: one (H, T + block) table per call, and each
    block's (H, b, e) bias a strided view of it, with no per-block bias arithmetic.

    For rows in reverse order (r' = b - 1 - r, query index i = e - 1 - r') and key j, the
    distance is e - 1 - r' - j, which sits at t = (T - e) + r' + j of the table: unit strides."""
    T, H = q.shape[-2], q.shape[1]
    table = distance_table(bias_fn, pos, block, q.dtype)
    outputs = []
    for start in range(0, T, block):
        end = min(start + block, T)
        bias = table.as_strided(
            (H, end - start, end), (table.stride(0), 1, 1), table.storage_offset() + T - end
        )
        q_rev = q[:, :, start:end].flip(2)
        out = F.scaled_dot_product_attention(
            q_rev, k[:, :, :end], v[:, :, :end], attn_mask=bias[None], scale=scale
        )
        outputs.append(out.flip(2))
    return torch.cat(outputs, dim=2)


def key_bias_blockwise(
    q,
    k,
    v,
    pos,
    bias_fn: Optional[BiasFn],
    key_bias: torch.Tensor,
    scale: float,
    block: int,
    mask_free: bool = False,
) -> torch.Tensor:
    """Causal attention plus a bias per key, key_bias (B, H, T) (FoX's −c_j), by query blocks: alone,
    through the kernels with the bias as q/k channels (``key_bias_channels``); with another bias,
    one mask per block: a row constant does not change a softmax, so query i adds key_bias_j −
    key_bias_i (FoX: c_i − c_j = D_ij, the paper's own form), computed in fp32: 0 on the diagonal
    and small near it, where the weights are, so it keeps its precision in bf16, and very negative
    far behind, where the weights vanish anyway. A block's (B, H, rows, prefix) mask stays under
    BLOCK_BIAS_BYTES."""
    if bias_fn is None:
        return key_bias_channels(q, k, v, key_bias, scale, block, mask_free)
    B, H, T, _ = q.shape
    outputs = []
    for start, end in query_blocks(T, block, B * H):
        shifted = key_bias[:, :, None, :end] - key_bias[:, :, start:end, None]  # (B, H, b, end): D_ij
        mask = shifted + block_causal_bias(bias_fn, pos, start, end, torch.float32)
        outputs.append(
            F.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, :end], v[:, :, :end], attn_mask=mask.to(q.dtype), scale=scale
            )
        )
    return torch.cat(outputs, dim=2)


def key_bias_channels(
    q, k, v, key_bias: torch.Tensor, scale: float, block: int, mask_free: bool
) -> torch.Tensor:
    """Causal attention plus a bias per key, key_bias (B, H, T), with no float mask: the bias rides
    in an extra q/k channel (q gets 1, k gets the bias over ``scale``; v gets 0), so the kernels'
    fused forward and backward run, its gradient reaching key_bias through k's channel. Per query
    block s..e the bias is re-centred on the block's first query, key_bias_j − key_bias_s, which
    keeps the channel values near the block's queries (where the weights are) within the block's
    own decay, not the window's. A block attends its causal key prefix through a boolean mask
    (rows shrink so its (rows, prefix) float form stays under BLOCK_BIAS_BYTES; the first block
    takes the causal flag), or, ``mask_free`` (CPU fp32 evaluation), as the flash calls of
    ``linear_bias.prefix_and_diagonal``. It runs in fp32 under bf16 autocast too: the kernels'
    bf16 backward rounds dS to bf16, and the bias gradient, a sum of dS over queries whose terms
    cancel, would lose most of its digits (the CPU kernel is barely faster in bf16). Off CPU the
    head dimension is padded to a multiple of 8 for the fused kernels."""
    T, D = q.shape[-2:]
    spans = ((s, min(s + block, T)) for s in range(0, T, block)) if mask_free else query_blocks(T, block, 1)
    with torch.autocast(q.device.type, enabled=False):
        q32, k32, v32 = q.float(), k.float(), v.float()
        out = [key_bias_block(q32, k32, v32, key_bias, scale, s, e, mask_free) for s, e in spans]
    return torch.cat(out, dim=2)[..., :D].to(q.dtype)


def key_bias_block(q, k, v, key_bias, scale: float, start: int, end: int, mask_free: bool) -> torch.Tensor:
    """One query block of ``key_bias_channels``. -> (B, H, end − start, Dh + its channel width)"""
    shifted = (key_bias[:, :, :end] - key_bias[:, :, start : start + 1]).float() / scale
    q_b, k_b, v_b = with_bias_channel(q[:, :, start:end], k[:, :, :end], v[:, :, :end], shifted)
    if mask_free:
        return linear_bias.prefix_and_diagonal(q_b, k_b, v_b, scale)
    if start == 0:
        return F.scaled_dot_product_attention(q_b, k_b, v_b, is_causal=True, scale=scale)
    causal = torch.ones(end - start, end, dtype=torch.bool, device=q.device).tril(start)
    return F.scaled_dot_product_attention(q_b, k_b, v_b, attn_mask=causal, scale=scale)


def with_bias_channel(q_b, k_b, v_b, bias: torch.Tensor):
    """q_b (B, H, b, Dh), k_b, v_b (B, H, e, Dh) with the key bias (B, H, e) as an extra channel:
    q's 1, k's the bias, v's 0; off CPU padded to a multiple of 8 wide."""
    width = 1 + (0 if q_b.device.type == "cpu" else -(q_b.shape[-1] + 1) % 8)
    ones = F.pad(q_b.new_ones(1), (0, width - 1)).expand(*q_b.shape[:-1], width)
    return (
        torch.cat((q_b, ones), dim=-1),
        torch.cat((k_b, F.pad(bias[..., None], (0, width - 1))), dim=-1),
        F.pad(v_b, (0, width)),
    )


def scale_qk(
    q: torch.Tensor, k: torch.Tensor, factors: torch.Tensor, floor: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """q times ``factors`` (T, Dh), k divided by them; key factors below ``floor`` become 0. q may
    hold only the last rows (a query block ending at T), k all T."""
    inverse = factors.reciprocal()
    inverse = inverse.masked_fill(inverse < floor, 0.0)
    return q * factors[-q.shape[-2] :].to(q.dtype), k * inverse.to(k.dtype)


DECAY_FLOOR = 1e-30  # a key factor below this multiplies a query factor <= 1: the product is negligible


def decayed_blockwise(
    q, k, v, pos, decay: DecayFn, bias_fn: Optional[BiasFn], scale: float, block: int, mask_free: bool
) -> torch.Tensor:
    """Causal attention with decay factors centred on each query block's first position: a query's
    factor is then at most 1 and at least zeta^(block/scale_base), a key's grows only inside the
    block's own square, and keys far behind get factors that underflow; below DECAY_FLOOR they are
    set to 0 (their products are < 1e-30, and fp32 subnormals would slow the kernels). Blocks with
    a bias follow ``query_blocks``; without one, ``mask_free`` (CPU evaluation) takes the flash
    calls of ``linear_bias.prefix_and_diagonal``, else a boolean causal mask per block."""
    T, H = q.shape[-2], q.shape[1]
    spans = (
        query_blocks(T, block, H)
        if bias_fn is not None
        else ((s, min(s + block, T)) for s in range(0, T, block))
    )
    outputs = []
    for start, end in spans:
        q_b, k_b = scale_qk(q[:, :, start:end], k[:, :, :end], decay(pos[:end], int(pos[start])), DECAY_FLOOR)
        if bias_fn is None and mask_free:
            out = linear_bias.prefix_and_diagonal(q_b, k_b, v[:, :, :end], scale)
        else:
            mask = (
                block_causal_bias(bias_fn, pos, start, end, q.dtype)
                if bias_fn is not None
                else torch.ones(end - start, end, dtype=torch.bool, device=q.device).tril(start)
            )
            out = F.scaled_dot_product_attention(q_b, k_b, v[:, :, :end], attn_mask=mask, scale=scale)
        outputs.append(out)
    return torch.cat(outputs, dim=2)


def explicit(
    q, k, v, pos, bias_fn: Optional[BiasFn], scale: float, block: int, score_mod: ScoreMod, layer: int
) -> torch.Tensor:
    """The eager computation, one query block (and its causal key prefix) at a time, with the
    encoding's ``score_mod`` applied to each block's fp32 scores; blocks shrink with the prefix
    like ``blockwise``'s (here the (B, H, rows, prefix) scores are what the budget bounds)."""
    seq_len = q.shape[-2]
    idx = torch.arange(seq_len, device=q.device)
    outputs = []
    for start, end in query_blocks(seq_len, block, q.shape[0] * q.shape[1]):  # scores per (batch, head)
        bias = None if bias_fn is None else bias_fn(pos[start:end], pos[:end])
        q_scaled = q[:, :, start:end].float() * scale  # (B, H, b, Dh)
        scores = q_scaled @ k[:, :, :end].float().transpose(-2, -1)  # (B, H, b, end)
        scores = score_mod(
            scores + causal_bias(bias, idx[start:end], idx[:end], torch.float32)[None], q_scaled, layer
        )
        outputs.append((scores.softmax(dim=-1) @ v[:, :, :end].float()).to(q.dtype))
    return torch.cat(outputs, dim=2)
