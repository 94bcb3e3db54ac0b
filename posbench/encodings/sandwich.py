"""Sandwich: the parameter-free inner product of two sinusoidal position embeddings as a bias
(Chi, Fan, Rudnicky & Ramadge 2023, "Dissecting Transformer Length Extrapolation via the Lens of
Receptive Field Analysis", ACL; the "Sandwich" section for the bias, its appendix for the per-head ratios)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posbench.common.checks import above, at_least
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import PoseOption
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import DistanceBias, Scores


@dataclass
class SandwichConfig(EncodingConfig, PoseOption):
    name: str = "sandwich"
    sinusoid_dim: int = 128  # d-bar: dimension of the sinusoidal embeddings whose product is the bias
    # ALiBi-like compression: head h (1..H) divides its bias by h·ratio_max/H
    ratio_max: float = 8.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()
        at_least("encoding.sinusoid_dim", self.sinusoid_dim, 2, "one sin/cos pair at least")
        above("encoding.ratio_max", self.ratio_max, 0, "each head divides its bias by h·ratio_max/H")


@ENCODINGS.register("sandwich", SandwichConfig)
class Sandwich(PositionalEncoding):
    """p_i·p_j = sum_k cos((i - j)·w_k), w_k = 10000^(-2k/d-bar), divided per head by h·8/H.

    A per-query constant (the value d-bar/2 at distance 0) cannot change a softmax, so none is removed.
    """

    cfg: SandwichConfig

    def __init__(
        self,
        cfg: SandwichConfig,
        d_model: int,
        n_heads: int,
        head_dim: int,
        init_std: float,
        n_layers: int = 1,
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        dim = cfg.sinusoid_dim
        self.register_buffer(
            "inv_freq",
            10000.0 ** (-torch.arange(0, dim // 2 * 2, 2, dtype=torch.float64) / dim),
            persistent=False,
        )
        ratios = torch.arange(1, n_heads + 1, dtype=torch.float32) * cfg.ratio_max / n_heads
        self.register_buffer("ratios", ratios, persistent=False)

    def by_distance(self, distances: torch.Tensor) -> torch.Tensor:
        """sum_k cos(d·w_k) for each distance d, in float64. -> same shape, float32"""
        return (
            torch.cos(distances.to(torch.float64)[..., None] * self.inv_freq.to(distances.device))
            .sum(-1)
            .float()
        )

    def scores(self) -> Scores:
        return Scores(bias=DistanceBias(self.score_bias))

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """-> (H, Tq, Tk); built from one value per distinct distance, so a block costs O(Tq·Tk)."""
        distance = q_pos[:, None] - k_pos[None, :]  # (Tq, Tk)
        low = distance.min()
        table = self.by_distance(torch.arange(int(low), int(distance.max()) + 1, device=distance.device))
        return table[distance - low][None] / self.ratios[:, None, None]
