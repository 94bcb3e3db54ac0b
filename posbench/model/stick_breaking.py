"""The attention path of stick-breaking attention (``encodings/stick_breaking.py``), one query block
at a time, its keys in chunks from the nearest backwards, in log space with explicit fp32 logits:

    log A_ij = log σ(z_ij) + Σ_{j<k<i} log σ(−z_ik),

the inner sum a cumulative sum taken from the query backwards (the nearest keys first, where the
weights are, so fp32 keeps them exact), carried from chunk to chunk. Weights below PROB_FLOOR are
exactly 0 (``underflow.exp_or_zero``); once the carried sum is below EXP_FLOOR for every query of
a block, so is every farther key's log-weight, and its weight and gradient are 0: the block stops
there. How far that is depends on the model (every nearer key that takes part of the stick
shortens it); at worst it is the whole causal prefix. A chunk's (B, H, rows, keys) tensors stay
under the blockwise budget, so memory is linear in the window; in training too: the backward
recomputes the weights chunk by chunk (``StickBreaking``). ``stick_breaking_weights`` gives a
block's weights over its whole prefix at once: the eager path, and the tests' reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posbench.model.blocks import BLOCK_BIAS_BYTES
from posbench.model.underflow import EXP_FLOOR, exp_or_zero

TENSORS_PER_BLOCK = 4  # (B, H, rows, keys) fp32 tensors alive at once, for the block budget
CHUNK_ROWS = 128  # query rows per block at most (``chunk_shape``)


def broken_sticks(q: torch.Tensor, k: torch.Tensor, scale: float, start: int, first: int = 0, carry=0.0):
    """The logits z, the mask of earlier keys (j < i; None where every key is earlier than every
    query), log(1 − β) summed over this chunk, and A_ij of queries start..start+b-1 over keys
    first..first+n-1, given ``carry``: log(1 − β) summed over the nearer keys.
    q (B, H, b, Dh), k (B, H, n, Dh) -> (B, H, b, n), (b, n) bool or None, (B, H, b, 1), (B, H, b, n)"""
    b, n = q.shape[-2], k.shape[-2]
    with torch.autocast(q.device.type, enabled=False):  # fp32 logits under bf16 autocast too
        z = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, b, n)
    earlier = None
    if first + n > start:  # keys at or after some query: masked
        earlier = torch.ones(b, n, dtype=torch.bool, device=q.device).tril(start - first - 1)
    log_keep = F.logsigmoid(-z)  # log(1 − β)
    if earlier is not None:
        log_keep.masked_fill_(~earlier, 0.0)  # 0 where nothing breaks
    # Σ_{j<k<i} log(1 − β_ik): log_keep summed over keys after j, from the chunk's right end, plus carry
    after = log_keep.flip(-1).cumsum(-1).flip(-1)
    chunk_sum = after[..., :1].clone()
    log_weights = after.sub_(log_keep).add_(carry).add_(F.logsigmoid(z))
    if earlier is not None:
        log_weights.masked_fill_(~earlier, EXP_FLOOR)  # weight 0
    return z, earlier, chunk_sum, exp_or_zero(log_weights)


def stick_breaking_weights(q: torch.Tensor, k: torch.Tensor, scale: float, start: int) -> torch.Tensor:
    """A_ij of queries start..end-1 (end = start + b) over keys 0..end-1, and the remainder
    1 − Σ_j A_ij on each query's own key. q (B, H, b, Dh), k (B, H, end, Dh) -> (B, H, b, end) fp32"""
    b, end = q.shape[-2], k.shape[-2]
    weights = broken_sticks(q, k, scale, start)[-1]
    remainder = (1 - weights.sum(-1, keepdim=True)).clamp(min=0)  # (B, H, b, 1): what no earlier key took
    own = torch.zeros(b, end, device=q.device)
    own[torch.arange(b), torch.arange(b) + start] = 1.0  # query i's own key
    return weights + remainder * own


def key_chunks(start: int, end: int, width: int):
    """(first, last + 1) of the key chunks of queries start..end-1, from the query block backwards:
    the first holds the block's own keys (width >= end - start)."""
    last = end
    while last > 0:
        first = max(0, last - width)
        yield first, last
        last = first


def block_forward(q, k, v, scale: float, start: int, width: int, out: torch.Tensor):
    """Queries start..start+b-1 (q is theirs) over keys 0..start+b-1 of k, v, into ``out``; stops
    at the first chunk after which every query's carried sum is below EXP_FLOOR.
    -> the weights' sums (B, H, b, 1), and each chunk visited with the carry it was given"""
    total, visited = q.new_zeros(*q.shape[:-1], 1), []
    carry = q.new_zeros(*q.shape[:-1], 1)
    end = start + q.shape[-2]
    for first, last in key_chunks(start, end, width):
        visited.append((first, last, carry))
        _, _, chunk_sum, weights = broken_sticks(q, k[:, :, first:last], scale, start, first, carry)
        out += weights @ v[:, :, first:last]
        total += weights.sum(-1, keepdim=True)
        carry = carry + chunk_sum
        if carry.max() <= EXP_FLOOR:  # every farther key's weight is exactly 0
            break
    out += (1 - total).clamp(min=0) * v[:, :, start:end]  # the remainder on each query's own value
    return total, visited


def block_backward(q, k, v, d_out, scale: float, start: int, total, visited, grads) -> None:
    """One query block's share of dq, dk, dv (``grads``, added to in place), chunk by chunk from
    the farthest visited: see ``StickBreaking``."""
    dq, dk, dv = grads
    end = start + q.shape[-2]
    remainder = 1 - total  # (B, H, b, 1)
    own_term = (d_out * v[:, :, start:end]).sum(-1, keepdim=True) * (remainder > 0)
    farther = torch.zeros_like(total)  # Σ G over the farther keys
    for first, last, carry in reversed(visited):
        k_c, v_c = k[:, :, first:last], v[:, :, first:last]
        z, earlier, _, weights = broken_sticks(q, k_c, scale, start, first, carry)  # recomputed
        grads_c = torch.matmul(d_out, v_c.transpose(-2, -1)).sub_(own_term).mul_(weights)  # G
        cumulative = grads_c.cumsum(-1).add_(farther)  # C
        farther = cumulative[..., -1:]
        d_z = grads_c.sub_(torch.sigmoid(z).mul_(cumulative))  # G − β·C (0 where no key breaks)
        if earlier is not None:
            d_z.masked_fill_(~earlier, 0.0)
        d_z.mul_(scale)
        dq[:, :, start:end] += torch.matmul(d_z, k_c)
        dk[:, :, first:last] += torch.matmul(d_z.transpose(-2, -1), q)
        dv[:, :, first:last] += torch.matmul(weights.transpose(-2, -1), d_out)
    dv[:, :, start:end] += remainder.clamp(min=0) * d_out  # each query's own value


def by_blocks(q, k, v, scale: float, rows: int, width: int):
    """The forward of every query block. -> output (B, H, T, Dh), [(start, weight sums, chunks visited)]"""
    out, blocks = torch.zeros_like(q), []
    for start in range(0, q.shape[-2], rows):
        end = min(start + rows, q.shape[-2])
        blocks.append(
            (start, *block_forward(q[:, :, start:end], k, v, scale, start, width, out[:, :, start:end]))
        )
    return out, blocks


class StickBreaking(torch.autograd.Function):
    """Stick-breaking attention of a whole window by query blocks of ``rows``, fp32, with its own
    backward: each block's weights are recomputed from q and k chunk by chunk, so nothing
    (rows, prefix)-sized is kept between forward and backward. With G = dA ⊙ A and C its cumulative
    sum over keys (j ≤ k, carried from the farthest chunk visited, beyond which G is 0),
    differentiating log A_ij = log σ(z_ij) + Σ_{j<k<i} log σ(−z_ik) gives dz_ik = G_ik − β_ik·C_ik;
    dA_ij = dO_i·v_j minus dO_i·v_i (the remainder, 1 − Σ_j A_ij, while it is not clamped at 0)."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float, rows: int, width: int):
        out, ctx.blocks = by_blocks(q, k, v, scale, rows, width)
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v = ctx.saved_tensors
        grads = (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v))
        for start, total, visited in ctx.blocks:
            end = start + total.shape[-2]
            block_backward(
                q[:, :, start:end], k, v, d_out[:, :, start:end], ctx.scale, start, total, visited, grads
            )
        return (*grads, None, None, None)


def chunk_shape(batch_heads: int, block: int, budget: int) -> tuple[int, int]:
    """Query rows per block (up to ``block`` and CHUNK_ROWS) and keys per chunk (twice as many)
    whose (B, H, rows, keys) fp32 tensors stay under ``budget`` bytes. Small chunks find the stop
    sooner; on the 2-core Xeon a training step's attention (B·H = 16, T = 2048) took the same time
    with 64 x 64 to 128 x 256 chunks, and longer with 32-row blocks."""
    per_entry = 4 * batch_heads * TENSORS_PER_BLOCK  # bytes per (row, key) of a chunk
    rows = min(block, CHUNK_ROWS)
    while rows > 1 and per_entry * rows * 2 * rows > budget:
        rows //= 2
    return rows, 2 * rows


def stick_breaking_attention(
    q, k, v, scale: float, block: int, budget: int = BLOCK_BIAS_BYTES
) -> torch.Tensor:
    """By query blocks of up to ``block`` rows, their keys in chunks (``chunk_shape``) under
    ``budget`` bytes. q, k, v (B, H, T, Dh) -> (B, H, T, Dh)"""
    B, H = q.shape[:2]
    rows, width = chunk_shape(B * H, block, budget)
    with torch.autocast(q.device.type, enabled=False):
        q32, k32, v32 = q.float(), k.float(), v.float()
        if torch.is_grad_enabled():
            return StickBreaking.apply(q32, k32, v32, scale, rows, width).to(q.dtype)
        return by_blocks(q32, k32, v32, scale, rows, width)[0].to(q.dtype)  # evaluation


def whole_window_attention(q, k, v, scale: float) -> torch.Tensor:
    """The eager path: every weight at once, autograd through them. q, k, v (B, H, T, Dh) -> (B, H, T, Dh)"""
    with torch.autocast(q.device.type, enabled=False):
        return (stick_breaking_weights(q.float(), k.float(), scale, 0) @ v.float()).to(q.dtype)
