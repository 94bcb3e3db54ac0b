"""Multi-head (grouped-query) causal self-attention with the encoding's hooks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from posbench.encodings import PositionalEncoding
from posbench.model.backends import attend


@dataclass
class AttentionContext:
    """What every layer of one forward shares: positions, backend, the optional full mask."""

    encoding: PositionalEncoding  # one per model, shared by all layers
    pos: torch.Tensor  # (T,)
    backend: str
    block: int
    mask: Optional[torch.Tensor] = None  # (1, H, T, T) for the sdpa path with a bias; (1, H, b, end) by blocks
    # run by query blocks through all layers: each layer's keys and values so far, (B, H, T, Dh) each
    cache: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None
    start: int = 0  # first index of this block in the window
    window: int = 0  # the window's length (for length-dependent logit scales)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, kv_heads: int, layer: int = 0):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = n_heads, kv_heads, d_model // n_heads
        self.layer = layer  # index in the stack, for encodings with per-layer state (CoPE)
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k, v = self.kv_proj(x).view(B, T, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, Hkv, T, Dh)
        encoding = ctx.encoding
        q, k = encoding.rotate_qk(q, k, ctx.pos)
        if self.kv_heads != self.n_heads:
            repeat = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        scale = encoding.logit_scale(ctx.window or T) / math.sqrt(self.head_dim)
        if ctx.cache is not None:  # one query block: attend the cached prefix with this block's bias
            keys, values = ctx.cache[self.layer]
            end = ctx.start + T
            keys[:, :, ctx.start:end], values[:, :, ctx.start:end] = k, v
            y = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=ctx.mask, scale=scale)
            return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))
        bias_fn = encoding.score_bias if encoding.has_bias else None
        score_mod = partial(encoding.score_mod, layer=self.layer) if encoding.needs_scores else None
        decay, block = None, ctx.block
        if encoding.has_decay:  # per-block factors at most e^40 apart inside a block's square
            decay, block = encoding.qk_decay, max(1, min(block, encoding.decay_window // 2))
        y = attend(q, k, v, ctx.pos, bias_fn, scale, ctx.backend, block, ctx.mask, score_mod,
                   encoding.linear_slopes(), encoding.flex_bias if encoding.has_flex_bias else None,
                   encoding.distance_only, decay)  # (B, H, T, Dh)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))
