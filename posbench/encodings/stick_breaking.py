"""Stick-breaking attention (Tan et al. 2025, "Scaling Stick-Breaking Attention: An Efficient
Implementation and In-depth Study", ICLR, §2): no softmax and no positional encoding. Query i
breaks a stick from its nearest key backwards: key j < i takes the fraction β_ij = σ(q_i·k_j/√d)
of what the nearer keys left,

    A_ij = β_ij · Π_{j<k<i} (1 − β_ik),   o_i = Σ_{j<i} A_ij v_j + (1 − Σ_j A_ij) v_i,

the remainder going to the query's own value, as the released code does (shawntan/
stickbreaking-attention, ``sb_ref.py``: ``attend_current=False`` and the remainder term). Order
comes from the breaking itself: a key's weight depends on how much every nearer key took. The
attention path is ``model/stick_breaking.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.scores import Scores


@dataclass
class StickBreakingConfig(EncodingConfig):
    name: str = "stick_breaking"


@ENCODINGS.register("stick_breaking", StickBreakingConfig)
class StickBreaking(PositionalEncoding):
    cfg: StickBreakingConfig

    def scores(self) -> Scores:
        return Scores(stick_breaking=True)
