"""Rotary position embedding (Su et al. 2021, "RoFormer", §3.4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posbench.encodings.base import EncodingConfig, PositionalEncoding


@dataclass
class RopeConfig(EncodingConfig):
    name: str = "rope"
    base: float = 10000.0


def rope_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """RoFormer eq. 15: theta_i = base^(-2i/d) for i = 0 .. d/2-1. -> (head_dim // 2,)"""
    return base ** (-torch.arange(0, head_dim // 2 * 2, 2, dtype=torch.float64) / head_dim)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) by the angle of their frequency ("rotate half" layout).

    x (B, H, T, Dh); cos, sin (T, Dh/2). Dimensions past 2·len(cos) are left unrotated.
    """
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotated = (x1 * cos - x2 * sin, x2 * cos + x1 * sin)
    return torch.cat((*rotated, rest), dim=-1)


class Rope(PositionalEncoding):
    cfg: RopeConfig

    def __init__(self, cfg: RopeConfig, d_model: int, n_heads: int, head_dim: int, init_std: float):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std)
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, cfg.base), persistent=False)
        self._cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def cos_sin(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of pos·theta, (T, Dh/2) each; memoised for the positions of the current forward."""
        if self._cached is not None and self._cached[0] is pos:
            return self._cached[1], self._cached[2]
        angles = pos.to(torch.float64)[:, None] * self.inv_freq.to(pos.device)[None, :]
        cos, sin = angles.cos().float(), angles.sin().float()
        self._cached = (pos, cos, sin)
        return cos, sin

    def rotate_qk(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos_sin(pos)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
