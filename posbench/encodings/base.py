"""The positional-encoding interface: hooks at fixed sites, each a no-op by default, and one
description of what the encoding does to the attention scores.

The model calls every hook at a fixed site (README, "Architecture"):

| hook | shapes | site |
|---|---|---|
| ``positions(T, device)`` | -> (T,) | positions of a forward that was given none |
| ``embed_input(x, pos)`` | x (B, T, D), pos (T,) | token embeddings, before the first block |
| ``rotate_qk(q, k, pos)`` | q (B, H, T, Dh), k (B, Hkv, T, Dh) | every attention layer, after projection |
| ``query_factors(pos, layer)`` | -> (H or 1, T) or None | multiply the queries (temperature.py) |
| ``for_layer(layer)`` | -> an encoding | whose hooks one layer runs (a schedule's member) |
| ``key_bias(x, layer)`` | x (B, T, D) -> (B, H, T) or None | a bias per key from the layer input (FoX) |
| ``scores()`` | -> ``Scores`` | what the attention adds to or does with the logits (``scores.py``) |

``scores()`` names the encoding's own functions: a bias (``score_bias(q_pos, k_pos) -> (H, Tq,
Tk)``, added before softmax), a q/k decay (xPos), a score modifier (CoPE). The attention planner
reads it to choose the path (``model/planner.py``).

Positions are explicit int64 tensors, so a window may start at any offset and a bias may be
built for one block of queries at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from omegaconf import MISSING
from torch import nn

from posbench.common.options import Role, option
from posbench.encodings.positions import PositionSampler, position_sampler, positions_suffix
from posbench.encodings.scores import Scores
from posbench.encodings.temperature import TEMPERATURES, build_temperature, temperature_suffix


@dataclass
class EncodingConfig:
    # an encoding's options are the experiment, and ``posbench eval`` may change them on a trained
    # checkpoint (a scaling, a remap, a base): inference-time knobs; ``name`` picks the weights' class
    OPTION_ROLE: ClassVar[Role] = Role(at_eval=True)

    name: str = MISSING
    # attention temperature, chosen with `encoding/temperature=KIND` (temperature.py); typed by its kind
    temperature: Any = option(None, at_eval=True, off={"kind": "none"})

    def __post_init__(self) -> None:
        self.temperature = TEMPERATURES.coerce(self.temperature)

    def label(self) -> str:
        """The encoding's part of a run's identity (results, run folders, W&B): its name, plus what
        changes the experiment under that name (randomized positions, a temperature, a RoPE scaling,
        hybrid members)."""
        return self.name + positions_suffix(self) + temperature_suffix(TEMPERATURES.coerce(self.temperature))


class PositionalEncoding(nn.Module):
    """Base class: an encoding overrides only the hooks it needs."""

    def __init__(
        self,
        cfg: EncodingConfig,
        d_model: int,
        n_heads: int,
        head_dim: int,
        init_std: float,
        n_layers: int = 1,
    ):
        super().__init__()
        self.cfg = cfg
        self.d_model, self.n_heads, self.head_dim, self.init_std = d_model, n_heads, head_dim, init_std
        self.n_layers = n_layers
        # 0..T-1, or what a config with PositionOptions asks for (randomized, PoSE)
        self.sampler: PositionSampler = position_sampler(cfg)
        self.query_temperature = build_temperature(TEMPERATURES.coerce(cfg.temperature), n_heads, n_layers)

    @property
    def label(self) -> str:
        """The name shown in results and run names: the config's ``label()``."""
        return self.cfg.label()

    def positions(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Positions for a forward that was given none. -> (T,) int64"""
        return self.sampler(seq_len, device, self.training)

    def embed_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotate_qk(
        self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> Optional[torch.Tensor]:
        """The additive bias (H, Tq, Tk) of queries at q_pos over keys at k_pos, or None."""
        return None

    def query_factors(self, pos: torch.Tensor, layer: int) -> Optional[torch.Tensor]:
        """Factors (H or 1, T) multiplying the queries at ``pos`` in ``layer`` (the temperature), or None."""
        return self.query_temperature.factors(pos, layer)

    def key_bias(self, x: torch.Tensor, layer: int) -> Optional[torch.Tensor]:
        """A bias (B, H, T) added to every query's logit of each key, from the layer's input x
        (B, T, D), or None; ``scores().key_bias`` says an encoding has one."""
        return None

    def uses_every_parameter(self) -> bool:
        """Whether every forward gives each of this encoding's parameters a gradient (DDP needs to
        know); a per-layer schedule's members hold parameters for layers they do not run."""
        return True

    def for_layer(self, layer: int) -> PositionalEncoding:
        """The encoding whose hooks ``layer`` runs: this one, or a per-layer schedule's member."""
        return self

    def scores(self) -> Scores:
        """What this encoding does to the attention scores; the default: nothing."""
        return Scores()

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        """Why this encoding cannot take ``seq_len`` positions, or None if it can."""
        return self.sampler.length_limit_reason(seq_len)

    def reset_parameters(self) -> None:
        """Initialise learned parameters (called from the model's one init function)."""
