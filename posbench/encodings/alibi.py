"""ALiBi: a fixed linear distance penalty per head (Press et al. 2022, "Train Short, Test Long")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import PoseOption
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import LinearBias, Scores


@dataclass
class AlibiConfig(EncodingConfig, PoseOption):
    name: str = "alibi"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Head slopes of Press et al. 2022 §3.

    For n a power of two the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...,
    2^(-8). Otherwise (the paper's footnote, as its released code does) take the n' = 2^floor(log2 n)
    slopes, then fill the remaining n - n' heads with every other slope of the 2n' sequence.
    -> (num_heads,) float32
    """
    if num_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {num_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    lower = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(lower)
    if lower < num_heads:
        slopes += geometric(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


@ENCODINGS.register("alibi", AlibiConfig)
class Alibi(PositionalEncoding):
    cfg: AlibiConfig

    def __init__(
        self, cfg: AlibiConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def scores(self) -> Scores:
        return Scores(bias=LinearBias(self.slopes))

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """-m_h · (i - j) for query position i and key position j. -> (H, Tq, Tk)"""
        return LinearBias(self.slopes).fn(q_pos, k_pos)
