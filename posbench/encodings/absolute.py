"""Absolute encodings added to the token embeddings: none, sinusoidal, learned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from posbench.common.checks import above, at_least
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import PoseOption, RandomPositionsOption
from posbench.encodings.registry import ENCODINGS


@dataclass
class NopeConfig(EncodingConfig):
    name: str = "nope"


@ENCODINGS.register("nope", NopeConfig)
class NoPE(PositionalEncoding):
    """No positional information at all; causal masking alone orders tokens
    (Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization")."""


@dataclass
class SinusoidalConfig(EncodingConfig, RandomPositionsOption, PoseOption):
    name: str = "sinusoidal"
    base: float = 10000.0
    # amplitude relative to the embedding init std: 1.0 puts the table and the token
    # embeddings on one scale, as the original Transformer's sqrt(d) embedding scaling does
    amplitude: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()
        above("encoding.base", self.base, 1, "wavelengths grow as base^(2i/d)")
        at_least("encoding.amplitude", self.amplitude, 0, "x the embeddings' init std; 0 = no signal")


def sinusoidal_table(pos: torch.Tensor, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. 2017 §3.5: PE(p, 2i) = sin(p / base^(2i/d)), PE(p, 2i+1) = cos(same). -> (T, D)"""
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64, device=pos.device) / d_model)
    angles = pos.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, D/2), float64: exact at 64K positions
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # interleave sin, cos
    return table[:, :d_model].float()


@ENCODINGS.register("sinusoidal", SinusoidalConfig)
class Sinusoidal(PositionalEncoding):
    cfg: SinusoidalConfig

    def __init__(
        self,
        cfg: SinusoidalConfig,
        d_model: int,
        n_heads: int,
        head_dim: int,
        init_std: float,
        n_layers: int = 1,
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)

    def embed_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        table = sinusoidal_table(pos, self.d_model, self.cfg.base)  # (T, D)
        return x + (self.cfg.amplitude * self.init_std) * table.to(x.dtype)


@dataclass
class LearnedConfig(EncodingConfig, RandomPositionsOption, PoseOption):
    name: str = "learned"
    max_positions: int = "${train.seq_len}"  # type: ignore[assignment]  # table size

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()
        if isinstance(self.max_positions, int):
            at_least("encoding.max_positions", self.max_positions, 1, "the table's size")
        for key in ("random_positions_max", "pose_target"):
            reach = getattr(self, key)
            if reach is not None and isinstance(self.max_positions, int) and self.max_positions < reach:
                raise ValueError(
                    f"encoding.max_positions={self.max_positions} is smaller than encoding.{key}={reach}: "
                    f"set max_positions to at least {key} so every position drawn has a vector"
                )


@ENCODINGS.register("learned", LearnedConfig)
class Learned(PositionalEncoding):
    """A trained table of absolute position vectors (GPT-2); undefined past its end."""

    cfg: LearnedConfig

    def __init__(
        self,
        cfg: LearnedConfig,
        d_model: int,
        n_heads: int,
        head_dim: int,
        init_std: float,
        n_layers: int = 1,
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.table = nn.Embedding(cfg.max_positions, d_model)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.table.weight, std=self.init_std)

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        needed = self.sampler.span(seq_len)
        if needed > self.cfg.max_positions:
            end = self.cfg.max_positions
            return f"learned positions end at {end}; there is no vector for position {needed - 1}"
        return self.sampler.length_limit_reason(seq_len)

    def embed_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        top = int(pos.max())
        if top >= self.cfg.max_positions:
            raise ValueError(self.length_limit_reason(top + 1))
        return x + self.table(pos).to(x.dtype)  # (T, D) broadcast over the batch
