"""T5's relative position bias: a learned scalar per (distance bucket, head), shared by all layers
(Raffel et al. 2020, "Exploring the Limits of Transfer Learning...", JMLR, §2.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import PoseOption
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import DistanceBias, Scores


@dataclass
class T5Config(EncodingConfig, PoseOption):
    name: str = "t5"
    num_buckets: int = 32
    max_distance: int = 128  # distances from here on share the last bucket

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()
        if self.num_buckets < 2 or self.max_distance <= self.num_buckets // 2:
            raise ValueError(
                f"encoding.num_buckets={self.num_buckets}, encoding.max_distance={self.max_distance}: "
                "need at least 2 buckets and max_distance above num_buckets/2 (the exact-distance buckets)"
            )


def t5_relative_bucket(
    relative_position: torch.Tensor,
    num_buckets: int = 32,
    max_distance: int = 128,
    bidirectional: bool = False,
) -> torch.Tensor:
    """Bucket of each ``relative_position = key_pos - query_pos`` (T5's memory - context).
    -> int64, same shape

    §2.1: "32 embeddings ... with ranges that increase in size logarithmically up to an offset of
    128, beyond which we assign all relative positions to the same embedding". As in the released
    Mesh TensorFlow code: bidirectional gives keys after the query their own half of the buckets;
    within a direction the first half of the buckets hold distances 0, 1, ... one each, and the rest
    split [exact, max_distance) logarithmically. Causal (bidirectional=False): future keys share bucket 0.
    """
    distance = -relative_position.long()  # query - key: positive for keys in the past
    offset = torch.zeros_like(distance)
    if bidirectional:
        num_buckets //= 2
        offset = (distance < 0).long() * num_buckets
        distance = distance.abs()
    else:
        distance = distance.clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.clamp(min=exact).to(torch.float64) / exact) / math.log(
        max_distance / exact
    )
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return offset + torch.where(distance < exact, distance, far)


@ENCODINGS.register("t5", T5Config)
class T5Bias(PositionalEncoding):
    cfg: T5Config

    def __init__(
        self, cfg: T5Config, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.table = nn.Embedding(cfg.num_buckets, n_heads)  # one table for every layer (§2.1)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.table.weight, std=self.init_std)

    def scores(self) -> Scores:
        return Scores(bias=DistanceBias(self.score_bias))

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """table[bucket(key - query)] per head. -> (H, Tq, Tk)

        Bucketed once per distance the window holds, then gathered per (query, key): the (H, D)
        per-distance values are all that autograd scatters back into, not a (Tq, Tk, H) lookup."""
        if not q_pos.numel() or not k_pos.numel():
            return self.table.weight.new_zeros(self.n_heads, q_pos.numel(), k_pos.numel())
        low = int(q_pos.min() - k_pos.max())  # the smallest query - key distance
        distances = torch.arange(low, int(q_pos.max() - k_pos.min()) + 1, device=q_pos.device)
        buckets = t5_relative_bucket(-distances, self.cfg.num_buckets, self.cfg.max_distance)
        per_distance = self.table(buckets).T  # (H, D)
        return per_distance[:, q_pos[:, None] - k_pos[None, :] - low]
