"""Protects p-RoPE (the lowest frequencies set to 0) and Resonance RoPE (integer wavelengths): their
frequencies against the papers' definitions, p-RoPE against partial rotary, composition with YaRN."""

from __future__ import annotations

import math

import pytest
import torch

from posbench.encodings.rope import Rope, RopeConfig, rope_inv_freq
from posbench.encodings.rope_scaling import YarnScalingConfig
from tests.conftest import compose_run


def rope(**kw) -> Rope:
    return Rope(RopeConfig(**kw), d_model=64, n_heads=4, head_dim=16, init_std=0.02)


def test_p_rope_keeps_the_highest_frequencies_and_zeroes_the_rest():
    """Barbero et al. 2025, §6: rope_angles = int(p·Dh/2), timescales base^(2i/Dh) below it, inf past."""
    full, _ = rope().frequencies(100)
    truncated, _ = rope(p_rope=0.25).frequencies(100)
    kept = int(0.25 * 16 / 2)
    torch.testing.assert_close(truncated[:kept], full[:kept], rtol=0, atol=0)
    assert (truncated[kept:] == 0).all() and (full[kept:] > 0).all()


def test_p_rope_differs_from_partial_rotary_which_compresses_the_spectrum():
    """rotary_dim=0.5 rotates 8 of 16 dims with base^(-2i/8), the whole spectrum down to the slowest
    frequencies; p-RoPE keeps only the fast half, base^(-2i/16) for i < 4, so its slowest kept pair
    turns 30x faster than partial rotary's slowest, and the scores of the two differ."""
    p_freq, _ = rope(p_rope=0.5).frequencies(100)
    partial = rope(rotary_dim=0.5)
    partial_freq, _ = partial.frequencies(100)
    nonzero = p_freq[p_freq > 0]
    assert nonzero.numel() == partial_freq.numel() == 4
    torch.testing.assert_close(partial_freq, rope_inv_freq(8, 10000.0))  # the whole spectrum, in 8 dims
    assert partial_freq[-1] * 10 < nonzero[-1]  # 10000^(-6/8) vs 10000^(-6/16)
    q, k, pos = torch.randn(1, 4, 50, 16), torch.randn(1, 4, 50, 16), torch.arange(50)
    scores = [
        torch.einsum("bhid,bhjd->bhij", *enc.rotate_qk(q, k, pos)) for enc in (rope(p_rope=0.5), partial)
    ]
    assert not torch.allclose(*scores, atol=1e-3)


def test_p_rope_of_zero_has_no_position_information():
    q, k = torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
    enc = rope(p_rope=0.0)
    a = torch.einsum("bhid,bhjd->bhij", *enc.rotate_qk(q, k, torch.arange(30)))
    torch.testing.assert_close(a, torch.einsum("bhid,bhjd->bhij", q, k))


@pytest.mark.parametrize("scaling", [None, YarnScalingConfig(factor=4.0, original_max_position=64)])
def test_resonance_rounds_every_wavelength_after_the_scaling(scaling):
    """Wang et al. 2024, §4: θ̃ = 2π / round(2π/θ), applied to the (YaRN-)scaled frequencies."""
    plain, _ = rope(scaling=scaling).frequencies(256)
    rounded, _ = rope(scaling=scaling, resonance=True).frequencies(256)
    wavelengths = 2 * math.pi / rounded
    torch.testing.assert_close(wavelengths, torch.round(2 * math.pi / plain), rtol=1e-12, atol=0)
    assert ((2 * math.pi / plain - wavelengths).abs() <= 0.5 + 1e-9).all()


def test_resonance_rotations_repeat_exactly_after_each_integer_wavelength():
    enc = rope(resonance=True)
    inv_freq, _ = enc.frequencies(64)
    cos, sin = enc.cos_sin(torch.arange(4000))
    for i, wavelength in enumerate(torch.round(2 * math.pi / inv_freq).long().tolist()):
        if wavelength < 3000:
            torch.testing.assert_close(cos[wavelength:, i], cos[:-wavelength, i], atol=2e-5, rtol=0)
            torch.testing.assert_close(sin[wavelength:, i], sin[:-wavelength, i], atol=2e-5, rtol=0)


def test_labels_and_the_command_line():
    run = compose_run(
        "encoding=rope", "encoding.p_rope=0.75", "encoding.resonance=true", "encoding/scaling=yarn"
    )
    assert run.encoding.label() == "rope+p0.75+resonance+yarn"
    with pytest.raises(ValueError, match=r"encoding\.p_rope=1\.5 must be in"):
        RopeConfig(p_rope=1.5)
