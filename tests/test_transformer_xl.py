"""Protects encoding=transformer_xl: the four terms of Dai et al. §3.3 written out per pair, blocks equal
to the whole window, gradients to W_R, u and v."""

from __future__ import annotations

import math

import pytest
import torch

from posbench.config import Attention, ModelConfig
from posbench.encodings import ENCODINGS
from posbench.model.attention import AttentionContext
from posbench.model.transformer import Transformer

VOCAB = 64


def model(attention: str = "auto", block: int = 8) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="test", n_layers=2, d_model=32, n_heads=4, attention=Attention(attention), attention_block=block
    )
    net = Transformer(cfg, ENCODINGS.schema("transformer_xl")(), VOCAB).eval()
    with torch.no_grad():
        net.encoding.u.normal_(0, 0.5)
        net.encoding.v.normal_(0, 0.5)
    return net


def sinusoid(d: int, d_model: int = 32) -> torch.Tensor:
    """R_d: sin(d / 10000^(2m/d_model)) for m < d_model/2, then the cosines (the released code's order)."""
    half = d_model // 2
    angles = [d / 10000 ** (2 * m / d_model) for m in range(half)]
    return torch.tensor([math.sin(a) for a in angles] + [math.cos(a) for a in angles], dtype=torch.float64)


def test_the_four_terms_of_the_paper():
    net = model()
    attn, enc = net.blocks[1].attn, net.encoding
    x = torch.randn(1, 12, 32)
    q, k, v = attn.qkv_proj(x).view(1, 12, 12, 8).transpose(1, 2).split((4, 4, 4), dim=1)
    w_r = enc.relative[1].weight.double()  # (H·Dh, d_model)
    u, v_bias = enc.u.double(), enc.v.double()
    logits = torch.full((4, 12, 12), float("-inf"), dtype=torch.float64)
    for h in range(4):
        for i in range(12):
            for j in range(i + 1):
                r = (w_r @ sinusoid(i - j)).view(4, 8)[h]
                qi, kj = q[0, h, i].double(), k[0, h, j].double()
                logits[h, i, j] = (qi @ kj + qi @ r + u[h] @ kj + v_bias[h] @ r) / math.sqrt(8)  # (a)-(d)
    want = attn.out_proj((logits.softmax(-1) @ v[0].double()).float().transpose(0, 1).reshape(1, 12, 32))
    ctx = AttentionContext(enc, torch.arange(12), net.attention_plan(12, needs_grad=False))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, ctx), want, rtol=1e-4, atol=1e-5)


def test_blocks_equal_the_whole_window_and_every_part_learns():
    whole, blocks = model("eager"), model("blockwise", block=5)
    tokens = torch.randint(0, VOCAB, (2, 27))
    with torch.no_grad():
        torch.testing.assert_close(blocks(tokens), whole(tokens), rtol=1e-4, atol=1e-5)
    net = model().train()
    net(tokens).logsumexp(-1).sum().backward()
    enc = net.encoding
    assert all(p.grad.abs().sum() > 0 for p in (enc.u, enc.v, enc.relative[0].weight, enc.relative[1].weight))


def test_a_temperature_is_refused():
    from posbench.encodings.temperature import LogNConfig

    with pytest.raises(ValueError, match="Transformer-XL's biases have no tempered form"):
        ENCODINGS.schema("transformer_xl")(temperature=LogNConfig())


def test_the_blockwise_gradients_equal_the_eager_ones():
    """The relative path's own backward (every parameter, W_R, u and v included) against autograd
    through the eager reference, over several query blocks."""
    tokens = torch.randint(0, VOCAB, (2, 27), generator=torch.Generator().manual_seed(1))
    grads = {}
    for attention in ("eager", "blockwise"):
        net = model(attention, block=5).train()
        assert net.attention_plan(27, needs_grad=True).name == attention
        net(tokens).logsumexp(-1).sum().backward()
        grads[attention] = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    assert grads["eager"].keys() == grads["blockwise"].keys()
    for name, grad in grads["eager"].items():
        torch.testing.assert_close(grads["blockwise"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
