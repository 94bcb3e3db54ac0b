"""Inference-time position remaps of a trained rotary model: exact positions for the keys within a
neighbour window w of the query, remapped ones beyond it, the two attention maps merged.

- ``self_extend`` (Jin et al. 2024, "LLM Maybe LongLM: Self-Extend LLM Context Window Without
  Tuning", ICML, §3; datamllab/LongLM ``self_extend_patch``): beyond w, grouped positions: a key
  at floor(j/G), a query at floor(i/G) + w − floor(w/G), so the grouped distance joins the
  neighbours' at i − j = w.
- ``rerope`` (Su 2023, "ReRoPE", kexue.fm 9708; bojone/rerope): the relative distance clipped at
  w: beyond it the query is rotated at w and the key at 0.
- ``leaky_rerope`` (same): beyond w the distance grows by 1/k per position, w + (i − j − w)/k:
  the query at (i + w(k − 1))/k, the key at j/k.

A remap is an option of ``rope`` (``encoding/remap=KIND``); the attention path that merges the two
maps is ``model/remap.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posbench.common.checks import above, at_least
from posbench.common.registry import Registry


@dataclass
class RemapConfig:
    kind: str = "none"

    def check_window(self) -> None:
        at_least("encoding.remap.window", self.window, 1, "keys nearer than it keep their exact positions")

    def far_positions(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The positions queries and keys are rotated at for pairs at distance >= window. float64"""
        raise NotImplementedError


@dataclass
class NoRemapConfig(RemapConfig):
    kind: str = "none"

    def far_positions(self, q_pos, k_pos):
        return q_pos.double(), k_pos.double()


@dataclass
class SelfExtendConfig(RemapConfig):
    kind: str = "self_extend"
    window: int = 1024  # w; LongLM's README example: w = 1024, G = 4
    group: int = 4

    def __post_init__(self) -> None:
        self.check_window()
        at_least("encoding.remap.group", self.group, 1, "positions beyond the window are floor-divided by it")

    def far_positions(self, q_pos, k_pos):
        shift = self.window - self.window // self.group
        return (torch.div(q_pos, self.group, rounding_mode="floor") + shift).double(), torch.div(
            k_pos, self.group, rounding_mode="floor"
        ).double()


@dataclass
class ReropeConfig(RemapConfig):
    kind: str = "rerope"
    window: int = 512  # w; bojone/rerope's default

    def __post_init__(self) -> None:
        self.check_window()

    def far_positions(self, q_pos, k_pos):
        return torch.full_like(q_pos, self.window, dtype=torch.float64), torch.zeros_like(
            k_pos, dtype=torch.float64
        )


@dataclass
class LeakyReropeConfig(RemapConfig):
    kind: str = "leaky_rerope"
    window: int = 512
    k: float = 16.0  # bojone/rerope's scaling_factor

    def __post_init__(self) -> None:
        self.check_window()
        above("encoding.remap.k", self.k, 0, "beyond the window the distance grows by 1/k per position")

    def far_positions(self, q_pos, k_pos):
        return (q_pos.double() + self.window * (self.k - 1)) / self.k, k_pos.double() / self.k


REMAPS = Registry("encoding.remap.kind", "schema/encoding/remap", key="kind", default="none")
REMAPS.add("none", NoRemapConfig)
REMAPS.add("self_extend", SelfExtendConfig)
REMAPS.add("rerope", ReropeConfig)
REMAPS.add("leaky_rerope", LeakyReropeConfig)
