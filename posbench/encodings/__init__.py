"""Positional encodings, registered by the name users type (``encoding=NAME``).

Adding a scheme: one class overriding the hooks it needs (see ``base.py``), one config
dataclass, one line in ``ENCODINGS`` and one ``configs/encoding/NAME.yaml``.
"""

from __future__ import annotations

from posbench.encodings.absolute import Learned, LearnedConfig, NoPE, NopeConfig, Sinusoidal, SinusoidalConfig
from posbench.encodings.alibi import Alibi, AlibiConfig, alibi_slopes
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.rope import Rope, RopeConfig

ENCODINGS: dict[str, tuple[type[EncodingConfig], type[PositionalEncoding]]] = {
    "nope": (NopeConfig, NoPE),
    "sinusoidal": (SinusoidalConfig, Sinusoidal),
    "learned": (LearnedConfig, Learned),
    "rope": (RopeConfig, Rope),
    "alibi": (AlibiConfig, Alibi),
}


def build_encoding(cfg: EncodingConfig, d_model: int, n_heads: int, head_dim: int, init_std: float) -> PositionalEncoding:
    if cfg.name not in ENCODINGS:
        raise ValueError(f"unknown encoding {cfg.name!r}; valid encodings: {', '.join(sorted(ENCODINGS))}")
    return ENCODINGS[cfg.name][1](cfg, d_model, n_heads, head_dim, init_std)


__all__ = ["ENCODINGS", "EncodingConfig", "PositionalEncoding", "alibi_slopes", "build_encoding"]
