"""The positional-encoding interface: four hooks, each a no-op by default.

The model calls every hook at a fixed site (see DESIGN in the README):

| hook | shapes | site |
|---|---|---|
| ``embed_input(x, pos)`` | x (B, T, D), pos (T,) | token embeddings, before the first block |
| ``rotate_qk(q, k, pos)`` | q (B, H, T, Dh), k (B, Hkv, T, Dh) | every attention layer, after projection |
| ``score_bias(q_pos, k_pos)`` | -> (H, Tq, Tk) or None | added to the logits before softmax |
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


@dataclass
class EncodingConfig:
    name: str = MISSING


class PositionalEncoding(nn.Module):
    """Base class: an encoding overrides only the hooks it needs."""

    #: True when ``score_bias`` returns a tensor (decides the attention backend)
    has_bias: bool = False

    def __init__(self, cfg: EncodingConfig, d_model: int, n_heads: int, head_dim: int, init_std: float):
        super().__init__()
        self.cfg = cfg
        self.d_model, self.n_heads, self.head_dim, self.init_std = d_model, n_heads, head_dim, init_std

    @property
    def label(self) -> str:
        """The name shown in results and run names."""
        return self.cfg.name

    def embed_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotate_qk(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def logit_scale(self, seq_len: int) -> float:
        return 1.0

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        """Why this encoding cannot take ``seq_len`` positions, or None if it can."""
        return None

    def reset_parameters(self) -> None:
        """Initialise learned parameters (called from the model's one init function)."""
