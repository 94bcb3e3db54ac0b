"""Attention temperature: a factor on each query's logits that grows with the number of keys it
sees, so attention does not flatten as windows grow past the training length. Each kind is a
function of the query's position (and, for SSMax, a learned scale per layer and head); the
attention multiplies the queries by it (``PositionalEncoding.temperature``), so it composes with
every encoding and runs on every attention path. n = position + 1, the keys a causal query sees.

- ``logn``: log_{L0}(n) (Su 2021, "Entropy invariance and the scale of attention", kexue.fm
  8823: softmax(log_512(n)·qk/sqrt(d)); Chiang & Cholak 2022, ACL, scale the logits by log n).
  ``at_least_one: true`` is Qwen's inference-time form max(1, log_{L0} n) (QWenAttention's
  logn_list), the identity inside the training length.
- ``ssmax``: s_{l,h}·ln n, s learned per layer and head (Nakanishi 2025, "Scalable-Softmax Is
  Superior for Attention", §3: z -> n^{s·z} / sum n^{s·z}); s starts at 1/ln L0, where SSMax equals
  softmax at the training length.
- ``llama4``: 1 + attn_scale·ln(1 + floor(n / floor_scale)) (Llama 4's attention temperature tuning
  on its NoPE layers, transformers' Llama4TextAttention), 1 below floor_scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from posbench.common.checks import above
from posbench.common.registry import Registry


@dataclass
class TemperatureConfig:
    kind: str = "none"


@dataclass
class NoTemperatureConfig(TemperatureConfig):
    kind: str = "none"


@dataclass
class LogNConfig(TemperatureConfig):
    kind: str = "logn"
    base_length: int = 512  # L0: the factor is 1 at n = L0 (the YAML sets the training length)
    at_least_one: bool = False  # Qwen's max(1, log_{L0} n): no change inside the training length

    def __post_init__(self) -> None:
        above("encoding.temperature.base_length", self.base_length, 1, "the factor is log n / log L0")


@dataclass
class SsmaxConfig(TemperatureConfig):
    kind: str = "ssmax"
    base_length: int = 512  # L0: s starts at 1/ln L0 unless s_init is given
    s_init: Optional[float] = None

    def __post_init__(self) -> None:
        above("encoding.temperature.base_length", self.base_length, 1, "s starts at 1/ln L0")


@dataclass
class Llama4TemperatureConfig(TemperatureConfig):
    kind: str = "llama4"
    floor_scale: int = 8192  # transformers' Llama4TextConfig defaults
    attn_scale: float = 0.1

    def __post_init__(self) -> None:
        above("encoding.temperature.floor_scale", self.floor_scale, 0, "n is floor-divided by it")


def temperature_suffix(cfg: TemperatureConfig) -> str:
    """``+logn``, ``+ssmax``, ``+llama4t`` in an encoding's label; nothing without a temperature."""
    return {"none": "", "llama4": "+llama4t"}.get(cfg.kind, f"+{cfg.kind}")


def keys_seen(pos: torch.Tensor) -> torch.Tensor:
    """n = position + 1 as float64 (T,): the keys a causal query at that position sees."""
    return pos.to(torch.float64) + 1


class Temperature(nn.Module):
    """The null temperature (and the base of the others): ``factors`` returns None."""

    def __init__(self, cfg: TemperatureConfig, n_heads: int, n_layers: int):
        super().__init__()
        self.cfg = cfg

    def factors(self, pos: torch.Tensor, layer: int) -> Optional[torch.Tensor]:
        """The queries' factors at positions ``pos`` (T,) in ``layer``. -> (H or 1, T) or None"""
        return None

    def reset_parameters(self) -> None:
        """Initialise learned parameters (SSMax's s)."""


class LogN(Temperature):
    cfg: LogNConfig

    def factors(self, pos, layer):
        factor = keys_seen(pos).log() / math.log(self.cfg.base_length)
        factor = factor.clamp(min=1.0) if self.cfg.at_least_one else factor
        return factor.float()[None]


class Ssmax(Temperature):
    cfg: SsmaxConfig

    def __init__(self, cfg: SsmaxConfig, n_heads: int, n_layers: int):
        super().__init__(cfg, n_heads, n_layers)
        self.n_heads = n_heads
        # flat (layers·heads,): a gain, so the optimiser gives it no weight decay
        self.s = nn.Parameter(torch.empty(n_layers * n_heads))
        self.reset_parameters()

    def factors(self, pos, layer):
        s = self.s[layer * self.n_heads : (layer + 1) * self.n_heads]  # (H,)
        return s[:, None] * keys_seen(pos).log().to(s.dtype)[None]  # (H, T)

    def reset_parameters(self) -> None:
        init = self.cfg.s_init if self.cfg.s_init is not None else 1 / math.log(self.cfg.base_length)
        nn.init.constant_(self.s, init)


class Llama4Temperature(Temperature):
    cfg: Llama4TemperatureConfig

    def factors(self, pos, layer):
        steps = torch.floor(keys_seen(pos) / self.cfg.floor_scale)
        return (1 + self.cfg.attn_scale * torch.log1p(steps)).float()[None]


TEMPERATURES = Registry(  # encoding.temperature.kind -> (its config, its class)
    "encoding.temperature.kind", "schema/encoding/temperature", key="kind", default="none"
)
TEMPERATURES.add("none", NoTemperatureConfig, Temperature)
TEMPERATURES.add("logn", LogNConfig, LogN)
TEMPERATURES.add("ssmax", SsmaxConfig, Ssmax)
TEMPERATURES.add("llama4", Llama4TemperatureConfig, Llama4Temperature)


def build_temperature(cfg: TemperatureConfig, n_heads: int, n_layers: int) -> Temperature:
    return TEMPERATURES.implementation(cfg.kind)(cfg, n_heads, n_layers)
