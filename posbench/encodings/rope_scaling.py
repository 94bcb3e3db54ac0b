"""RoPE frequency scaling kinds: one pure function per kind, and their per-kind configs.

Every kind maps (head_dim, base, scale s, original length, its own params) to
``(inv_freq, attention_factor)``. As in Hugging Face transformers (``modeling_rope_utils``),
``attention_factor`` multiplies cos and sin, so the logits of the rotated dimensions scale by
its square. ``rope_frequencies`` is the public entry point; ``original_max_position`` is
the length the model was trained at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, List, Optional

import torch

from posbench.common.checks import above, at_least
from posbench.common.registry import Registry

Frequencies = tuple[torch.Tensor, float]


def rope_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """RoFormer (Su et al. 2021) eq. 15: theta_i = base^(-2i/d), i = 0 .. d/2-1.
    -> (head_dim // 2,) float64"""
    return base ** (-torch.arange(0, head_dim // 2 * 2, 2, dtype=torch.float64) / head_dim)


def unscaled(head_dim: int, base: float, s: float, original: Optional[int]) -> Frequencies:
    return rope_inv_freq(head_dim, base), 1.0


def linear(head_dim: int, base: float, s: float, original: Optional[int]) -> Frequencies:
    """Position Interpolation (Chen et al. 2023, §2.2 eq. 4): position m becomes m/s, i.e. theta/s."""
    return rope_inv_freq(head_dim, base) / s, 1.0


def ntk(head_dim: int, base: float, s: float, original: Optional[int]) -> Frequencies:
    """NTK-aware interpolation (bloc97 2023; YaRN, Peng et al. 2023 §3.1): base' = base · s^(d/(d-2)),
    which stretches the lowest frequency by exactly s and leaves the highest almost unchanged."""
    if head_dim <= 2:
        raise ValueError(f"NTK-aware scaling needs more than 2 rotary dims (d/(d-2)), got {head_dim}")
    return rope_inv_freq(head_dim, base * s ** (head_dim / (head_dim - 2))), 1.0


def yarn_correction_dim(rotations: float, head_dim: int, base: float, original: int) -> float:
    """The (fractional) pair index d whose wavelength 2π·base^(2d/D) turns ``rotations`` times in
    ``original`` tokens, i.e. where YaRN's r(d) = L/λ_d equals ``rotations`` (YaRN §3.2)."""
    return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_ramp(
    head_dim: int, base: float, original: int, beta_fast: float, beta_slow: float, truncate: bool = True
) -> torch.Tensor:
    """YaRN's NTK-by-parts ramp over the pairs (§3.2): 0 where a pair turns more than beta_fast times
    in the original length, 1 where fewer than beta_slow, linear in the pair index between (the
    released code floors/ceils the two correction dims: ``truncate``). -> (head_dim // 2,) float64"""
    low = yarn_correction_dim(beta_fast, head_dim, base, original)
    high = yarn_correction_dim(beta_slow, head_dim, base, original)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # a one-dim ramp would divide by zero
    return ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)


def yarn(
    head_dim: int,
    base: float,
    s: float,
    original: int,
    *,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: Optional[float] = None,
    truncate: bool = True,
) -> Frequencies:
    """YaRN (Peng et al. 2023, ICLR 2024). §3.2 "NTK-by-parts": pairs that turn more than beta_fast
    times in the original length keep theta, pairs that turn fewer than beta_slow times take
    theta/s, and a linear ramp blends between. As in the authors' released code (and HF), the ramp is
    linear in the pair index between the floor/ceil of the two correction dims (§3.2 writes it as a
    ramp in r(d)). §3.4: sqrt(1/t) = 0.1·ln(s) + 1 multiplies cos and sin."""
    ramp = yarn_ramp(head_dim, base, original, beta_fast, beta_slow, truncate)  # 1 = interpolate
    theta = rope_inv_freq(head_dim, base)
    inv_freq = theta * (1 - ramp) + (theta / s) * ramp
    if attention_factor is None:
        attention_factor = 0.1 * math.log(s) + 1.0 if s > 1 else 1.0
    return inv_freq, attention_factor


def llama3(
    head_dim: int,
    base: float,
    s: float,
    original: int,
    *,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
) -> Frequencies:
    """Llama 3.1 scaling (Meta's reference ``apply_scaling``; HF ``_compute_llama3_parameters``):
    wavelengths shorter than original/high_freq_factor keep theta, longer than original/low_freq_factor
    take theta/s, and in between blend with weight (original/λ - low) / (high - low)."""
    if high_freq_factor <= low_freq_factor:
        raise ValueError(
            f"llama3 scaling needs high_freq_factor > low_freq_factor, got {high_freq_factor} <= "
            f"{low_freq_factor}"
        )
    theta = rope_inv_freq(head_dim, base)
    wavelength = 2 * math.pi / theta
    keep = ((original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    return theta * keep + (theta / s) * (1 - keep), 1.0


def longrope_seed_factors(
    head_dim: int, base: float, s: float, original: int, beta_fast: float = 32.0, beta_slow: float = 1.0
) -> list[float]:
    """The rescale factors LongRoPE's search starts from (microsoft/LongRoPE, evolution/search.py, built
    from YaRN's ramp): λ_i = 1 + (s - 1)·ramp_i, i.e. 1 for the fast pairs, s for the slow ones, linear
    between. A documented rule, not a search."""
    return (1 + (s - 1) * yarn_ramp(head_dim, base, original, beta_fast, beta_slow)).tolist()


def longrope(
    head_dim: int,
    base: float,
    s: float,
    original: int,
    *,
    seq_len: Optional[int] = None,
    short_factor: Optional[list[float]] = None,
    long_factor: Optional[list[float]] = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: Optional[float] = None,
) -> Frequencies:
    """LongRoPE (Ding et al. 2024, ICML, §3; HF ``_compute_longrope_parameters``): θ_i / λ_i with one
    rescale factor per pair, the short list up to the original length and the long list past it;
    cos and sin times sqrt(1 + ln s / ln L0) (1 when s <= 1). A null short list is all ones, a null long
    list ``longrope_seed_factors``."""
    pairs = head_dim // 2
    if seq_len is not None and seq_len > original:
        factors = (
            long_factor
            if long_factor is not None
            else longrope_seed_factors(head_dim, base, s, original, beta_fast, beta_slow)
        )
    else:
        factors = short_factor if short_factor is not None else [1.0] * pairs
    if len(factors) != pairs:
        raise ValueError(
            f"encoding.scaling longrope factors need one entry per rotary pair ({pairs} for {head_dim} "
            f"rotary dims), got {len(factors)}"
        )
    if attention_factor is None:
        attention_factor = math.sqrt(1 + math.log(s) / math.log(original)) if s > 1 else 1.0
    return rope_inv_freq(head_dim, base) / torch.tensor(factors, dtype=torch.float64), attention_factor


@dataclass(frozen=True)
class ScalingKind:
    frequencies: Callable[..., Frequencies]
    dynamic: bool  # the scale follows the current length on every call
    needs_original: bool  # reads original_max_position even at a fixed factor
    reads_length: bool = False  # takes the current length itself (longrope switches lists at L0)


def dynamic_scale(factor: float, seq_len: int, original: int) -> float:
    """Dynamic scaling (emozilla 2023; YaRN §3.3; HF "dynamic"): s = factor·L/L0 - (factor - 1) for the
    current length L past the original L0, else 1. With factor 1 this is YaRN's s = max(1, L/L0)."""
    return factor * max(seq_len, original) / original - (factor - 1)


def scale_for(scaling: str, factor: float | str, original: Optional[int], seq_len: Optional[int]) -> float:
    """The scale s a kind uses now. ``factor="auto"``: static kinds take max(1, L/L0); dynamic kinds
    take factor 1, since their rule already follows the length."""
    kind = SCALINGS.implementation(scaling)
    needs_length = factor == "auto" or kind.dynamic
    if (kind.needs_original or needs_length) and original is None:
        raise ValueError(
            f"RoPE scaling {scaling!r} (factor {factor!r}) needs original_max_position, the training length"
        )
    if needs_length and seq_len is None and not kind.dynamic:
        raise ValueError("factor='auto' needs seq_len, the current length")
    numeric = 1.0 if factor == "auto" else float(factor)
    if kind.dynamic:
        return dynamic_scale(numeric, seq_len or original, original)  # type: ignore[arg-type]
    return max(1.0, seq_len / original) if factor == "auto" else numeric  # type: ignore[operator]


def rope_frequencies(
    head_dim: int,
    base: float = 10000.0,
    scaling: str = "none",
    factor: float | str = 1.0,
    original_max_position: Optional[int] = None,
    seq_len: Optional[int] = None,
    **params: Any,
) -> Frequencies:
    """(inv_freq (head_dim // 2,) float64, attention_factor) of one scaling kind at the current length.

    ``factor``: a number >= 1 or "auto" (= seq_len / original_max_position, at least 1);
    ``params``: the kind's own values (yarn: beta_fast, beta_slow, attention_factor, truncate;
    llama3: low_freq_factor, high_freq_factor). Nothing is cached: every call computes afresh.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"unknown RoPE scaling {scaling!r}; valid: {', '.join(SCALINGS)}")
    if factor != "auto" and float(factor) < 1:
        raise ValueError(f"RoPE scaling factor must be >= 1 (1 = unscaled) or 'auto', got {factor}")
    s = scale_for(scaling, factor, original_max_position, seq_len)
    kind = SCALINGS.implementation(scaling)
    if kind.reads_length:
        params = {**params, "seq_len": seq_len}
    return kind.frequencies(head_dim, base, s, original_max_position, **params)


# ---- per-kind configs (``encoding/scaling=KIND``) ------------------------------------------------


@dataclass
class ScalingConfig:
    kind: str = "none"
    # a number >= 1, or "auto" = current length (last position + 1) / original_max_position
    factor: Any = 1.0
    # the length the model was trained at (the YAML sets ${train.seq_len})
    original_max_position: Optional[int] = None

    def __post_init__(self) -> None:
        SCALINGS.entry(self.kind)  # an unknown kind fails in one line naming the known ones
        if self.factor != "auto":
            try:
                self.factor = float(self.factor)
            except (TypeError, ValueError):
                self.factor = -1.0
            if self.factor < 1:
                raise ValueError(
                    "encoding.scaling.factor must be a number >= 1 (1 = unscaled) or auto "
                    "(= evaluation length / original_max_position)"
                )
        kind = SCALINGS.implementation(self.kind)
        if (
            kind.needs_original or kind.dynamic or self.factor == "auto"
        ) and self.original_max_position is None:
            raise ValueError(
                f"encoding.scaling.original_max_position is unset for kind {self.kind!r}: "
                "set it to the length the model was trained at (the YAML default is ${train.seq_len})"
            )
        at_least(
            "encoding.scaling.original_max_position",
            self.original_max_position,
            1,
            "the training length",
            allow_none=True,
        )

    def params(self) -> dict[str, Any]:
        """The kind's own knobs (fields beyond the shared three)."""
        shared = {f.name for f in fields(ScalingConfig)}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in shared}

    def frequencies(self, head_dim: int, base: float, seq_len: int) -> Frequencies:
        return rope_frequencies(
            head_dim, base, self.kind, self.factor, self.original_max_position, seq_len, **self.params()
        )


@dataclass
class NoScalingConfig(ScalingConfig):
    kind: str = "none"


@dataclass
class LinearScalingConfig(ScalingConfig):
    kind: str = "linear"


@dataclass
class NtkScalingConfig(ScalingConfig):
    kind: str = "ntk"


@dataclass
class DynamicNtkScalingConfig(ScalingConfig):
    kind: str = "dynamic_ntk"


@dataclass
class YarnScalingConfig(ScalingConfig):
    kind: str = "yarn"
    beta_fast: float = 32.0  # pairs turning more often than this in the original length keep theta
    beta_slow: float = 1.0  # pairs turning less often than this are fully interpolated
    attention_factor: Optional[float] = None  # null = 0.1·ln(s) + 1 (YaRN §3.4)
    truncate: bool = True  # floor/ceil the correction dims, as the released code does

    def __post_init__(self) -> None:
        super().__post_init__()
        above("encoding.scaling.beta_slow", self.beta_slow, 0, "rotations in the original length")
        above(
            "encoding.scaling.beta_fast",
            self.beta_fast,
            self.beta_slow,
            "above beta_slow: the ramp runs between",
        )
        if self.attention_factor is not None:
            above("encoding.scaling.attention_factor", self.attention_factor, 0, "null = 0.1·ln(s) + 1")


@dataclass
class DynamicYarnScalingConfig(YarnScalingConfig):
    kind: str = "dynamic_yarn"


@dataclass
class Llama3ScalingConfig(ScalingConfig):
    kind: str = "llama3"
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        above(
            "encoding.scaling.low_freq_factor",
            self.low_freq_factor,
            0,
            "original / it: the longest kept wavelength",
        )
        above(
            "encoding.scaling.high_freq_factor",
            self.high_freq_factor,
            self.low_freq_factor,
            "above low_freq_factor",
        )


@dataclass
class LongRopeScalingConfig(ScalingConfig):
    kind: str = "longrope"
    # one rescale factor per rotary pair (theta_i / factor_i); null: all 1 up to the original length,
    # and past it LongRoPE's search seed 1 + (s - 1)·ramp (YaRN's ramp between beta_fast and beta_slow)
    short_factor: Optional[List[float]] = None
    long_factor: Optional[List[float]] = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: Optional[float] = None  # null = sqrt(1 + ln s / ln original_max_position)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("short_factor", "long_factor"):
            values = getattr(self, key)
            if values is not None and any(v <= 0 for v in values):
                raise ValueError(
                    f"encoding.scaling.{key} must hold positive rescale factors, got {list(values)}"
                )
        above("encoding.scaling.beta_fast", self.beta_fast, self.beta_slow, "above beta_slow")
        if self.factor == "auto":
            raise ValueError(
                "encoding.scaling.factor=auto for longrope: its factors and attention factor are fixed, so "
                "give a number, the target length over original_max_position (e.g. 4)"
            )


SCALINGS = Registry("encoding.scaling.kind", "schema/encoding/scaling", key="kind", default="none")
SCALINGS.add("none", NoScalingConfig, ScalingKind(unscaled, dynamic=False, needs_original=False))
SCALINGS.add("linear", LinearScalingConfig, ScalingKind(linear, dynamic=False, needs_original=False))
SCALINGS.add("ntk", NtkScalingConfig, ScalingKind(ntk, dynamic=False, needs_original=False))
SCALINGS.add("dynamic_ntk", DynamicNtkScalingConfig, ScalingKind(ntk, dynamic=True, needs_original=True))
SCALINGS.add("yarn", YarnScalingConfig, ScalingKind(yarn, dynamic=False, needs_original=True))
SCALINGS.add("dynamic_yarn", DynamicYarnScalingConfig, ScalingKind(yarn, dynamic=True, needs_original=True))
SCALINGS.add("llama3", Llama3ScalingConfig, ScalingKind(llama3, dynamic=False, needs_original=True))
SCALINGS.add(
    "longrope",
    LongRopeScalingConfig,
    ScalingKind(longrope, dynamic=False, needs_original=True, reads_length=True),
)
