"""Exact attention with a bias linear in distance, -m_h·(i - j) (ALiBi), through the flash kernel.

Softmax ignores a constant added to a whole row, so for queries of a block that starts at
position s the bias -m_h·(i - j) may be replaced by m_h·(j - s): it depends on the key alone
and rides in one extra q/k channel (q gets 1, k gets m_h·(j - s)/scale). Each query block then
takes two flash-kernel calls with no mask tensor at all: the keys before the block (every one
visible) and the block's own causal square. The two partial softmaxes are merged with their
log-sum-exps. Re-centring on s keeps the added logits small where the weights are large (near
the diagonal), so fp32 rounding does not grow with the window (tested against fp64 at 64K
positions); far keys get large negative logits, where their weights vanish anyway.

CPU, forward only (the kernel's log-sum-exp output is what makes the merge possible).
"""

from __future__ import annotations

import torch

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
MAX_BLOCK = 128


def _with_channel(x: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    return torch.cat((x, channel.expand(*x.shape[:-1], 1)), dim=-1)


def linear_bias_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    slopes: torch.Tensor,
    scale: float,
    block: int,
) -> torch.Tensor:
    """softmax(scale·q·kᵀ - m_h·(i - j), causal) v. q, k, v (B, H, T, Dh); pos (T,); slopes (H,).

    Query blocks are at most ``MAX_BLOCK`` long: inside the diagonal square the added logits
    reach m_h·block, so fp32 rounding there stays below m_h·block·6e-8 (4e-6 at m = 1/2).
    """
    _, H, T, D = q.shape
    block = min(block, MAX_BLOCK)
    q1 = _with_channel(q, q.new_ones(1, 1, 1, 1))  # (B, H, T, D+1)
    v1 = _with_channel(v, v.new_zeros(1, 1, 1, 1))  # the extra channel carries no value
    k1 = _with_channel(k, k.new_zeros(1, 1, 1, 1))  # its last channel is rewritten per block
    m = slopes.to(q.dtype).view(1, H, 1) / scale
    outputs = []
    for s in range(0, T, block):
        e = min(s + block, T)
        k1[:, :, :e, D] = m * (pos[:e] - pos[s]).to(q.dtype).view(1, 1, e)  # only the keys this block sees
        outputs.append(prefix_and_diagonal(q1[:, :, s:e], k1[:, :, :e], v1[:, :, :e], scale)[..., :D])
    return torch.cat(outputs, dim=2)


def prefix_and_diagonal(
    q_block: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of the last b queries of a prefix over all its keys, with no mask tensor:
    the keys before the block (every one visible) and the block's own causal square, two flash
    calls merged by their log-sum-exps. q_block (B, H, b, D); k, v (B, H, e, D). -> (B, H, b, D)"""
    return prefix_and_diagonal_lse(q_block, k, v, scale)[0]


def prefix_and_diagonal_lse(
    q_block: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prefix_and_diagonal`` with its log-sum-exp. -> (B, H, b, D), (B, H, b)"""
    s, e = k.shape[-2] - q_block.shape[-2], k.shape[-2]
    out, lse = _flash(q_block, k[:, :, s:e], v[:, :, s:e], 0.0, True, scale=scale)
    if s == 0:
        return out, lse
    out_a, lse_a = _flash(q_block, k[:, :, :s], v[:, :, :s], 0.0, False, scale=scale)
    return merge_partials(out_a, lse_a, out, lse)


def merge_partials(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two softmaxes over disjoint sets of keys, merged into the softmax over both by their
    log-sum-exps: out (B, H, b, D), lse (B, H, b); an lse of -inf is a part with no keys.
    -> the merged out and lse"""
    top = torch.maximum(lse_a, lse_b)
    w_a, w_b = (lse_a - top).exp().unsqueeze(-1), (lse_b - top).exp().unsqueeze(-1)
    total = w_a + w_b
    return (w_a * out_a + w_b * out_b) / total, top + total.squeeze(-1).log()
