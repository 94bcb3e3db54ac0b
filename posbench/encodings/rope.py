"""Rotary position embedding (Su et al. 2021, "RoFormer", §3.4), with partial rotation and scaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from posbench.checks import above
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import PoseOption, RandomPositionsOption
from posbench.encodings.rope_scaling import Frequencies, rope_inv_freq, scaling_config
from posbench.encodings.scores import Scores

__all__ = ["Rope", "RopeConfig", "apply_rotary", "rope_inv_freq", "rotary_dims"]


@dataclass
class RopeConfig(EncodingConfig, RandomPositionsOption, PoseOption):
    name: str = "rope"
    base: float = 10000.0
    # fraction of each head's dims that rotate (GPT-NeoX "rotary_pct"); the rest pass through
    rotary_dim: float = 1.0
    # inference-time frequency scaling, chosen with `encoding/scaling=KIND` (see rope_scaling.py);
    # typed by its `kind` in __post_init__
    scaling: Any = None

    def __post_init__(self) -> None:
        self.check_positions()
        above("encoding.base", self.base, 1, "wavelengths grow as base^(2i/d)")
        if not 0 < self.rotary_dim <= 1:
            raise ValueError(
                f"encoding.rotary_dim={self.rotary_dim} is the rotated fraction of each head: pick 0 < "
                "rotary_dim <= 1"
            )
        self.scaling = scaling_config(self.scaling)

    def label(self) -> str:
        kind = self.scaling.kind
        return super().label() + ("" if kind == "none" else f"+{kind}")


def rotary_dims(head_dim: int, fraction: float) -> int:
    """The even number of dims that rotate: 2·floor(fraction·head_dim / 2)."""
    dims = 2 * int(head_dim * fraction / 2 + 1e-9)
    if dims < 2:
        raise ValueError(f"encoding.rotary_dim={fraction} rotates no pair of a {head_dim}-dim head; raise it")
    return dims


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+r/2}) by the angle of their frequency ("rotate half" layout).

    x (B, H, T, Dh); cos, sin (T, r/2). Dimensions past r = 2·len(cos) are left unrotated.
    """
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotated = (x1 * cos - x2 * sin, x2 * cos + x1 * sin)
    return torch.cat((*rotated, rest), dim=-1)


class Rope(PositionalEncoding):
    cfg: RopeConfig

    def __init__(
        self, cfg: RopeConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.rotary = rotary_dims(head_dim, cfg.rotary_dim)
        self._cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # this forward's only

    def frequencies(self, seq_len: int) -> Frequencies:
        """(inv_freq (r/2,), attention_factor) at the current length, computed afresh every call."""
        return self.cfg.scaling.frequencies(self.rotary, self.cfg.base, seq_len)

    def cos_sin(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """attention_factor·cos/sin of pos·theta, (T, r/2) each, for the current length (last position + 1).

        Memoised only for the positions tensor of the current forward (shared by its layers), so a
        dynamic kind never reuses frequencies from an earlier, longer call."""
        if self._cached is not None and self._cached[0] is pos:
            return self._cached[1], self._cached[2]
        inv_freq, attention_factor = self.frequencies(int(pos.max()) + 1)
        angles = pos.to(torch.float64)[:, None] * inv_freq.to(pos.device)[None, :]  # (T, r/2)
        cos, sin = (attention_factor * angles.cos()).float(), (attention_factor * angles.sin()).float()
        self._cached = (pos, cos, sin)
        return cos, sin

    def rotate_qk(
        self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos_sin(pos)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def scores(self) -> Scores:
        """Unscaled rotations depend on each position alone; scaled kinds read the window's length."""
        return Scores(position_local=self.cfg.scaling.kind == "none")
