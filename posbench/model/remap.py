"""The attention path of an inference-time remap (Self-Extend, ReRoPE; ``encodings/remap.py``):
two rotations of the same queries and keys, exact for the neighbours (distance < w) and remapped
beyond, one query block at a time.

For each block the neighbours' softmax and the far keys' softmax are computed apart, each over
its own keys in fp32, and merged by their log-sum-exps (``merge_partials``, which the mask-free
ALiBi path shares): exactly the softmax over the merged map that Self-Extend and ReRoPE write
(LongLM: ``torch.where`` of the two maps). On CPU each part is one flash-kernel call with a
(rows, keys) mask of which keys it takes (``kernel_by_blocks``); elsewhere explicit logits
(``merged_by_blocks``: one block's (B, H, rows, prefix) logits). Memory is linear in the window
either way. Evaluation only: the remaps are for trained models.
"""

from __future__ import annotations

import torch

from posbench.encodings.scores import Remap
from posbench.model.blocks import query_blocks
from posbench.model.linear_bias import merge_partials

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def rotations(q, k, pos: torch.Tensor, remap: Remap):
    """(q, k) rotated at their own positions and at the remap's far ones."""
    seq_len = int(pos.max()) + 1
    q_far_pos, k_far_pos = remap.far(pos, pos)
    near = remap.rotate(q, pos, seq_len), remap.rotate(k, pos, seq_len)
    return near, (remap.rotate(q, q_far_pos, seq_len), remap.rotate(k, k_far_pos, seq_len))


def block_logits(near, far, pos, remap: Remap, start: int, end: int, scale: float) -> torch.Tensor:
    """The merged map of queries start..end-1 over keys 0..end-1: near logits where 0 <= i - j < w,
    far ones where i - j >= w, -inf on the future. -> (B, H, b, end) fp32"""
    distance = pos[start:end, None] - pos[None, :end]  # (b, end)
    near_logits = near[0][:, :, start:end].float() @ near[1][:, :, :end].float().transpose(-2, -1)
    far_logits = far[0][:, :, start:end].float() @ far[1][:, :, :end].float().transpose(-2, -1)
    logits = torch.where(distance < remap.window, near_logits, far_logits) * scale
    return logits.masked_fill(distance < 0, float("-inf"))


def partial_softmax(logits: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(logits) v and the log-sum-exp per row; a row with no keys has lse -inf, output 0."""
    lse = logits.logsumexp(-1)  # (B, H, b)
    weights = (logits - lse.unsqueeze(-1)).exp().nan_to_num(0.0)
    return weights @ v.float(), lse


def remapped_attention(q, k, v, pos: torch.Tensor, remap: Remap, scale: float, block: int) -> torch.Tensor:
    """q, k (B, H, T, Dh) unrotated; pos (T,) increasing. -> (B, H, T, Dh)"""
    with torch.autocast(q.device.type, enabled=False):  # fp32 logits under autocast too
        if q.device.type == "cpu" and v.shape[-1] == q.shape[-1]:  # the kernel's own requirement
            return kernel_by_blocks(q, k, v, pos, remap, scale, block)
        return merged_by_blocks(q, k, v, pos, remap, scale, block)


def allowed(keys: torch.Tensor) -> torch.Tensor:
    """A boolean (rows, keys) choice as the kernel's additive mask: 0 where taken, -inf elsewhere."""
    return torch.zeros(keys.shape, device=keys.device).masked_fill_(~keys, float("-inf"))


def block_keys(pos: torch.Tensor, remap: Remap, start: int, end: int):
    """Which keys queries start..end-1 take as neighbours and which as far ones: lo, the first key
    any of them may see as a neighbour; (b, end - lo) neighbours (0 <= i - j < w); (b, end) far
    keys (i - j >= w)."""
    distance = pos[start:end, None] - pos[None, :end]  # (b, end)
    lo = max(0, start - remap.window + 1)
    return lo, ((distance >= 0) & (distance < remap.window))[:, lo:], distance >= remap.window


def kernel_by_blocks(q, k, v, pos: torch.Tensor, remap: Remap, scale: float, block: int) -> torch.Tensor:
    """``merged_by_blocks`` through the CPU flash kernel: per query block, the neighbours (keys lo..end)
    and the far keys (0..end) are each one kernel call with a (rows, keys) mask, merged by their
    log-sum-exps; a row with no far key yet gets lse -inf (the kernel returns 0 for it). The masks
    bound the rows (``query_blocks``), with no (B, H, rows, prefix) tensor."""
    T = q.shape[-2]
    near, far = rotations(q.float(), k.float(), pos, remap)
    v = v.float()
    outputs = []
    for start, end in query_blocks(T, block, 1):
        lo, neighbours, far_keys = block_keys(pos, remap, start, end)
        out_near, lse_near = _flash(
            near[0][:, :, start:end],
            near[1][:, :, lo:end],
            v[:, :, lo:end],
            0.0,
            False,
            attn_mask=allowed(neighbours),
            scale=scale,
        )
        out_far, lse_far = _flash(
            far[0][:, :, start:end],
            far[1][:, :, :end],
            v[:, :, :end],
            0.0,
            False,
            attn_mask=allowed(far_keys),
            scale=scale,
        )
        lse_far = lse_far.masked_fill(~far_keys.any(-1), float("-inf"))
        outputs.append(merge_partials(out_near, lse_near, out_far, lse_far)[0].to(q.dtype))
    return torch.cat(outputs, dim=2)


def merged_by_blocks(q, k, v, pos: torch.Tensor, remap: Remap, scale: float, block: int) -> torch.Tensor:
    B, H, T, _ = q.shape
    near, far = rotations(q, k, pos, remap)
    outputs = []
    for start, end in query_blocks(T, block, B * H):
        lo, neighbours, far_keys = block_keys(pos, remap, start, end)
        near_logits = near[0][:, :, start:end].float() @ near[1][:, :, lo:end].float().transpose(-2, -1)
        near_logits = near_logits.masked_fill(~neighbours, float("-inf"))
        far_logits = far[0][:, :, start:end].float() @ far[1][:, :, :end].float().transpose(-2, -1)
        far_logits = far_logits.masked_fill(~far_keys, float("-inf"))
        out_near, lse_near = partial_softmax(near_logits * scale, v[:, :, lo:end])
        out_far, lse_far = partial_softmax(far_logits * scale, v[:, :, :end])
        outputs.append(merge_partials(out_near, lse_near, out_far, lse_far)[0].to(q.dtype))
    return torch.cat(outputs, dim=2)
