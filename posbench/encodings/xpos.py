"""xPos: RoPE whose rotation also decays with distance (Sun et al. 2022, "A Length-Extrapolatable
Transformer", ACL 2023, §3.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from posbench.encodings.rope import Rope, RopeConfig, apply_rotary

FLOAT32_LOG_MAX = 80.0  # ln(3.4e38) is 88.7; keep a margin for the q·k magnitudes themselves


@dataclass
class XposConfig(RopeConfig):
    name: str = "xpos"
    scale_base: float = 512.0  # positions are divided by this before the decay exponent
    gamma: float = 0.4  # zeta_i = (2i/d + gamma) / (1 + gamma)


class Xpos(Rope):
    """q at position n is scaled by zeta^(n/scale_base), k at m by zeta^(-m/scale_base), per rotated pair,
    so q·k carries zeta^((n-m)/scale_base): a decay that depends on the distance only."""

    cfg: XposConfig

    def __init__(self, cfg: XposConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        pair = torch.arange(0, self.rotary, 2, dtype=torch.float64) / self.rotary  # 2i/d, (r/2,)
        self.register_buffer("zeta", (pair + cfg.gamma) / (1 + cfg.gamma), persistent=False)

    def decay(self, pos: torch.Tensor) -> torch.Tensor:
        """zeta^(n/scale_base) for each position n, (T, r/2). Positions are centred on the window first
        (as the authors' code does): the product for a (query, key) pair depends only on n - m, and
        centring halves the largest exponent."""
        centred = (pos - (pos.min() + pos.max()) // 2).to(torch.float64)
        return self.zeta.to(pos.device)[None, :] ** (centred[:, None] / self.cfg.scale_base)

    def rotate_qk(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos_sin(pos)
        scale = self.decay(pos)
        q_scale, k_scale = scale.float(), scale.reciprocal().float()
        return apply_rotary(q, cos * q_scale, sin * q_scale), apply_rotary(k, cos * k_scale, sin * k_scale)

    @property
    def position_local(self) -> bool:
        return False  # the decay is centred on the whole window

    def longest_window(self) -> int:
        """The longest window whose largest q·k scale, zeta_min^(-(T-1)/scale_base), stays finite in fp32/bf16."""
        return int(FLOAT32_LOG_MAX * self.cfg.scale_base / -math.log(float(self.zeta.min()))) + 1

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        if seq_len > self.longest_window():
            return (f"xPos scales overflow float32 past {self.longest_window()} positions with scale_base="
                    f"{self.cfg.scale_base:g}; raise encoding.scale_base to evaluate longer windows")
        return super().length_limit_reason(seq_len)
