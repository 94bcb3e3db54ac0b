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

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from posbench.checks import above, at_least


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


REMAP_CONFIGS: dict[str, type[RemapConfig]] = {
    "none": NoRemapConfig,
    "self_extend": SelfExtendConfig,
    "rerope": ReropeConfig,
    "leaky_rerope": LeakyReropeConfig,
}


def remap_config(value: Any) -> RemapConfig:
    """None, a dataclass, or a plain mapping (from YAML or a checkpoint) -> the kind's typed config."""
    if value is None:
        return NoRemapConfig()
    if isinstance(value, RemapConfig):
        return value
    if not isinstance(value, Mapping) and not OmegaConf.is_dict(value):
        raise ValueError(f"encoding.remap must be a mapping with a kind, got {value!r}")
    plain = dict(OmegaConf.to_container(value) if OmegaConf.is_dict(value) else value)
    kind = plain.get("kind", "none")
    if kind not in REMAP_CONFIGS:
        raise ValueError(f"unknown encoding.remap.kind {kind!r}; valid: {', '.join(REMAP_CONFIGS)}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(REMAP_CONFIGS[kind]), plain)
    except OmegaConfBaseException as exc:
        valid = ", ".join(f.name for f in fields(REMAP_CONFIGS[kind]))
        raise ValueError(
            f"encoding.remap ({kind}): {str(exc).splitlines()[0]}; its keys are {valid}"
        ) from None
    return OmegaConf.to_object(typed)  # type: ignore[return-value]


def register_remap_schemas(store: Any = None) -> None:
    """Each kind's schema in Hydra's ConfigStore as ``schema/encoding/remap/<kind>``."""
    from hydra.core.config_store import ConfigStore

    store = store or ConfigStore.instance()
    for kind, cls in REMAP_CONFIGS.items():
        store.store(group="schema/encoding/remap", name=kind, node=cls)
