"""The encodings the benchmark scripts measure: every registered encoding under its own name, plus
named variants of an encoding's options (temperatures, p-RoPE, remaps), built the same way.
Imported by bench_eval.py and bench_train.py (scripts/ is on their path)."""

from __future__ import annotations

from posbench.encodings import ENCODINGS, EncodingConfig
from posbench.encodings.remap import SelfExtendConfig
from posbench.encodings.temperature import LogNConfig, SsmaxConfig

# variant -> (encoding, its options); remaps are evaluation-only
VARIANTS = {
    "rope+logn": ("rope", {"temperature": LogNConfig(base_length=2048)}),
    "nope+ssmax": ("nope", {"temperature": SsmaxConfig(base_length=2048)}),
    "rope+p0.75": ("rope", {"p_rope": 0.75}),
    "rope+self_extend": ("rope", {"remap": SelfExtendConfig(window=512, group=8)}),
}
EVAL_ONLY = ("rope+self_extend",)


def names(training: bool = False) -> list[str]:
    variants = [name for name in VARIANTS if not (training and name in EVAL_ONLY)]
    return sorted(ENCODINGS) + variants


def encoding_config(name: str, length: int) -> EncodingConfig:
    """The config of an encoding or variant for windows of ``length`` (learned positions reach it)."""
    base, options = VARIANTS.get(name, (name, {}))
    if base == "learned":
        options = {**options, "max_positions": length}
    return ENCODINGS.schema(base)(**options)
