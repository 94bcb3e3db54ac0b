"""xPos: RoPE whose rotation also decays with distance (Sun et al. 2022, "A Length-Extrapolatable
Transformer", ACL 2023, §3.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from posbench.common.checks import above
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.rope import Rope, RopeConfig
from posbench.encodings.scores import Decay, Scores

FLOAT32_LOG_MAX = 80.0  # ln(3.4e38) is 88.7; keep a margin for the q·k magnitudes themselves


@dataclass
class XposConfig(RopeConfig):
    name: str = "xpos"
    scale_base: float = 512.0  # positions are divided by this before the decay exponent
    gamma: float = 0.4  # zeta_i = (2i/d + gamma) / (1 + gamma)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.remap.kind != "none":
            raise ValueError(
                f"encoding/remap={self.remap.kind} is a remap of rope's rotation alone: xPos's decay has no "
                "remapped form; evaluate with encoding=rope checkpoints"
            )
        above("encoding.scale_base", self.scale_base, 0, "positions are divided by it in the decay")
        above("encoding.gamma", self.gamma, 0, "every zeta_i = (2i/d + gamma)/(1 + gamma) must be positive")


@ENCODINGS.register("xpos", XposConfig)
class Xpos(Rope):
    """q at position n is scaled by zeta^(n/scale_base), k at m by zeta^(-m/scale_base), per rotated pair,
    so q·k carries zeta^((n-m)/scale_base): a decay that depends on the distance only.

    The rotation is RoPE's (``rotate_qk``); the scales come from ``qk_decay`` and are applied by the
    attention, centred on the window when it is short enough for fp32 and on each query block when
    it is not (any length: ``model/blocks.py`` ``decayed_blockwise``)."""

    cfg: XposConfig

    def __init__(
        self, cfg: XposConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        pair = torch.arange(0, self.rotary, 2, dtype=torch.float64) / self.rotary  # 2i/d, (r/2,)
        self.register_buffer("zeta", (pair + cfg.gamma) / (1 + cfg.gamma), persistent=False)

    def qk_decay(self, pos: torch.Tensor, centre: int) -> torch.Tensor:
        """zeta^((n - centre)/scale_base) for each position n and channel, 1 on unrotated channels
        (rotate-half layout: a pair's two channels share its factor). -> (T, Dh) float64"""
        exponent = (pos - centre).to(torch.float64)[:, None] / self.cfg.scale_base
        pairs = self.zeta.to(pos.device)[None, :] ** exponent  # (T, r/2)
        rest = pairs.new_ones(pos.numel(), self.head_dim - self.rotary)
        return torch.cat((pairs, pairs, rest), dim=-1)

    def scores(self) -> Scores:
        """The decay is applied to the whole window, or re-centred per query block (model/backends.py)."""
        return Scores(decay=Decay(self.qk_decay, self.decay_window), position_local=False)

    @property
    def decay_window(self) -> int:
        """The longest window one centring holds: the largest product of a q and a k factor (a query
        at one end, a key at the other), zeta_min^(-(T-1)/scale_base), stays finite in fp32/bf16."""
        return int(FLOAT32_LOG_MAX * self.cfg.scale_base / -math.log(float(self.zeta.min()))) + 1
