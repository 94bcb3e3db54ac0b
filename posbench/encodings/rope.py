"""Rotary position embedding (Su et al. 2021, "RoFormer", §3.4), with partial rotation, scaling,
p-RoPE's truncated spectrum and Resonance RoPE's integer wavelengths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from posbench.common.checks import above, within
from posbench.common.options import option
from posbench.encodings.base import EncodingConfig, PositionalEncoding
from posbench.encodings.positions import PoseOption, RandomPositionsOption
from posbench.encodings.registry import ENCODINGS
from posbench.encodings.remap import REMAPS
from posbench.encodings.rope_scaling import SCALINGS, Frequencies, rope_inv_freq
from posbench.encodings.scores import Remap, Scores

__all__ = ["Rope", "RopeConfig", "apply_rotary", "rope_inv_freq", "rotary_dims"]


@dataclass
class RopeConfig(EncodingConfig, RandomPositionsOption, PoseOption):
    name: str = "rope"
    base: float = 10000.0
    # fraction of each head's dims that rotate (GPT-NeoX "rotary_pct"); the rest pass through
    rotary_dim: float = 1.0
    # inference-time frequency scaling, chosen with `encoding/scaling=KIND` (see rope_scaling.py);
    # typed by its `kind` in __post_init__
    scaling: Any = None
    # p-RoPE (Barbero et al. 2025, "Round and Round We Go!", ICLR, §6): the fraction p of rotary
    # frequencies kept; the lowest 1 - p are set to 0 (those pairs do not rotate), the rest unchanged
    p_rope: float = option(1.0, at_eval=True, off=1.0)
    # Resonance RoPE (Wang et al. 2024, ACL Findings, §4): each wavelength 2π/θ rounded to an integer,
    # after any scaling (their YaRN variant rounds YaRN's frequencies)
    resonance: bool = option(False, at_eval=True, off=False)
    # an inference-time remap, `encoding/remap=KIND` (self_extend, rerope, leaky_rerope; remap.py)
    remap: Any = option(None, at_eval=True, off={"kind": "none"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positions()
        above("encoding.base", self.base, 1, "wavelengths grow as base^(2i/d)")
        if not 0 < self.rotary_dim <= 1:
            raise ValueError(
                f"encoding.rotary_dim={self.rotary_dim} is the rotated fraction of each head: pick 0 < "
                "rotary_dim <= 1"
            )
        self.scaling = SCALINGS.coerce(self.scaling)
        self.remap = REMAPS.coerce(self.remap)
        within("encoding.p_rope", self.p_rope, 0, 1, "the fraction of rotary frequencies kept")

    def label(self) -> str:
        kind = self.scaling.kind
        truncated = "" if self.p_rope == 1 else f"+p{self.p_rope:g}"
        resonance = "+resonance" if self.resonance else ""
        remap = "" if self.remap.kind == "none" else f"+{self.remap.kind}"
        return super().label() + truncated + resonance + ("" if kind == "none" else f"+{kind}") + remap


def resonance_frequencies(inv_freq: torch.Tensor) -> torch.Tensor:
    """θ̃ = 2π / round(2π / θ): every wavelength an integer number of positions (Wang et al. 2024,
    §4), so a pair's rotation repeats exactly every λ̃ positions. Frequencies of 0 stay 0."""
    wavelengths = torch.round(2 * math.pi / inv_freq)
    return torch.where(inv_freq > 0, 2 * math.pi / wavelengths, inv_freq)


def truncated_spectrum(inv_freq: torch.Tensor, kept: float) -> torch.Tensor:
    """p-RoPE: the first int(kept·n) of n frequencies (the highest) unchanged, the rest 0 (Barbero et
    al. 2025, §6: rope_angles = int(p·head_dim/2), the timescales past them infinite)."""
    out = inv_freq.clone()
    out[int(kept * inv_freq.numel() + 1e-9) :] = 0
    return out


def rotary_dims(head_dim: int, fraction: float) -> int:
    """The even number of dims that rotate: 2·floor(fraction·head_dim / 2)."""
    dims = 2 * int(head_dim * fraction / 2 + 1e-9)
    if dims < 2:
        raise ValueError(f"encoding.rotary_dim={fraction} rotates no pair of a {head_dim}-dim head; raise it")
    return dims


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+r/2}) by the angle of their frequency ("rotate half" layout).

    x (B, H, T, Dh); cos, sin (T, r/2). Dimensions past r = 2·len(cos) are left unrotated.
    """
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotated = (x1 * cos - x2 * sin, x2 * cos + x1 * sin)
    return torch.cat((*rotated, rest), dim=-1)


@ENCODINGS.register("rope", RopeConfig)
class Rope(PositionalEncoding):
    cfg: RopeConfig

    def __init__(
        self, cfg: RopeConfig, d_model: int, n_heads: int, head_dim: int, init_std: float, n_layers: int = 1
    ):
        super().__init__(cfg, d_model, n_heads, head_dim, init_std, n_layers)
        self.rotary = rotary_dims(head_dim, cfg.rotary_dim)
        self._cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # this forward's only

    def frequencies(self, seq_len: int) -> Frequencies:
        """(inv_freq (r/2,), attention_factor) at the current length, computed afresh every call:
        the scaling's, then Resonance's rounding, then p-RoPE's truncation."""
        inv_freq, attention_factor = self.cfg.scaling.frequencies(self.rotary, self.cfg.base, seq_len)
        if self.cfg.resonance:
            inv_freq = resonance_frequencies(inv_freq)
        if self.cfg.p_rope < 1:
            inv_freq = truncated_spectrum(inv_freq, self.cfg.p_rope)
        return inv_freq, attention_factor

    def cos_sin(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """attention_factor·cos/sin of pos·theta, (T, r/2) each, for the current length (last position + 1).

        Memoised only for the positions tensor of the current forward (shared by its layers), so a
        dynamic kind never reuses frequencies from an earlier, longer call."""
        if self._cached is not None and self._cached[0] is pos:
            return self._cached[1], self._cached[2]
        inv_freq, attention_factor = self.frequencies(int(pos.max()) + 1)
        angles = pos.to(torch.float64)[:, None] * inv_freq.to(pos.device)[None, :]  # (T, r/2)
        cos, sin = (attention_factor * angles.cos()).float(), (attention_factor * angles.sin()).float()
        self._cached = (pos, cos, sin)
        return cos, sin

    def rotate_qk(
        self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.remap.kind != "none":
            return q, k  # the remap's attention path rotates them, twice (model/remap.py)
        cos, sin = self.cos_sin(pos)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def rotate_at(self, x: torch.Tensor, pos: torch.Tensor, seq_len: int) -> torch.Tensor:
        """x (B, H, T, Dh) rotated at positions ``pos`` (T,), float ones too, with the frequencies of a
        window of ``seq_len`` positions (what a remap's two rotations share)."""
        inv_freq, attention_factor = self.frequencies(seq_len)
        angles = pos.to(torch.float64)[:, None] * inv_freq.to(pos.device)[None, :]  # (T, r/2)
        cos, sin = (attention_factor * angles.cos()).float(), (attention_factor * angles.sin()).float()
        return apply_rotary(x, cos, sin)

    def scores(self) -> Scores:
        """Unscaled rotations depend on each position alone; scaled kinds read the window's length;
        a remap rotates in the attention path, by distance."""
        remap = self.cfg.remap
        if remap.kind != "none":
            return Scores(
                position_local=False, remap=Remap(self.rotate_at, remap.far_positions, remap.window)
            )
        return Scores(position_local=self.cfg.scaling.kind == "none")
