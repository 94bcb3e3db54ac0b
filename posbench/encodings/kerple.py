"""KERPLE: conditionally positive definite kernels of the distance as a per-head bias
(Chi, Fan, Ramadge & Rudnicky 2022, "KERPLE: Kernelized Relative Positional Embedding for Length
Extrapolation", NeurIPS, §4, the logarithmic and power variants)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from posbench.common import checks
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import PoseOption
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import DistanceBias, Scores


@dataclass
class KerpleLogConfig(EncodingConfig, PoseOption):
    name: str = "kerple_log"
    # the authors' released code draws r1 ~ U(0, 2) and r2 ~ U(0, 1) per head and floors both at 0.01
    r1_init_max: float = 2.0
    r2_init_max: float = 1.0
    min_value: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()
        check_kerple(self)


@dataclass
class KerplePowerConfig(EncodingConfig, PoseOption):
    name: str = "kerple_power"
    # released code: r1 ~ U(0, 1), exponent r2 ~ U(0, 2); r2 must stay in (0, 2] for the kernel to be CPD
    r1_init_max: float = 1.0
    r2_init_max: float = 2.0
    min_value: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()
        check_kerple(self)
        if self.r2_init_max > 2:
            raise ValueError(
                f"encoding.r2_init_max={self.r2_init_max}: the power kernel needs r2 <= 2; lower it"
            )


def check_kerple(cfg: KerpleLogConfig | KerplePowerConfig) -> None:
    """Inits are drawn in [2·min_value, max - 2·min_value] (``Kerple.reset_parameters``)."""
    checks.above("encoding.min_value", cfg.min_value, 0, "the floor of r1 and r2")
    for key in ("r1_init_max", "r2_init_max"):
        margin = "4 x min_value: the init keeps a margin"
        checks.above(f"encoding.{key}", getattr(cfg, key), 4 * cfg.min_value, margin)


def above(raw: torch.Tensor, floor: float) -> torch.Tensor:
    """A value > floor for any raw parameter (softplus), so optimiser steps cannot leave the range."""
    return floor + F.softplus(raw)


def above_inverse(value: torch.Tensor, floor: float) -> torch.Tensor:
    return torch.log(torch.expm1(value - floor))


def between(raw: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.sigmoid(raw)


def between_inverse(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.logit((value - low) / (high - low))


class Kerple(PositionalEncoding):
    """Shared by both variants: per-head raw parameters, the distance matrix, the init."""

    cfg: KerpleLogConfig | KerplePowerConfig

    def __init__(self, cfg, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.r1_raw = nn.Parameter(torch.zeros(n_heads))
        self.r2_raw = nn.Parameter(torch.zeros(n_heads))

    @property
    def r1(self) -> torch.Tensor:
        return above(self.r1_raw, self.cfg.min_value)  # (H,)

    @property
    def r2(self) -> torch.Tensor:
        return above(self.r2_raw, self.cfg.min_value)  # (H,)

    def r2_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return above_inverse(value, self.cfg.min_value)

    def reset_parameters(self) -> None:
        """Uniform draws as in the released code, kept a margin inside the valid range."""
        margin = 2 * self.cfg.min_value
        with torch.no_grad():
            r1 = (torch.rand(self.n_heads) * self.cfg.r1_init_max).clamp(min=margin)
            r2 = (torch.rand(self.n_heads) * self.cfg.r2_init_max).clamp(
                min=margin, max=self.cfg.r2_init_max - margin
            )
            self.r1_raw.copy_(above_inverse(r1, self.cfg.min_value))
            self.r2_raw.copy_(self.r2_inverse(r2))

    def scores(self) -> Scores:
        return Scores(bias=DistanceBias(self.score_bias))

    def distance(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return (q_pos[:, None] - k_pos[None, :]).abs().float()[None]  # (1, Tq, Tk)


@ENCODINGS.register("kerple_log", KerpleLogConfig)
class KerpleLog(Kerple):
    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """-r1·log(1 + r2·|i - j|), r1, r2 > 0. -> (H, Tq, Tk)"""
        return -self.r1[:, None, None] * torch.log1p(self.r2[:, None, None] * self.distance(q_pos, k_pos))


@ENCODINGS.register("kerple_power", KerplePowerConfig)
class KerplePower(Kerple):
    @property
    def r2(self) -> torch.Tensor:
        return between(self.r2_raw, self.cfg.min_value, 2.0)  # the exponent, in (0, 2]

    def r2_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return between_inverse(value, self.cfg.min_value, 2.0)

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """-r1·|i - j|^r2, r1 > 0, 0 < r2 <= 2. -> (H, Tq, Tk)"""
        return -self.r1[:, None, None] * self.distance(q_pos, k_pos) ** self.r2[:, None, None]
