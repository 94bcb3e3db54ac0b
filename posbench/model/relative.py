"""The attention path of a query-dependent term of the distance, (q_i + c_h)·r_{h, i−j}
(Transformer-XL's (b) + (d), Dai et al. 2019 §3.3; ``encodings/transformer_xl.py``), by query blocks.

For a block of queries start..end−1 the term is evaluated once per (query, distance) as one matmul,
BD (B, H, b, W) with column t the distance end−1−t (W = end + b − 1, the last b − 1 columns the
negative distances of the future, set to −inf), and read as the (B, H, b, end) mask of (query, key)
pairs through a strided view (row stride W − 1: the paper's "relative shift", Appendix B, with no
copy). The mask view goes straight to the CPU flash kernel with the block's queries and its causal
key prefix, so no (b, end) score tensor is formed in the forward. The backward recomputes each
block's mask and probabilities from the kernel's log-sum-exp (Dao et al. 2022, Appendix B.2):
memory stays linear in the window, training too; each block's share is ``bias_grad.block_gradients``,
as for a learned bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posbench.encodings.scores import RelativeTerm
from posbench.model.bias_grad import block_gradients
from posbench.model.blocks import query_blocks

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
BLOCK_BYTES = 32 * 2**20  # one block's (B, H, rows, prefix) fp32 tensors stay under this, each
# (B, H, rows, prefix) fp32 tensors alive at once per block, for the blockwise budget: the mask in
# the forward; the mask, the probabilities and their gradient in the backward
FORWARD_TENSORS, BACKWARD_TENSORS = 1, 3


def shifted_mask(qr: torch.Tensor, r_rev: torch.Tensor, start: int, end: int, seq_len: int):
    """BD of queries start..end−1 (qr: their (q + c)·scale, (B, H, b, Dh)) against r_rev (H, n, Dh),
    r_rev[:, u] = r at distance seq_len − 1 − u, and its (B, H, b, end) view by (query, key)."""
    b = end - start
    width = end + b - 1
    rel = r_rev[:, seq_len - end : seq_len - end + width]  # (H, W, Dh): distances end−1 .. −(b−1)
    bd = torch.matmul(qr, rel.transpose(-2, -1))  # (B, H, b, W)
    bd[..., end:] = float("-inf")  # negative distances: the block's future
    view = bd.as_strided((*bd.shape[:2], b, end), (bd.stride(0), bd.stride(1), width - 1, 1), b - 1)
    return bd, view, rel


def spans(q: torch.Tensor, block: int, tensors: int) -> list[tuple[int, int]]:
    B, H, T, _ = q.shape
    return list(query_blocks(T, block, B * H * tensors, BLOCK_BYTES))


class RelativeAttention(torch.autograd.Function):
    """softmax(scale·q·kᵀ + (q + c)·r_{i−j}·scale, causal) v; qr = (q + c)·scale precomputed."""

    @staticmethod
    def forward(ctx, q, k, v, qr, r_rev, scale, block):
        T = q.shape[-2]
        out, lse = torch.empty_like(q), q.new_empty(q.shape[:-1])
        for start, end in spans(q, block, FORWARD_TENSORS):
            _, mask, _ = shifted_mask(qr[:, :, start:end], r_rev, start, end, T)
            out[:, :, start:end], lse[:, :, start:end] = _flash(
                q[:, :, start:end], k[:, :, :end], v[:, :, :end], 0.0, False, attn_mask=mask, scale=scale
            )
        ctx.save_for_backward(q, k, v, qr, r_rev, out, lse)
        ctx.scale, ctx.block = scale, block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, qr, r_rev, out, lse = ctx.saved_tensors
        scale, T = ctx.scale, q.shape[-2]
        grad_out = grad_out.contiguous()
        dq, dk, dv, dqr = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.empty_like(qr)
        dr_rev = torch.zeros_like(r_rev)
        row_term = (grad_out * out).sum(-1, keepdim=True)  # (B, H, T, 1)
        for start, end in spans(q, ctx.block, BACKWARD_TENSORS):
            q_b, do_b, qr_b = q[:, :, start:end], grad_out[:, :, start:end], qr[:, :, start:end]
            bd, mask, rel = shifted_mask(qr_b, r_rev, start, end, T)
            keys_t, values_t = (x[:, :, :end].transpose(-2, -1) for x in (k, v))
            dv_b, d_scores = block_gradients(
                q_b, keys_t, values_t, mask, lse[:, :, start:end], do_b, row_term[:, :, start:end], scale
            )  # d_scores: dS, also d(mask)
            dv[:, :, :end] += dv_b
            d_bd = bd.zero_()  # the same layout: dS written back through the shifted view
            mask.copy_(d_scores)  # mask views bd, now d_bd; the future's columns get dS = 0
            dqr[:, :, start:end] = torch.matmul(d_bd, rel)
            width = rel.shape[1]
            dr_rev[:, T - end : T - end + width] += torch.matmul(d_bd.transpose(-2, -1), qr_b).sum(0)
            d_scores.mul_(scale)
            dq[:, :, start:end] = torch.matmul(d_scores, k[:, :, :end])
            dk[:, :, :end] += torch.matmul(d_scores.transpose(-2, -1), q_b)
        return dq, dk, dv, dqr, dr_rev, None, None


def relative_attention(q, k, v, qr, r_rev, scale: float, block: int) -> torch.Tensor:
    """q, k, v (B, H, T, Dh) (q holding c's content part, Transformer-XL's u); qr (B, H, T, Dh) the
    relative term's queries, scaled; r_rev (H, T + block − 1, Dh), r at distances T − 1 down to
    −(block − 1) (finite; those below 0 only meet the future's −inf and zero gradients). -> (B, H, T, Dh)"""
    if q.device.type == "cpu":
        return RelativeAttention.apply(q, k, v, qr, r_rev, scale, block)
    outputs = []  # elsewhere: the same masks through SDPA, autograd through the views
    for start, end in spans(q, block, FORWARD_TENSORS):
        _, mask, _ = shifted_mask(qr[:, :, start:end], r_rev, start, end, q.shape[-2])
        outputs.append(
            F.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, :end], v[:, :, :end], attn_mask=mask, scale=scale
            )
        )
    return torch.cat(outputs, dim=2)


def relative_term_attention(q, k, v, term: RelativeTerm, scale: float, block: int, layer: int):
    """Causal attention with ``term`` added to the logits, in fp32 (autocast off inside).
    q, k, v (B, H, T, Dh) -> (B, H, T, Dh)"""
    T = q.shape[-2]
    with torch.autocast(q.device.type, enabled=False):
        distances = torch.arange(T - 1, -block, -1, device=q.device)  # T − 1 down to −(block − 1)
        r_rev = term.table(distances, layer).float()  # (H, T + block − 1, Dh)
        q32 = q.float()
        qr = term.queries(q32 * scale, layer)  # (B, H, T, Dh)
        out = relative_attention(q32, k.float(), v.float(), qr, r_rev, scale, block)
    return out.to(q.dtype)
