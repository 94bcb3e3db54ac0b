"""Multi-head (grouped-query) causal self-attention with the encoding's hooks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from posbench.encodings import PositionalEncoding
from posbench.model.backends import Backend
from posbench.model.legacy import fuse_projections


@dataclass
class AttentionContext:
    """What every layer of one forward (or one query block of it) shares."""

    encoding: PositionalEncoding  # one per model, shared by all layers
    pos: torch.Tensor  # (T,) positions of the queries this forward computes
    backend: Backend  # from planner.plan_attention: (q, k, v, scale, layer) -> (B, H, T, Dh)
    window: int  # the window's length (for length-dependent logit scales)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, kv_heads: int, layer: int = 0):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = n_heads, kv_heads, d_model // n_heads
        self.layer = layer  # index in the stack, for encodings with per-layer state (CoPE) and caches
        # one matmul for queries, keys and values: rows [q (H·Dh) | k (Hkv·Dh) | v (Hkv·Dh)]
        self.qkv_proj = nn.Linear(d_model, (n_heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.register_load_state_dict_pre_hook(fuse_legacy_projections)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, self.n_heads + 2 * self.kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(
            (self.n_heads, self.kv_heads, self.kv_heads), dim=1
        )  # (B, H, T, Dh), (B, Hkv, T, Dh) x2
        q, k = ctx.encoding.rotate_qk(q, k, ctx.pos)
        if self.kv_heads != self.n_heads:
            repeat = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        scale = ctx.encoding.logit_scale(ctx.window) / math.sqrt(self.head_dim)
        y = ctx.backend(q, k, v, scale, self.layer)  # (B, H, T, Dh)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))


def fuse_legacy_projections(module, state_dict: dict, prefix: str, *args) -> None:
    """State dicts of schema 1 (separate ``q_proj`` and ``kv_proj``) load unchanged (``legacy.py``)."""
    fuse_projections(state_dict, prefix)
