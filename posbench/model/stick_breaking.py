"""The attention path of stick-breaking attention (``encodings/stick_breaking.py``), one query block
at a time over its causal key prefix, in log space with explicit fp32 logits:

    log A_ij = log σ(z_ij) + Σ_{j<k<i} log σ(−z_ik),

the inner sum a cumulative sum taken from the query backwards (the nearest keys first, where the
weights are, so fp32 keeps them exact; far keys' sums grow large and negative, where the weights
vanish). A block's (B, H, rows, prefix) tensors stay under the blockwise budget, so memory is
linear in the window; in training too: each block's backward recomputes its weights
(``StickBreakingBlock``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posbench.model.blocks import query_blocks

TENSORS_PER_BLOCK = 4  # (B, H, rows, prefix) fp32 tensors alive at once, for the block budget


def broken_sticks(q: torch.Tensor, k: torch.Tensor, scale: float, start: int):
    """The logits z, the mask of earlier keys (j < i) and A_ij of queries start..start+b-1 over keys
    0..end-1, in fp32 (autocast off). -> (B, H, b, end) fp32, (b, end) bool, (B, H, b, end) fp32"""
    b, end = q.shape[-2], k.shape[-2]
    with torch.autocast(q.device.type, enabled=False):  # fp32 logits under bf16 autocast too
        z = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, b, end)
    earlier = torch.ones(b, end, dtype=torch.bool, device=q.device).tril(start - 1)  # j < i
    log_keep = F.logsigmoid(-z).masked_fill(~earlier, 0.0)  # log(1 − β); 0 where nothing breaks
    # Σ_{j<k<i} log(1 − β_ik): the sum of log_keep over keys after j, from the right end (the query)
    after = log_keep.flip(-1).cumsum(-1).flip(-1) - log_keep
    return z, earlier, (F.logsigmoid(z) + after).exp().masked_fill(~earlier, 0.0)


def stick_breaking_weights(q: torch.Tensor, k: torch.Tensor, scale: float, start: int) -> torch.Tensor:
    """A_ij of queries start..end-1 (end = start + b) over keys 0..end-1, and the remainder
    1 − Σ_j A_ij on each query's own key. q (B, H, b, Dh), k (B, H, end, Dh) -> (B, H, b, end) fp32"""
    b, end = q.shape[-2], k.shape[-2]
    _, _, weights = broken_sticks(q, k, scale, start)
    remainder = (1 - weights.sum(-1, keepdim=True)).clamp(min=0)  # (B, H, b, 1): what no earlier key took
    own = torch.zeros(b, end, device=q.device)
    own[torch.arange(b), torch.arange(b) + start] = 1.0  # query i's own key
    return weights + remainder * own


class StickBreakingBlock(torch.autograd.Function):
    """One query block's stick-breaking attention, fp32, with its own backward: the weights are
    recomputed from q and k, so nothing (rows, prefix)-sized is kept between forward and backward.
    With G = dA ⊙ A and C its cumulative sum over keys (j ≤ k), differentiating log A_ij =
    log σ(z_ij) + Σ_{j<k<i} log σ(−z_ik) gives dz_ik = G_ik − β_ik·C_ik; dA_ij = dO_i·v_j minus
    dO_i·v_i (the remainder, 1 − Σ_j A_ij, while it is not clamped at 0)."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float, start: int):
        ctx.save_for_backward(q, k, v)
        ctx.scale, ctx.start = scale, start
        return stick_breaking_weights(q, k, scale, start) @ v

    @staticmethod
    def backward(ctx, d_out):
        q, k, v = ctx.saved_tensors
        scale, start, end = ctx.scale, ctx.start, ctx.start + q.shape[-2]
        z, earlier, weights = broken_sticks(q, k, scale, start)  # recomputed: nothing kept
        remainder = 1 - weights.sum(-1, keepdim=True)  # (B, H, b, 1)
        own_term = (d_out * v[:, :, start:end]).sum(-1, keepdim=True) * (remainder > 0)
        grads = torch.matmul(d_out, v.transpose(-2, -1)).sub_(own_term).mul_(weights)  # G = dA ⊙ A
        d_z = grads - torch.sigmoid(z).mul_(grads.cumsum(-1))  # G − β·C (0 where no key breaks)
        d_z.masked_fill_(~earlier, 0.0).mul_(scale)
        dq, dk = torch.matmul(d_z, k), torch.matmul(d_z.transpose(-2, -1), q)
        dv = torch.matmul(weights.transpose(-2, -1), d_out)
        dv[:, :, start:end] += remainder.clamp(min=0) * d_out  # each query's own value
        return dq, dk, dv, None, None


def stick_breaking_attention(q, k, v, scale: float, block: int) -> torch.Tensor:
    """q, k, v (B, H, T, Dh) -> (B, H, T, Dh)"""
    B, H, T, _ = q.shape
    outputs = []
    with torch.autocast(q.device.type, enabled=False):
        q32, k32, v32 = q.float(), k.float(), v.float()
        for start, end in query_blocks(T, block, B * H * TENSORS_PER_BLOCK):
            q_b, k_b, v_b = q32[:, :, start:end], k32[:, :, :end], v32[:, :, :end]
            if torch.is_grad_enabled():
                block_out = StickBreakingBlock.apply(q_b, k_b, v_b, scale, start)
            else:  # evaluation: the weights alone, no autograd record
                block_out = stick_breaking_weights(q_b, k_b, scale, start) @ v_b
            outputs.append(block_out.to(q.dtype))
    return torch.cat(outputs, dim=2)
