"""Protects attention temperatures (encoding/temperature=logn|ssmax|llama4): each formula against its
transcription, the factor reaching the logits on every path, SSMax's learned scale, composition."""

from __future__ import annotations

import math

import pytest
import torch

from posbench.config import TrainConfig
from posbench.encodings import ENCODINGS
from posbench.encodings.hybrid import HybridConfig
from posbench.encodings.temperature import (
    TEMPERATURES,
    Llama4TemperatureConfig,
    LogNConfig,
    SsmaxConfig,
    build_temperature,
)
from posbench.model.transformer import Transformer
from posbench.training.optim import parameter_groups
from tests.conftest import compose_run, tiny_model

VOCAB = 64


def test_logn_is_log_base_l0_of_the_keys_seen():
    pos = torch.tensor([0, 1, 255, 511, 4095])
    got = build_temperature(LogNConfig(base_length=256), 4, 2).factors(pos, 0)[0]
    want = [math.log(p + 1) / math.log(256) for p in pos.tolist()]  # Su 2021: log_512(n), here L0 = 256
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=0)
    assert got[2] == 1.0  # n = L0
    floored = build_temperature(LogNConfig(base_length=256, at_least_one=True), 4, 2).factors(pos, 0)[0]
    torch.testing.assert_close(floored, torch.tensor([max(1.0, w) for w in want]))  # Qwen's logn_list


def test_llama4_temperature_matches_the_transformers_formula():
    """transformers' Llama4TextAttention: log1p(floor((cache_position + 1) / floor_scale)) * scale + 1."""
    cfg = Llama4TemperatureConfig(floor_scale=8, attn_scale=0.1)
    pos = torch.arange(40)
    got = build_temperature(cfg, 4, 2).factors(pos, 1)[0]
    want = [math.log1p(math.floor((p + 1) / 8)) * 0.1 + 1 for p in range(40)]
    torch.testing.assert_close(got, torch.tensor(want))
    assert (got[:7] == 1).all() and got[7] > 1  # the first step at n = floor_scale


def test_ssmax_is_s_times_ln_n_per_layer_and_head_starting_at_one_at_l0():
    temp = build_temperature(SsmaxConfig(base_length=128), n_heads=4, n_layers=3)
    pos = torch.tensor([0, 127, 1023])
    torch.testing.assert_close(temp.factors(pos, 2)[:, 1], torch.ones(4))  # s = 1/ln L0: softmax at n = L0
    with torch.no_grad():
        temp.s.copy_(torch.arange(12.0))
    factors = temp.factors(pos, 2)  # (H, T): layer 2's heads are s[8:12]
    want = torch.arange(8.0, 12.0)[:, None] * torch.tensor([math.log(p + 1) for p in pos.tolist()])[None]
    torch.testing.assert_close(factors, want)


def model(encoding_cfg, attention: str = "auto", n_layers: int = 2) -> Transformer:
    return tiny_model(encoding_cfg, attention, n_layers=n_layers, vocab=VOCAB)


def with_temperature(name: str, temperature):
    cfg = ENCODINGS.schema(name)()
    cfg.temperature = temperature
    return cfg


def test_the_factor_multiplies_each_querys_logits():
    """One NoPE layer with logn equals softmax(log_{L0}(i+1)·qk/sqrt(d)) written out by hand."""
    net = model(with_temperature("nope", LogNConfig(base_length=16)), n_layers=1)
    x = torch.randn(1, 24, 32)
    attn = net.blocks[0].attn
    qkv = attn.qkv_proj(x).view(1, 24, 12, 8).transpose(1, 2)
    q, k, v = qkv.split((4, 4, 4), dim=1)
    factor = torch.log(torch.arange(24.0) + 1) / math.log(16)
    scores = (q * factor[:, None]) @ k.transpose(-2, -1) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(24, 24, dtype=torch.bool).triu(1), float("-inf"))
    want = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 24, 32))
    from posbench.model.attention import AttentionContext

    pos = torch.arange(24)
    got = attn(x, AttentionContext(net.encoding, pos, net.attention_plan(24, needs_grad=False)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["nope", "rope", "alibi", "t5", "fire"])
@pytest.mark.parametrize("attention", ["sdpa", "blockwise", "linear"])
def test_every_path_takes_the_temperature(name, attention):
    temperature = SsmaxConfig(base_length=8, s_init=0.7)
    reference, net = (
        model(with_temperature(name, temperature), "eager"),
        model(with_temperature(name, temperature), attention),
    )
    plain = model(ENCODINGS.schema(name)(), attention)
    tokens = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        want, got, without = reference(tokens), net(tokens), plain(tokens)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, without, atol=1e-3)  # the temperature changed the logits


def test_ssmax_scale_learns_without_weight_decay():
    net = model(with_temperature("nope", SsmaxConfig(base_length=16))).train()
    net(torch.randint(0, VOCAB, (2, 20))).logsumexp(-1).sum().backward()
    s = net.encoding.query_temperature.s
    assert s.grad is not None and s.grad.abs().sum() > 0
    decayed, plain = parameter_groups(net)
    assert any(p is s for _, p in plain) and not any(p is s for _, p in decayed)
    assert TrainConfig().weight_decay > 0


def test_a_hybrid_multiplies_its_own_and_its_members_temperatures():
    members = {
        "rope": with_temperature("rope", LogNConfig(base_length=16)),
        "alibi": with_temperature("alibi", Llama4TemperatureConfig(floor_scale=4)),
    }
    cfg = HybridConfig(members="rope+alibi", options=members, temperature=LogNConfig(base_length=64))
    enc = model(cfg).encoding
    pos = torch.arange(30)
    parts = [
        build_temperature(t, 4, 2).factors(pos, 0) for t in (*[m.temperature for m in members.values()],)
    ]
    own = build_temperature(LogNConfig(base_length=64), 4, 2).factors(pos, 0)
    torch.testing.assert_close(enc.query_factors(pos, 0), parts[0] * parts[1] * own)
    assert enc.label == "rope+logn+alibi+llama4t+logn"


def test_the_command_line_picks_a_kind_with_the_training_length_as_l0():
    run = compose_run("encoding=rope", "encoding/temperature=logn", "train.seq_len=128")
    assert run.encoding.temperature == LogNConfig(base_length=128)
    assert run.encoding.label() == "rope+logn"
    assert compose_run("encoding=alibi").encoding.temperature == TEMPERATURES.coerce(None)


def test_an_unknown_kind_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="valid: none, logn, ssmax, llama4"):
        TEMPERATURES.coerce({"kind": "cold"})
