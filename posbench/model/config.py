"""The model's config schema: shape, norm, MLP, initialisation and attention backend."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from posbench.common.checks import above, at_least, within
from posbench.common.options import option


class Norm(str, Enum):
    layernorm = "layernorm"
    rmsnorm = "rmsnorm"


class Mlp(str, Enum):
    gelu = "gelu"
    swiglu = "swiglu"


class Attention(str, Enum):
    auto = "auto"
    sdpa = "sdpa"
    blockwise = "blockwise"
    linear = "linear"
    flex = "flex"
    eager = "eager"


@dataclass
class ModelConfig:
    name: str = MISSING
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    kv_heads: Optional[int] = None  # grouped-query attention; None = n_heads
    d_ff: Optional[int] = None  # None = 4·d_model (GELU) or 8/3·d_model rounded (SwiGLU)
    norm: Norm = Norm.layernorm
    mlp: Mlp = Mlp.gelu
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    # the attention backend and its query block compute the same function: not the experiment, and an
    # evaluation may choose its own
    attention: Attention = option(Attention.auto, experiment=False, at_eval=True)
    attention_block: int = option(1024, experiment=False, at_eval=True)  # the blockwise backend's

    def __post_init__(self) -> None:
        at_least("model.n_layers", self.n_layers, 1)
        at_least("model.d_model", self.d_model, 1, "the residual width")
        at_least("model.n_heads", self.n_heads, 1)
        at_least("model.kv_heads", self.kv_heads, 1, "null = model.n_heads", allow_none=True)
        at_least("model.d_ff", self.d_ff, 1, "null = the MLP's default width", allow_none=True)
        within("model.dropout", self.dropout, 0, 1, "a probability", open_high=True)
        above("model.init_std", self.init_std, 0, "the std of the weights' normal init")
        kv = self.kv_heads or self.n_heads
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                "pick a head count that divides the width"
            )
        if self.n_heads % kv:
            raise ValueError(
                f"model.kv_heads={kv} must divide model.n_heads={self.n_heads} "
                "(grouped-query attention shares each key/value head among n_heads/kv_heads queries)"
            )
        if self.attention_block < 1:
            raise ValueError("model.attention_block must be at least 1")
