"""Transformer-XL's relative positional encoding (Dai et al. 2019, "Transformer-XL: Attentive
Language Models Beyond a Fixed-Length Context", ACL, §3.3): the logits

    A_ij = q_i·k_j + q_i·W_R R_{i−j} + u·k_j + v·W_R R_{i−j}        (terms a, b, c, d),

R_d a sinusoid of the distance ([sin | cos] of d·10000^(−2m/d_model), the released code's
``PositionalEmbedding``), W_R one projection per layer (``r_net``), u and v one vector per head
shared by all layers (``r_w_bias``, ``r_r_bias``); the sum is scaled by 1/√d_head. The RELATIVE
baseline of the DeepMind (Ruoss et al. 2023) and DAPE comparisons.

Here (a) + (c) = (q + u)·k: ``rotate_qk`` adds u to the queries; (b) + (d) = (q + v)·W_R R_{i−j}
is a ``RelativeTerm`` (the query it receives already holds u, so it adds v − u): on its own path,
``model/relative.py``, evaluated once per (query, distance) and read by (query, key) through the
paper's relative shift (Appendix B); on the eager reference, gathered pair by pair by i − j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import RelativeTerm, Scores


@dataclass
class TransformerXlConfig(EncodingConfig):
    name: str = "transformer_xl"
    base: float = 10000.0  # R_d's wavelengths grow as base^(2m/d_model)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature.kind != "none":
            raise ValueError(
                "encoding.temperature with transformer_xl: a temperature on q would scale u's term and not "
                "v's; Transformer-XL's biases have no tempered form here"
            )


def relative_sinusoids(distances: torch.Tensor, d_model: int, base: float) -> torch.Tensor:
    """R_d = [sin(d·ω) | cos(d·ω)], ω_m = base^(−2m/d_model). distances (D,) -> (D, d_model) fp32"""
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64, device=distances.device) / d_model)
    angles = distances.double()[:, None] * inv_freq[None]
    return torch.cat((angles.sin(), angles.cos()), dim=-1).float()


@ENCODINGS.register("transformer_xl", TransformerXlConfig)
class TransformerXl(PositionalEncoding):
    cfg: TransformerXlConfig

    def __init__(
        self,
        cfg: TransformerXlConfig,
        d_model: int,
        n_heads: int,
        head_dim: int,
        init_std: float,
        n_layers: int = 1,
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.relative = nn.ModuleList(
            nn.Linear(d_model, n_heads * head_dim, bias=False) for _ in range(n_layers)
        )
        # content and position biases (r_w_bias, r_r_bias); drawn N(0, init_std) by the model's init
        self.u = nn.Parameter(torch.empty(n_heads, head_dim))
        self.v = nn.Parameter(torch.empty(n_heads, head_dim))

    def rotate_qk(
        self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q + self.u[None, :, None, :].to(q.dtype), k  # (a) + (c): (q + u)·k

    def scores(self) -> Scores:
        term = RelativeTerm(self.score_mod, self.relative_queries, self.relative_table)
        return Scores(score_mod=term, position_local=False)

    def relative_queries(self, q: torch.Tensor, layer: int) -> torch.Tensor:
        """q + v − u (the query holds u), scaled as q is: (b) + (d)'s query. q (B, H, b, Dh), scaled"""
        shift = (self.v - self.u)[None, :, None, :] * self.head_dim**-0.5
        return q + shift.to(q.dtype)

    def relative_table(self, distances: torch.Tensor, layer: int) -> torch.Tensor:
        """W_R R_d per head. distances (D,) -> (H, D, Dh)"""
        r = self.relative[layer](relative_sinusoids(distances, self.d_model, self.cfg.base))  # (D, H·Dh)
        return r.view(-1, self.n_heads, self.head_dim).transpose(0, 1)

    def score_mod(self, scores: torch.Tensor, q: torch.Tensor, layer: int) -> torch.Tensor:
        """scores + (q + v)·W_R R_{i−j} for a block of the last b queries of a prefix of ``end`` keys
        (the explicit paths' layout), pair by pair. scores (B, H, b, end); q (B, H, b, Dh), scaled,
        holding u."""
        b, end = scores.shape[-2:]
        distances = torch.arange(end, device=q.device)
        r = self.relative_table(distances, layer)  # (H, D, Dh)
        by_distance = self.relative_queries(q, layer) @ r.transpose(-2, -1).to(q.dtype)  # (B, H, b, D)
        rows = torch.arange(end - b, end, device=q.device)
        distance = (rows[:, None] - distances[None, :]).clamp(min=0)  # (b, end); the future is -inf anyway
        return scores + by_distance.gather(-1, distance.expand(*by_distance.shape[:2], b, end))
