"""Attention backends behind one ``attend()``.

- ``sdpa``: ``F.scaled_dot_product_attention``; causal flag when there is no bias, else one
  float mask (bias + causal -inf) for the whole (T, T) square; a learned bias on CPU trains
  through the flash kernel with its own bias gradient (``bias_grad.py``).
- ``blockwise``: query blocks, each attending its causal key prefix with only its
  (H, block, prefix) slice of the bias, fewer rows per block as the prefix grows so that slice
  stays under BLOCK_BIAS_BYTES; memory grows with T, not T².
- ``linear``: for biases linear in distance (ALiBi), the blockwise computation through the
  flash kernel with no mask at all (see ``linear_bias.py``); CPU, no autograd (evaluation).
- ``flex``: FlexAttention with the encoding's elementwise ``flex_bias`` as its ``score_mod``
  (CUDA forward and backward; CPU forward, compiled).
- ``eager``: the plain softmax(QKᵀ·scale + bias)V reference that tests check every path against.

An encoding whose q and k carry decay factors (xPos, ``qk_decay``) has them centred on the window
on every path; ``blockwise`` (and ``linear``) re-centre them on each query block instead, so they
stay finite at any length (``_decayed_blockwise``).

An encoding whose logits depend on the scores themselves (a ``score_mod``, e.g. CoPE) needs them
explicit: ``eager`` for the whole square, ``blockwise`` one query block at a time (sdpa cannot).
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from posbench.model import bias_grad

BiasFn = Callable[[torch.Tensor, torch.Tensor], Optional[torch.Tensor]]  # (q_pos, k_pos) -> (H, Tq, Tk)
DecayFn = Callable[[torch.Tensor, int], torch.Tensor]  # (pos (T,), centre) -> (T, Dh) float64 q factors
ScoreMod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores (B,H,Tq,Tk), scaled q (B,H,Tq,Dh)) -> scores

BACKENDS = ("sdpa", "blockwise", "linear", "flex", "eager")
MASK_BYTES_LIMIT = 256 * 2**20  # a full (H, T, T) fp32 mask above this goes blockwise
BLOCK_BIAS_BYTES = 8 * 2**20  # one blockwise step's (H, rows, prefix) bias stays under this


def choose_backend(requested: str, has_bias: bool, n_heads: int, seq_len: int, needs_scores: bool = False,
                   linear_ok: bool = False) -> str:
    """``auto``: causal SDPA without a bias; with one, a full mask while it is small, else blocks
    (the mask-free ``linear`` path when the bias allows it and ``linear_ok``: CPU, no autograd).
    Explicit scores (``needs_scores``) run ``eager`` while the square is small, else ``blockwise``."""
    fits = n_heads * seq_len * seq_len * 4 <= MASK_BYTES_LIMIT
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(f"model.attention={requested!r} is not available; choose auto or one of {', '.join(BACKENDS)}")
        if needs_scores and requested in ("sdpa", "linear", "flex"):
            return "eager" if fits else "blockwise"
        if requested == "linear" and not linear_ok:
            return "blockwise"  # the flash kernel's log-sum-exp has no autograd; keep exact gradients
        return requested
    if needs_scores:
        return "eager" if fits else "blockwise"
    if not has_bias or fits:
        return "sdpa"
    return "linear" if linear_ok else "blockwise"


def causal_bias(bias: Optional[torch.Tensor], q_pos_idx: torch.Tensor, k_pos_idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bias plus -inf above the diagonal, by index in the window. -> (H or 1, Tq, Tk)"""
    future = k_pos_idx[None, :] > q_pos_idx[:, None]  # (Tq, Tk)
    mask = torch.zeros(future.shape, dtype=dtype, device=future.device).masked_fill(future, float("-inf"))
    return mask[None] if bias is None else bias.to(dtype) + mask[None]


def full_mask(bias_fn: Optional[BiasFn], pos: torch.Tensor, dtype: torch.dtype, distance_only: bool = False) -> Optional[torch.Tensor]:
    """The (1, H, T, T) float mask for the sdpa path, or None for the causal flag. A bias of the
    distance alone over consecutive positions is evaluated once per distance (``distance_table``)
    and laid out as a Toeplitz matrix in one copy: the (H, T, T) work is that copy, and its
    gradient (a sum per diagonal) is all a learned bias scatters back."""
    if bias_fn is None:
        return None
    T = pos.numel()
    if distance_only and consecutive(pos) and T > 1:
        return CausalToeplitz.apply(distance_table(bias_fn, pos, T, dtype))[None]
    idx = torch.arange(T, device=pos.device)
    return causal_bias(bias_fn(pos, pos), idx, idx, dtype)[None]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    bias_fn: Optional[BiasFn],
    scale: float,
    backend: str,
    block: int = 1024,
    mask: Optional[torch.Tensor] = None,
    score_mod: Optional[ScoreMod] = None,
    slopes: Optional[torch.Tensor] = None,
    flex_bias: Optional[Callable] = None,
    distance_only: bool = False,
    decay: Optional[DecayFn] = None,
) -> torch.Tensor:
    """Causal attention over one window. q, k, v (B, H, T, Dh); pos (T,). -> (B, H, T, Dh)

    ``mask`` is the precomputed ``full_mask`` for the sdpa path (shared by all layers).
    ``score_mod`` needs explicit scores: blockwise keeps its blocks, sdpa and eager take one block.
    ``slopes`` (H,): the bias is -slopes·(i - j), which the ``linear`` path uses; ``flex_bias``
    is the encoding's elementwise bias for the ``flex`` path. ``distance_only``: the bias
    depends on q_pos - k_pos alone, so blocks can share one table of it (``_toeplitz_blockwise``).
    ``decay``: the encoding's ``qk_decay``, applied here (re-centred per block on blockwise paths).
    """
    if decay is not None:
        if backend in ("blockwise", "linear") and score_mod is None:
            return _decayed_blockwise(q, k, v, pos, decay, bias_fn, scale, block)
        q, k = scale_qk(q, k, decay(pos, int(pos.min() + pos.max()) // 2))  # centred on the window
    if score_mod is not None:
        return _explicit(q, k, v, pos, bias_fn, scale, block if backend == "blockwise" else q.shape[-2], score_mod)
    if backend == "eager":
        return _eager(q, k, v, pos, bias_fn, scale)
    if backend == "linear" and slopes is not None:
        from posbench.model.linear_bias import linear_bias_attention

        return linear_bias_attention(q, k, v, pos, slopes, scale, block)
    if backend == "flex":
        from posbench.model.flex import distance_bias_table, flex_attend

        table = None
        if flex_bias is None and bias_fn is not None:
            if not distance_only:
                raise ValueError("this encoding's bias depends on more than the distance and has no FlexAttention "
                                 "score_mod; use model.attention=auto")
            table = distance_bias_table(bias_fn, pos)
        return flex_attend(q, k, v, pos, flex_bias, scale, table)
    if backend in ("blockwise", "linear") and bias_fn is not None:
        if distance_only and consecutive(pos):
            return _toeplitz_blockwise(q, k, v, pos, bias_fn, scale, block)
        return _blockwise(q, k, v, pos, bias_fn, scale, block)
    if bias_fn is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if mask is None:
        mask = full_mask(bias_fn, pos, q.dtype, distance_only)
    mask = mask.to(q.dtype)
    if bias_grad.applies(q, mask):  # CPU: the fused kernel, causal-skipping, with the bias gradient (bias_grad.py)
        return bias_grad.flash_bias_attention(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def block_rows(block: int, n_heads: int, end: int) -> int:
    """Query rows of one ``_blockwise`` step ending near ``end``: ``block``, fewer where its
    (H, rows, end) fp32 bias would pass BLOCK_BIAS_BYTES (memory stays linear in length)."""
    return max(1, min(block, BLOCK_BIAS_BYTES // (4 * n_heads * end)))


def query_blocks(seq_len: int, block: int, n_heads: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each query block, rows from ``block_rows``: shrinking as the prefix grows."""
    start = 0
    while start < seq_len:
        end = min(start + block_rows(block, n_heads, min(start + block, seq_len)), seq_len)
        yield start, end
        start = end


def block_causal_bias(bias_fn: BiasFn, pos: torch.Tensor, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
    """The bias of queries start..end-1 over keys 0..end-1, -inf on their future. -> (1, H, b, end)"""
    bias = bias_fn(pos[start:end], pos[:end]).to(dtype)  # (H, b, end), a fresh tensor per block
    bias = bias.clone() if bias._base is not None or not bias.is_contiguous() else bias
    future = torch.ones(end - start, end - start, dtype=torch.bool, device=pos.device).triu(1)
    bias[:, :, start:].masked_fill_(future, float("-inf"))  # only the diagonal square has a future
    return bias[None]


class CausalToeplitz(torch.autograd.Function):
    """``distance_table``'s u (H, 2T - 1), u[h, t] the bias at distance (T - 1) - t, laid out as the
    (H, T, T) matrix of distance i - j; its gradient is the sum of each diagonal on or below the main
    one. The future's entries (t >= T) get none: in ``distance_table`` they are the constant -inf."""

    @staticmethod
    def forward(ctx, table):
        heads, T = table.shape[0], (table.shape[1] + 1) // 2
        hankel = table.as_strided((heads, T, T), (table.stride(0), 1, 1))  # [h, a, j] = u[h, a + j]
        return hankel.flip(1)  # [h, i, j] = u[h, T - 1 - i + j], a copy

    @staticmethod
    def backward(ctx, grad):
        """Rows of a (T, 2T) buffer holding grad on their right half, read with a row stride of
        2T + 1: column c then walks the diagonal of distance T - c (the left half pads with zeros)."""
        heads, T = grad.shape[0], grad.shape[-1]
        padded = grad.new_empty(heads, T, 2 * T)
        padded[:, :, :T].zero_()
        padded[:, :, T:] = grad
        sums = padded.as_strided((heads, T, T + 1), (2 * T * T, 2 * T + 1, 1)).sum(1)  # [h, c]: distance T - c
        grad_table = grad.new_zeros(heads, 2 * T - 1)
        grad_table[:, :T] = sums[:, 1:]  # t = c - 1: distances T - 1 down to 0; the future has none
        return grad_table


def _blockwise(q, k, v, pos, bias_fn: BiasFn, scale: float, block: int) -> torch.Tensor:
    outputs = []
    for start, end in query_blocks(q.shape[-2], block, q.shape[1]):
        mask = block_causal_bias(bias_fn, pos, start, end, q.dtype)
        outputs.append(
            F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], attn_mask=mask, scale=scale)
        )
    return torch.cat(outputs, dim=2)


def consecutive(pos: torch.Tensor) -> bool:
    return pos.numel() < 2 or bool((pos[1:] - pos[:-1] == 1).all())


def distance_table(bias_fn: BiasFn, pos: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """u[h, t] = bias at distance d = (T - 1) - t for t < T + block - 1, i.e. d runs from
    T - 1 down to -(block - 1); -inf where d < 0 (the causal mask). -> (H, T + block - 1)"""
    T = pos.numel()
    distances = torch.arange(T - 1, -block, -1, device=pos.device)  # (T + block - 1,)
    values = bias_fn(pos[0] + distances.clamp(min=0), pos[:1])[:, :, 0].to(dtype)  # (H, n): query at d, key at 0
    return values.masked_fill(distances[None, :] < 0, float("-inf")).contiguous()


def _toeplitz_blockwise(q, k, v, pos, bias_fn: BiasFn, scale: float, block: int) -> torch.Tensor:
    """``_blockwise`` for a bias of the distance alone: one (H, T + block) table per call, and each
    block's (H, b, e) bias a strided view of it, with no per-block bias arithmetic.

    For rows in reverse order (r' = b - 1 - r, query index i = e - 1 - r') and key j, the
    distance is e - 1 - r' - j, which sits at t = (T - e) + r' + j of the table: unit strides."""
    T, H = q.shape[-2], q.shape[1]
    table = distance_table(bias_fn, pos, block, q.dtype)
    outputs = []
    for start in range(0, T, block):
        end = min(start + block, T)
        bias = table.as_strided((H, end - start, end), (table.stride(0), 1, 1), table.storage_offset() + T - end)
        q_rev = q[:, :, start:end].flip(2)
        out = F.scaled_dot_product_attention(q_rev, k[:, :, :end], v[:, :, :end], attn_mask=bias[None], scale=scale)
        outputs.append(out.flip(2))
    return torch.cat(outputs, dim=2)


def scale_qk(q: torch.Tensor, k: torch.Tensor, factors: torch.Tensor, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """q times ``factors`` (T, Dh), k divided by them; key factors below ``floor`` become 0. q may
    hold only the last rows (a query block ending at T), k all T."""
    inverse = factors.reciprocal()
    inverse = inverse.masked_fill(inverse < floor, 0.0)
    return q * factors[-q.shape[-2]:].to(q.dtype), k * inverse.to(k.dtype)


DECAY_FLOOR = 1e-30  # a key factor below this multiplies a query factor <= 1: the product is negligible


def _decayed_blockwise(q, k, v, pos, decay: DecayFn, bias_fn: Optional[BiasFn], scale: float, block: int) -> torch.Tensor:
    """Causal attention with decay factors centred on each query block's first position: a query's
    factor is then at most 1 and at least zeta^(block/scale_base), a key's grows only inside the
    block's own square, and keys far behind get factors that underflow; below DECAY_FLOOR they are
    set to 0 (their products are < 1e-30, and fp32 subnormals would slow the kernels). Blocks with
    a bias follow ``query_blocks``; without one, CPU evaluation uses the mask-free flash calls of
    ``linear_bias.prefix_and_diagonal``, elsewhere a boolean causal mask per block."""
    from posbench.model import linear_bias

    T, H = q.shape[-2], q.shape[1]
    spans = query_blocks(T, block, H) if bias_fn is not None else ((s, min(s + block, T)) for s in range(0, T, block))
    outputs = []
    for start, end in spans:
        q_b, k_b = scale_qk(q[:, :, start:end], k[:, :, :end], decay(pos[:end], int(pos[start])), DECAY_FLOOR)
        if bias_fn is None and linear_bias.available(q):
            out = linear_bias.prefix_and_diagonal(q_b, k_b, v[:, :, :end], scale)
        else:
            mask = (block_causal_bias(bias_fn, pos, start, end, q.dtype) if bias_fn is not None
                    else torch.ones(end - start, end, dtype=torch.bool, device=q.device).tril(start))
            out = F.scaled_dot_product_attention(q_b, k_b, v[:, :, :end], attn_mask=mask, scale=scale)
        outputs.append(out)
    return torch.cat(outputs, dim=2)


def _eager(q, k, v, pos, bias_fn: Optional[BiasFn], scale: float) -> torch.Tensor:
    idx = torch.arange(q.shape[-2], device=q.device)
    bias = None if bias_fn is None else bias_fn(pos, pos)
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, T, T)
    scores = scores + causal_bias(bias, idx, idx, torch.float32)[None]
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def _explicit(q, k, v, pos, bias_fn: Optional[BiasFn], scale: float, block: int, score_mod: ScoreMod) -> torch.Tensor:
    """The eager computation, one query block (and its causal key prefix) at a time, with the
    encoding's ``score_mod`` applied to each block's fp32 scores; blocks shrink with the prefix
    like ``_blockwise``'s (here the (B, H, rows, prefix) scores are what the budget bounds)."""
    seq_len = q.shape[-2]
    idx = torch.arange(seq_len, device=q.device)
    outputs = []
    for start, end in query_blocks(seq_len, block, q.shape[0] * q.shape[1]):  # scores per (batch, head)
        bias = None if bias_fn is None else bias_fn(pos[start:end], pos[:end])
        q_scaled = q[:, :, start:end].float() * scale  # (B, H, b, Dh)
        scores = q_scaled @ k[:, :, :end].float().transpose(-2, -1)  # (B, H, b, end)
        scores = score_mod(scores + causal_bias(bias, idx[start:end], idx[:end], torch.float32)[None], q_scaled)
        outputs.append((scores.softmax(dim=-1) @ v[:, :, :end].float()).to(q.dtype))
    return torch.cat(outputs, dim=2)
