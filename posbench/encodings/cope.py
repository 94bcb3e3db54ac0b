"""CoPE: contextual position encoding, positions counted by gates on the attention logits
(Golovneva, Wang, Weston & Sukhbaatar 2024, "Contextual Position Encoding: Learning to Count
What's Important", §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import Scores


@dataclass
class CopeConfig(EncodingConfig):
    name: str = "cope"
    npos_max: int = 64  # integer positions with an embedding; counts are clipped at npos_max - 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.npos_max < 2:
            raise ValueError(
                f"encoding.npos_max={self.npos_max}: CoPE needs at least 2 position embeddings to interpolate"
            )


@ENCODINGS.register("cope", CopeConfig)
class Cope(PositionalEncoding):
    """§3: gates g_ij = sigmoid(q_i·k_j); position p_ij = sum_{t=j..i} g_it (counting only past and
    present keys, so nothing leaks from the future); e[p] interpolated between e[floor p] and
    e[ceil p]; logits q_i·(k_j + e[p_ij]). One embedding table per layer, shared by its heads, as in
    the paper's code; q·e[p] is computed for the integer p once and then interpolated.
    """

    cfg: CopeConfig

    def __init__(
        self, cfg: CopeConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.embeddings = nn.Parameter(torch.zeros(n_layers, head_dim, cfg.npos_max))  # e[p] as columns

    def scores(self) -> Scores:
        return Scores(score_mod=self.score_mod, position_local=False)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.embeddings)  # the paper's code starts every e[p] at zero

    def positions_from_gates(self, scores: torch.Tensor) -> torch.Tensor:
        """p_ij = sum_{t >= j} g_it with g = sigmoid(scores), 0 on future keys (their score is -inf);
        clipped to npos_max - 1. -> (B, H, Tq, Tk)"""
        gates = torch.sigmoid(scores)
        return gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.cfg.npos_max - 1)

    def score_mod(self, scores: torch.Tensor, q: torch.Tensor, layer: int) -> torch.Tensor:
        """scores + q_i·e[p_ij], with q already scaled like the logits.
        scores (B, H, Tq, Tk), q (B, H, Tq, Dh)"""
        p = self.positions_from_gates(scores)
        at_integers = q @ self.embeddings[layer].to(q.dtype)  # (B, H, Tq, npos_max)
        floor, ceil = p.floor(), p.ceil()
        weight = p - floor
        low, high = at_integers.gather(-1, floor.long()), at_integers.gather(-1, ceil.long())
        return scores + weight * high + (1 - weight) * low
