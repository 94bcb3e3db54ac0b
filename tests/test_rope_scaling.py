"""Protects inference-time RoPE scaling: every kind against its formula, identity at factor 1, dynamic kinds
per call."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.errors import ConfigCompositionException

from posbench.encodings import SCALINGS, rope_frequencies
from posbench.encodings.rope import Rope, RopeConfig
from tests.conftest import compose_config, compose_run

KINDS = ["none", "linear", "ntk", "dynamic_ntk", "yarn", "dynamic_yarn", "llama3"]
STATIC = ["linear", "ntk", "yarn", "llama3"]
CASES = [
    (64, 10000.0, 4.0, 2048),
    (128, 500000.0, 8.0, 8192),
    (32, 10000.0, 2.5, 128),
]  # head_dim, base, s, L0


# ---- the formulas, written out independently (plain Python floats, one pair index at a time) ----


def theta(d: int, base: float) -> list[float]:
    return [1.0 / base ** (2 * i / d) for i in range(d // 2)]


def paper_linear(d, base, s, L0):
    return [t / s for t in theta(d, base)], 1.0


def paper_ntk(d, base, s, L0):
    return theta(d, base * s ** (d / (d - 2))), 1.0


def paper_yarn(d, base, s, L0, beta_fast=32.0, beta_slow=1.0):
    """Released YaRN code: pairs below the dim where r = beta_fast keep theta, above the dim where
    r = beta_slow take theta/s, linear ramp (in the pair index) between floor/ceil of the two."""

    def dim_where_rotations(rot):  # solve L0 / (2π base^(2i/d)) = rot for i
        return d / 2 * math.log(L0 / (2 * math.pi * rot)) / math.log(base)

    low = max(math.floor(dim_where_rotations(beta_fast)), 0)
    high = min(math.ceil(dim_where_rotations(beta_slow)), d - 1)
    out = []
    for i, t in enumerate(theta(d, base)):
        interpolate = min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(t / s * interpolate + t * (1 - interpolate))
    return out, (0.1 * math.log(s) + 1.0 if s > 1 else 1.0)


def paper_llama3(d, base, s, L0, low_freq_factor=1.0, high_freq_factor=4.0):
    out = []
    for t in theta(d, base):
        wavelength = 2 * math.pi / t
        if wavelength < L0 / high_freq_factor:
            out.append(t)
        elif wavelength > L0 / low_freq_factor:
            out.append(t / s)
        else:
            smooth = (L0 / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * t / s + smooth * t)
    return out, 1.0


PAPER = {"linear": paper_linear, "ntk": paper_ntk, "yarn": paper_yarn, "llama3": paper_llama3}


def check(actual, expected):
    inv_freq, factor = actual
    assert inv_freq.dtype == torch.float64 and inv_freq.shape == (len(expected[0]),)
    torch.testing.assert_close(inv_freq, torch.tensor(expected[0], dtype=torch.float64), rtol=1e-12, atol=0)
    assert factor == pytest.approx(expected[1], rel=1e-12)


@pytest.mark.parametrize("kind", STATIC)
@pytest.mark.parametrize("d,base,s,L0", CASES)
def test_static_kinds_match_their_formula(kind, d, base, s, L0):
    check(rope_frequencies(d, base, kind, s, original_max_position=L0), PAPER[kind](d, base, s, L0))


def test_yarn_and_llama3_params_reach_the_formula():
    check(
        rope_frequencies(64, 1e4, "yarn", 4.0, 1024, beta_fast=16.0, beta_slow=2.0),
        paper_yarn(64, 1e4, 4.0, 1024, 16.0, 2.0),
    )
    check(
        rope_frequencies(64, 1e4, "llama3", 8.0, 1024, low_freq_factor=2.0, high_freq_factor=8.0),
        paper_llama3(64, 1e4, 8.0, 1024, 2.0, 8.0),
    )
    assert rope_frequencies(64, 1e4, "yarn", 4.0, 1024, attention_factor=1.3)[1] == 1.3


@pytest.mark.parametrize("kind", KINDS)
def test_factor_one_is_the_identity(kind):
    plain = theta(64, 10000.0), 1.0
    check(rope_frequencies(64, 10000.0, kind, 1.0, original_max_position=512, seq_len=512), plain)
    check(
        rope_frequencies(64, 10000.0, kind, "auto", original_max_position=512, seq_len=300), plain
    )  # shorter: s = 1


@pytest.mark.parametrize("dynamic,static", [("dynamic_ntk", "ntk"), ("dynamic_yarn", "yarn")])
@pytest.mark.parametrize("factor,seq_len", [(1.0, 4096), (2.0, 3000), ("auto", 8192)])
def test_dynamic_kinds_equal_static_ones_at_the_same_effective_scale(dynamic, static, factor, seq_len):
    L0 = 1024
    f = 1.0 if factor == "auto" else factor
    s = f * seq_len / L0 - (f - 1)  # HF / emozilla dynamic rule, YaRN §3.3 for f = 1
    check(rope_frequencies(64, 1e4, dynamic, factor, L0, seq_len), PAPER[static](64, 1e4, s, L0))


@pytest.mark.parametrize("kind", STATIC)
def test_auto_factor_is_length_over_training_length(kind):
    check(rope_frequencies(64, 1e4, kind, "auto", 512, seq_len=2048), PAPER[kind](64, 1e4, 4.0, 512))


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown RoPE scaling"):
        rope_frequencies(64, scaling="ntkk")
    with pytest.raises(ValueError, match=">= 1"):
        rope_frequencies(64, scaling="linear", factor=0.5)
    with pytest.raises(ValueError, match="original_max_position"):
        rope_frequencies(64, scaling="yarn", factor=2.0)
    with pytest.raises(TypeError):
        rope_frequencies(64, scaling="linear", factor=2.0, beta_fast=3.0)


# ---- the encoding: cos/sin follow the current call, attention factor on cos and sin ----


def rope(kind: str, factor=1.0, **params) -> Rope:
    scaling = {"kind": kind, "factor": factor, "original_max_position": 64, **params}
    return Rope(RopeConfig(scaling=scaling), d_model=64, n_heads=4, head_dim=16, init_std=0.02)


@pytest.mark.parametrize("kind", ["dynamic_ntk", "dynamic_yarn", "linear"])
def test_a_longer_call_leaves_no_scaled_cache_behind(kind):
    fresh, used = rope(kind, "auto"), rope(kind, "auto")
    short = torch.arange(40)
    used.cos_sin(torch.arange(1000))  # a long evaluation first
    for a, b in zip(used.cos_sin(torch.arange(40)), fresh.cos_sin(short)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain = rope("none")
    for a, b in zip(used.cos_sin(torch.arange(40)), plain.cos_sin(short)):  # within L0: unscaled
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_model_outputs_do_not_depend_on_an_earlier_longer_call():
    from posbench.config import ModelConfig
    from posbench.model.transformer import Transformer

    torch.manual_seed(0)
    scaling = {"kind": "dynamic_yarn", "factor": 2.0, "original_max_position": 16}
    model = Transformer(
        ModelConfig(name="t", n_layers=1, d_model=32, n_heads=2), RopeConfig(scaling=scaling), 50
    ).eval()
    tokens = torch.randint(0, 50, (1, 24))
    with torch.no_grad():
        before = model(tokens)
        model(torch.randint(0, 50, (1, 200)))
        assert torch.equal(model(tokens), before)


def test_dynamic_rotation_follows_the_current_length():
    enc = rope("dynamic_ntk")
    cos_long, _ = enc.cos_sin(torch.arange(256))
    inv_freq, _ = rope_frequencies(16, 10000.0, "ntk", 4.0, 64)  # 256 / 64
    torch.testing.assert_close(
        cos_long, torch.cos(torch.arange(256, dtype=torch.float64)[:, None] * inv_freq).float()
    )


def test_yarn_attention_factor_scales_logits_by_its_square():
    q, k = torch.randn(1, 4, 256, 16), torch.randn(1, 4, 256, 16)
    pos = torch.arange(256)
    scaled = rope("yarn", 4.0)
    unscaled_logits = rope("yarn", 4.0, attention_factor=1.0)
    factor = 0.1 * math.log(4.0) + 1
    a = torch.einsum("bhid,bhjd->bhij", *scaled.rotate_qk(q, k, pos))
    b = torch.einsum("bhid,bhjd->bhij", *unscaled_logits.rotate_qk(q, k, pos))
    torch.testing.assert_close(a, b * factor**2, rtol=1e-4, atol=1e-4)


def test_partial_rotation_leaves_the_other_dims_alone():
    enc = Rope(RopeConfig(rotary_dim=0.25), d_model=128, n_heads=4, head_dim=32, init_std=0.02)
    assert enc.rotary == 8
    q, k = torch.randn(2, 4, 10, 32), torch.randn(2, 4, 10, 32)
    q2, _ = enc.rotate_qk(q, k, torch.arange(10))
    assert torch.equal(q2[..., 8:], q[..., 8:]) and not torch.allclose(q2[..., :8], q[..., :8])
    with pytest.raises(ValueError, match="rotary_dim"):
        RopeConfig(rotary_dim=1.5)


def test_labels_name_the_scaling():
    assert rope("yarn", 2.0).label == "rope+yarn" and rope("none").label == "rope"


# ---- configs: one file per kind, typed per kind ----


@pytest.mark.parametrize("kind", KINDS)
def test_every_scaling_config_composes(kind):
    run = compose_run("encoding=rope", f"encoding/scaling={kind}", "train.seq_len=300")
    assert run.encoding.scaling.kind == kind and run.encoding.scaling.original_max_position == 300
    assert type(run.encoding.scaling) is SCALINGS.schema(kind)


def test_scaling_is_chosen_per_kind_and_typos_fail():
    SCALINGS.store()
    run = compose_run(
        "encoding=xpos", "encoding/scaling=yarn", "encoding.scaling.factor=8", "encoding.scaling.beta_fast=16"
    )
    assert (run.encoding.scaling.factor, run.encoding.scaling.beta_fast) == (8.0, 16.0)
    with pytest.raises(ConfigCompositionException):
        compose_config("encoding=rope", "encoding/scaling=yarn", "encoding.scaling.beta_fastt=1")
    with pytest.raises(ConfigCompositionException):
        compose_config("encoding=rope", "encoding/scaling=linear", "encoding.scaling.beta_fast=1")
    with pytest.raises(ValueError, match="factor"):
        compose_run("encoding=rope", "encoding/scaling=linear", "encoding.scaling.factor=0.5")
    with pytest.raises(ValueError, match="beta_fast"):
        SCALINGS.coerce({"kind": "llama3", "factor": 2.0, "original_max_position": 64, "beta_fast": 3})
