"""FlexAttention (PyTorch >= 2.5) with the encoding's bias as an elementwise ``score_mod``: its
own elementwise form where it has one (ALiBi's, ``scores.LinearBias.elementwise``), else, for any
bias of the distance alone (T5, KERPLE, Sandwich), a lookup in a per-window table of the bias at
every distance.

On CUDA it runs forward and backward; on CPU only a compiled forward exists (the planner refuses
CPU training with it). Block masks
and compiled kernels are cached per (length, device): each new length compiles once.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch


@functools.cache
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=16)
def _causal_block_mask(seq_len: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return torch.compile(create_block_mask)(causal, None, None, seq_len, seq_len, device=device)


def distance_bias_table(bias_fn: Callable, pos: torch.Tensor) -> torch.Tensor:
    """A bias of the distance alone, tabulated: u[h, d] = bias at distance d for every distance
    0..max(pos)-min(pos) the window holds (query at min(pos) + d, key at min(pos)). -> (H, D)"""
    low = pos.min()
    distances = torch.arange(int(pos.max() - low) + 1, device=pos.device)
    return bias_fn(low + distances, low[None])[:, :, 0].float().contiguous()


def flex_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    elementwise: Optional[Callable],
    scale: float,
    table: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Causal attention of one window; ``elementwise(score, head, q_pos, k_pos)`` adds the bias, or,
    for a bias of the distance alone, ``table`` (H, D) from ``distance_bias_table`` is looked up."""
    score_mod = None
    if elementwise is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return elementwise(score, h, pos[q_idx], pos[kv_idx])
    elif table is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            distance = (pos[q_idx] - pos[kv_idx]).clamp(min=0)  # future keys are masked; keep the index valid
            return score + table[h, distance].to(score.dtype)

    block_mask = _causal_block_mask(q.shape[-2], str(q.device))
    return _compiled()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
