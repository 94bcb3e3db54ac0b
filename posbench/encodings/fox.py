"""Forgetting attention (FoX: Lin et al. 2025, "Forgetting Transformer: Softmax Attention with a
Forget Gate", ICLR, §2): a scalar forget gate per head and token, f_t = σ(w_fᵀx_t + b_f), from the
attention layer's (normed) input x_t, and the logits

    o_i = Σ_j softmax_j(q_i·k_j/√d + D_ij) v_j,   D_ij = Σ_{l=j+1..i} log f_l = c_i − c_j,

with c = cumsum(log f). The row's c_i does not change its softmax, so the encoding hands the
attention a bias per key, −c_j (``key_bias``): data-dependent, but linear in length to build, and
no positional encoding besides (the paper's FoX uses none). Each layer has its own gates (the
released code's ``fgate_proj``: Linear(d_model, heads) with a bias); w_f ~ N(0, init_std) like
every matrix, b_f = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import Scores


@dataclass
class FoxConfig(EncodingConfig):
    name: str = "fox"


@ENCODINGS.register("fox", FoxConfig)
class Fox(PositionalEncoding):
    cfg: FoxConfig

    def __init__(
        self, cfg: FoxConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.gates = nn.ModuleList(nn.Linear(d_model, n_heads) for _ in range(n_layers))

    def key_bias(self, x: torch.Tensor, layer: int) -> Optional[torch.Tensor]:
        """−c_j = −Σ_{l<=j} log f_l for every key, fp32. x (B, T, D) -> (B, H, T)"""
        log_forget = F.logsigmoid(self.gates[layer](x).float())  # (B, T, H)
        return -log_forget.cumsum(dim=1).transpose(1, 2)

    def scores(self) -> Scores:
        """A bias per key from the layer's input; the cumulative sum reads the whole window."""
        return Scores(key_bias=True, position_local=False)

    def reset_parameters(self) -> None:
        for gate in self.gates:
            nn.init.zeros_(gate.bias)  # weights: the model's N(0, init_std) for matrices
