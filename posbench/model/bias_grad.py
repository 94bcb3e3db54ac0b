"""Attention with a float bias mask on CPU through the flash kernel, learned biases included.

``F.scaled_dot_product_attention`` takes its fused CPU kernel only while the float mask needs no
gradient; a learned bias (T5, KERPLE, FIRE) makes it fall back to the unfused path, which builds
the whole (B, H, T, T) score tensor in both directions and does every square matmul without the
causal saving. Here the forward runs through the flash kernel, and every gradient is formed one
query block at a time over its causal key prefix from the kernel's log-sum-exp (standard attention
calculus, e.g. Dao et al. 2022, FlashAttention, Appendix B.2):

    P = exp(S - lse),  dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ⊙ (dP - rowsum(dO ⊙ O)),
    dQ = scale·dS·K,  dK = scale·dSᵀ·Q,  d bias = Σ_batch dS.
"""

from __future__ import annotations

import torch

from posbench.model.underflow import exp_or_zero

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
GRAD_BLOCK = 256  # query rows per step of the bias gradient


def applies(q: torch.Tensor, mask: torch.Tensor) -> bool:
    """CPU, q in fp32 or bf16, the mask in fp32. Fixed biases (ALiBi) gain too: the kernel is called
    with its causal flag as well as the mask (which ``F.scaled_dot_product_attention`` does not
    allow), so it skips the key blocks above the diagonal."""
    return (
        q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) and mask.dtype == torch.float32
    )


class FlashBiasAttention(torch.autograd.Function):
    """softmax(scale·q·kᵀ + mask) v with gradients for q, k, v and the mask (1, H, T, T)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        out, lse = _flash(q, k, v, 0.0, True, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        if not ctx.needs_input_grad[3]:  # a fixed bias (ALiBi): the kernel's own backward
            dq, dk, dv = _flash_backward(
                grad_out, q, k, v, out, lse, 0.0, True, attn_mask=mask, scale=ctx.scale
            )
            return dq, dk, dv, None, None
        return (*blockwise_backward(q, k, v, mask, out, lse, grad_out, ctx.scale), None)


def blockwise_backward(q, k, v, mask, out, lse, grad_out, scale: float):
    """Every gradient of a learned-bias attention from one dS per query block over its causal key
    prefix: five matmuls per block, as many as the kernel's backward, and the mask gradient for free
    (the kernel's backward does not return dS; taking it as well would cost two more). -> dq, dk, dv, dmask"""
    T = q.shape[-2]
    dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dmask = torch.empty_like(mask)
    row_term = (grad_out * out).sum(-1, keepdim=True)  # (B, H, T, 1)
    k_t, v_t = (
        k.transpose(-2, -1).contiguous(),
        v.transpose(-2, -1).contiguous(),
    )  # (B, H, Dh, T), sliced per block
    for s in range(0, T, GRAD_BLOCK):
        e = min(s + GRAD_BLOCK, T)  # keys after e are in every row's future: no gradient there
        q_b, do_b = q[:, :, s:e], grad_out[:, :, s:e]
        dv_b, d_scores = block_gradients(
            q_b,
            k_t[..., :e],
            v_t[..., :e],
            mask[:, :, s:e, :e],
            lse[:, :, s:e],
            do_b,
            row_term[:, :, s:e],
            scale,
        )
        dv[:, :, :e] += dv_b
        dmask[:, :, s:e, :e] = d_scores.sum(0, keepdim=True)
        dmask[:, :, s:e, e:] = 0
        d_scores.mul_(scale)
        dq[:, :, s:e] = torch.matmul(d_scores, k[:, :, :e])
        dk[:, :, :e] += torch.matmul(d_scores.transpose(-2, -1), q_b)
    return dq, dk, dv, dmask


def block_gradients(q_b, k_t, v_t, mask_b, lse_b, do_b, row_term_b, scale: float):
    """One query block's share of a softmax attention's backward, its probabilities recomputed from the
    forward's log-sum-exp: q_b, do_b (B, H, b, Dh); k_t, v_t (B, H, Dh, e), the keys and values it
    attends, transposed; mask_b its (…, b, e) logit bias (-inf on the future); lse_b (B, H, b);
    row_term_b rowsum(dO ⊙ O) (B, H, b, 1). -> (dV's share (B, H, e, Dh), dS (B, H, b, e) unscaled)"""
    probs = torch.matmul(q_b, k_t).mul_(scale)
    probs.add_(mask_b).sub_(lse_b[..., None])
    probs = exp_or_zero(probs)  # P (B, H, b, e); biases reach -1e6 (KERPLE-power at 2K)
    dv_b = torch.matmul(probs.transpose(-2, -1), do_b)
    d_scores = torch.matmul(do_b, v_t).sub_(row_term_b).mul_(probs)  # dS
    return dv_b, d_scores


def flash_bias_attention(q, k, v, mask, scale: float) -> torch.Tensor:
    """q, k, v (B, H, T, Dh); mask (1, H, T, T) fp32 with -inf on the future. -> (B, H, T, Dh)

    With a learned bias, bf16 q, k, v (under autocast too) are attended in fp32 and the output cast
    back: the CPU kernel is barely faster in bf16, and bf16 logits and dS would cost the bias
    gradient, a sum of dS over queries and batch whose terms cancel (a softmax's dS sums to 0 along
    a row), most of its digits. A fixed bias runs the kernel in q's dtype."""
    if not mask.requires_grad:
        return FlashBiasAttention.apply(q, k, v, mask, scale)
    with torch.autocast(q.device.type, enabled=False):
        out = FlashBiasAttention.apply(q.float(), k.float(), v.float(), mask, scale)
    return out.to(q.dtype)
