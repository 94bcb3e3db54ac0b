"""The positional-encoding interface: hooks at fixed sites, each a no-op by default.

The model calls every hook at a fixed site (see DESIGN in the README):

| hook | shapes | site |
|---|---|---|
| ``positions(T, device)`` | -> (T,) | positions of a forward that was given none |
| ``embed_input(x, pos)`` | x (B, T, D), pos (T,) | token embeddings, before the first block |
| ``rotate_qk(q, k, pos)`` | q (B, H, T, Dh), k (B, Hkv, T, Dh) | every attention layer, after projection |
| ``score_bias(q_pos, k_pos)`` | -> (H, Tq, Tk) or None | added to the logits before softmax |
| ``qk_decay(pos, centre)`` | -> (T, Dh) float64 | per-channel factors: q times them, k divided (xPos), after the rotation |
| ``score_mod(scores, q, layer)`` | scores (B, H, Tq, Tk) | content-dependent logits (CoPE), explicit scores only |
| ``logit_scale(seq_len)`` | -> float | multiplies the 1/sqrt(Dh) softmax scale |

Positions are explicit int64 tensors, so a window may start at any offset and a bias may be
built for one block of queries at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import MISSING
from torch import nn

from posbench.encodings.positions import ARANGE, PositionSampler


@dataclass
class EncodingConfig:
    name: str = MISSING


class PositionalEncoding(nn.Module):
    """Base class: an encoding overrides only the hooks it needs."""

    #: True when ``score_bias`` returns a tensor (decides the attention backend)
    has_bias: bool = False
    #: True when ``score_bias`` depends on q_pos - k_pos alone (long evaluation shares one table)
    distance_only: bool = False
    #: True when ``score_mod`` needs each layer's explicit scores (decides the attention backend)
    needs_scores: bool = False
    #: True when ``qk_decay`` returns factors (xPos; long windows re-centre them per query block)
    has_decay: bool = False

    def __init__(self, cfg: EncodingConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1):
        super().__init__()
        self.cfg = cfg
        self.d_model, self.n_heads, self.head_dim, self.init_std = d_model, n_heads, head_dim, init_std
        self.n_layers = n_layers
        self.sampler: PositionSampler = ARANGE  # 0..T-1; randomized encodings swap in their sampler

    @property
    def label(self) -> str:
        """The name shown in results and run names."""
        return self.cfg.name + self.sampler.label_suffix

    def positions(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Positions for a forward that was given none. -> (T,) int64"""
        return self.sampler(seq_len, device, self.training)

    def embed_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotate_qk(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def qk_decay(self, pos: torch.Tensor, centre: int) -> Optional[torch.Tensor]:
        """Factors s (T, Dh) such that (q_n·s_n)·(k_m/s_m) carries a factor of n - m alone, centred so that
        s = 1 at position ``centre``; only called when ``has_decay``."""
        return None

    @property
    def decay_window(self) -> Optional[int]:
        """The longest window whose ``qk_decay`` factors, centred on it, stay finite in fp32 (None: no limit)."""
        return None

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def score_mod(self, scores: torch.Tensor, q: torch.Tensor, layer: int) -> torch.Tensor:
        """scores (B, H, Tq, Tk): scaled logits with -inf on future keys; q (B, H, Tq, Dh) already
        multiplied by the softmax scale. Only called when ``needs_scores``."""
        return scores

    def linear_slopes(self) -> Optional[torch.Tensor]:
        """(H,) slopes m when ``score_bias`` is exactly -m·(q_pos - k_pos), else None.
        Lets long evaluation run through the flash kernel without a mask (model/linear_bias.py)."""
        return None

    @property
    def has_flex_bias(self) -> bool:
        return type(self).flex_bias is not PositionalEncoding.flex_bias

    def flex_bias(self, score: torch.Tensor, head: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """``score_bias`` for one (head, query, key) element, in ops FlexAttention can compile."""
        raise NotImplementedError(f"encoding {self.label!r} has no FlexAttention score_mod; use model.attention=auto")

    def logit_scale(self, seq_len: int) -> float:
        return 1.0

    @property
    def position_local(self) -> bool:
        """True when every hook treats each position on its own, so a window can run one query
        block at a time through all layers (no rotation that looks at the whole window, no scores)."""
        return type(self).rotate_qk is PositionalEncoding.rotate_qk and not self.needs_scores

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        """Why this encoding cannot take ``seq_len`` positions, or None if it can."""
        return self.sampler.length_limit_reason(seq_len)

    def reset_parameters(self) -> None:
        """Initialise learned parameters (called from the model's one init function)."""
