"""FIRE: a learned function of the log distance, normalised by the query's position
(Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long Context
Transformers", ICLR 2024, §3.2 "progressive interpolation" and its learnable threshold)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from posbench.encodings.base import EncodingConfig, PositionalEncoding

MLP_ELEMENTS_PER_CHUNK = 2**22  # hidden activations built at once for a long evaluation block


@dataclass
class FireConfig(EncodingConfig):
    name: str = "fire"
    mlp_width: int = 32  # one hidden layer, ReLU, one output per head (the paper's f_theta)
    init_c: float = 0.1  # psi(x) = log(c·x + 1)
    init_threshold: float = 512.0  # L in max(L, i): queries before L share one normaliser
    eps: float = 1e-6  # keeps the normaliser away from zero


class Fire(PositionalEncoding):
    """b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c·x + 1), c and L learned and positive.

    One MLP for all layers (as this harness shares every bias). The normaliser uses the query's own
    position i, so FIRE is relative only below the threshold: shifting every position past L changes it.
    """

    cfg: FireConfig
    has_bias = True

    def __init__(self, cfg: FireConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.mlp = nn.Sequential(nn.Linear(1, cfg.mlp_width), nn.ReLU(), nn.Linear(cfg.mlp_width, n_heads))
        # log-parameterised so c and L stay positive under any optimiser step (the paper's code takes |.|)
        self.log_c = nn.Parameter(torch.tensor(math.log(cfg.init_c)))
        self.log_threshold = nn.Parameter(torch.tensor(math.log(cfg.init_threshold)))

    @property
    def c(self) -> torch.Tensor:
        return self.log_c.exp()

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def reset_parameters(self) -> None:
        for layer in (self.mlp[0], self.mlp[2]):
            layer.reset_parameters()  # PyTorch's default init, as the paper's code
        with torch.no_grad():
            self.log_c.fill_(math.log(self.cfg.init_c))
            self.log_threshold.fill_(math.log(self.cfg.init_threshold))

    def normalized_distance(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """psi(|i - j|) / psi(max(L, i)), in [0, 1] for past keys. -> (Tq, Tk)"""
        distance = (q_pos[:, None] - k_pos[None, :]).abs().float()
        normaliser = torch.maximum(q_pos.float(), self.threshold)[:, None]  # (Tq, 1)
        psi = lambda x: torch.log1p(self.c * x)  # noqa: E731
        return psi(distance) / (psi(normaliser) + self.cfg.eps)

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """f_theta of the normalised distance, per head. -> (H, Tq, Tk)"""
        x = self.normalized_distance(q_pos, k_pos)
        rows = max(1, MLP_ELEMENTS_PER_CHUNK // (x.shape[1] * self.cfg.mlp_width))
        out = [self.mlp(chunk[..., None]) for chunk in x.split(rows)]  # (rows, Tk, H) each
        return torch.cat(out).permute(2, 0, 1)
