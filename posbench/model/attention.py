"""Multi-head (grouped-query) causal self-attention with the encoding's hooks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from posbench.encodings import PositionalEncoding
from posbench.model.backends import Backend
from posbench.model.diagnostics import AttentionProbe
from posbench.model.schema1 import fuse_projections


@dataclass
class AttentionContext:
    """What every layer of one forward (or one query block of it) shares."""

    encoding: PositionalEncoding  # one per model, shared by all layers
    pos: torch.Tensor  # (T,) positions of the queries this forward computes
    backend: Backend  # from planner.plan_attention: (q, k, v, scale, layer) -> (B, H, T, Dh)
    probe: Optional[AttentionProbe] = None  # attention diagnostics (diagnostics.py), when asked for


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
        encoding = ctx.encoding.for_layer(self.layer)  # a per-layer schedule's member, else the encoding
        q, k = encoding.rotate_qk(q, k, ctx.pos)
        factors = encoding.query_factors(ctx.pos, self.layer)  # (H or 1, T): the temperature
        if factors is not None:
            q = q * factors[:, :, None].to(q.dtype)
        if self.kv_heads != self.n_heads:
            repeat = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        scale = 1 / math.sqrt(self.head_dim)
        key_bias = encoding.key_bias(x, self.layer)  # (B, H, T) or None: FoX's forget gates
        if ctx.probe is not None:
            ctx.probe(q, k, scale, self.layer, key_bias)
        extra = {} if key_bias is None else {"key_bias": key_bias}  # only the paths that take it get one
        y = ctx.backend(q, k, v, scale, self.layer, **extra)  # (B, H, T, Dh)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))


def fuse_legacy_projections(module, state_dict: dict, prefix: str, *args) -> None:
    """State dicts of schema 1 (separate ``q_proj`` and ``kv_proj``) load unchanged (``schema1.py``)."""
    fuse_projections(state_dict, prefix)
