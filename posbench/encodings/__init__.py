"""Positional encodings, registered by the name users type (``encoding=NAME``).

Adding a scheme: one module with its config dataclass and its class, which overrides the hooks
it needs, describes what it does to the scores (``base.py``, ``scores.py``) and registers itself
(``@ENCODINGS.register("name", NameConfig)``, ``registry.py``); one ``configs/encoding/NAME.yaml``;
its test (README, "Adding an encoding"). This package imports every module in it, so the new one
is registered by being there.
"""

from __future__ import annotations

import importlib
import pkgutil

from posbench.encodings.alibi import alibi_slopes
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.remap import REMAPS
from posbench.encodings.rope_scaling import SCALINGS, rope_frequencies
from posbench.encodings.t5 import t5_relative_bucket
from posbench.encodings.temperature import TEMPERATURES

for _module in pkgutil.iter_modules(__path__):  # each encoding module registers itself on import
    importlib.import_module(f"{__name__}.{_module.name}")


def build_encoding(
    cfg: EncodingConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
) -> PositionalEncoding:
    return ENCODINGS.implementation(cfg.name)(cfg, d_model, n_heads, head_dim, init_std, n_layers)


__all__ = [
    "ENCODINGS",
    "REMAPS",
    "SCALINGS",
    "TEMPERATURES",
    "EncodingConfig",
    "PositionalEncoding",
    "alibi_slopes",
    "build_encoding",
    "rope_frequencies",
    "t5_relative_bucket",
]
