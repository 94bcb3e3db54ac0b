"""Positional encodings, registered by the name users type (``encoding=NAME``).

Adding a scheme: one module with its config dataclass and its class, which overrides the hooks
it needs and describes what it does to the scores (``base.py``, ``scores.py``); then one line in
``ENCODINGS``, one ``configs/encoding/NAME.yaml`` and one line in ``configs/encoding/hybrid.yaml``
(README, "Adding an encoding").
"""

from __future__ import annotations

from posbench.encodings.absolute import Learned, LearnedConfig, NoPE, NopeConfig, Sinusoidal, SinusoidalConfig
from posbench.encodings.alibi import Alibi, AlibiConfig, alibi_slopes
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.cope import Cope, CopeConfig
from posbench.encodings.fire import Fire, FireConfig
from posbench.encodings.fox import Fox, FoxConfig
from posbench.encodings.hybrid import Hybrid, HybridConfig
from posbench.encodings.kerple import KerpleLog, KerpleLogConfig, KerplePower, KerplePowerConfig
from posbench.encodings.remap import REMAP_CONFIGS, register_remap_schemas
from posbench.encodings.rope import Rope, RopeConfig
from posbench.encodings.rope_scaling import SCALING_CONFIGS, register_scaling_schemas, rope_frequencies
from posbench.encodings.sandwich import Sandwich, SandwichConfig
from posbench.encodings.schedule import LayerSchedule, LayersConfig
from posbench.encodings.stick_breaking import StickBreaking, StickBreakingConfig
from posbench.encodings.t5 import T5Bias, T5Config, t5_relative_bucket
from posbench.encodings.temperature import TEMPERATURE_CONFIGS, register_temperature_schemas
from posbench.encodings.transformer_xl import TransformerXl, TransformerXlConfig
from posbench.encodings.xpos import Xpos, XposConfig

ENCODINGS: dict[str, tuple[type[EncodingConfig], type[PositionalEncoding]]] = {
    "nope": (NopeConfig, NoPE),
    "sinusoidal": (SinusoidalConfig, Sinusoidal),
    "learned": (LearnedConfig, Learned),
    "rope": (RopeConfig, Rope),
    "xpos": (XposConfig, Xpos),
    "alibi": (AlibiConfig, Alibi),
    "t5": (T5Config, T5Bias),
    "kerple_log": (KerpleLogConfig, KerpleLog),
    "kerple_power": (KerplePowerConfig, KerplePower),
    "fire": (FireConfig, Fire),
    "sandwich": (SandwichConfig, Sandwich),
    "cope": (CopeConfig, Cope),
    "fox": (FoxConfig, Fox),
    "stick_breaking": (StickBreakingConfig, StickBreaking),
    "transformer_xl": (TransformerXlConfig, TransformerXl),
    "hybrid": (HybridConfig, Hybrid),
    "layers": (LayersConfig, LayerSchedule),
}


def build_encoding(
    cfg: EncodingConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
) -> PositionalEncoding:
    if cfg.name not in ENCODINGS:
        raise ValueError(f"unknown encoding {cfg.name!r}; valid encodings: {', '.join(sorted(ENCODINGS))}")
    return ENCODINGS[cfg.name][1](cfg, d_model, n_heads, head_dim, init_std, n_layers)


__all__ = [
    "ENCODINGS",
    "REMAP_CONFIGS",
    "SCALING_CONFIGS",
    "TEMPERATURE_CONFIGS",
    "EncodingConfig",
    "PositionalEncoding",
    "alibi_slopes",
    "build_encoding",
    "register_remap_schemas",
    "register_scaling_schemas",
    "register_temperature_schemas",
    "rope_frequencies",
    "t5_relative_bucket",
]
