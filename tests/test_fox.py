"""Protects encoding=fox (forgetting attention): the decay D_ij = Σ_{l=j+1..i} log f_l written out by
hand, every path and bf16 against it, gate gradients, hybrids, long evaluation by blocks."""

from __future__ import annotations

import math

import pytest
import torch

from posbench.encodings import ENCODINGS
from posbench.encodings.fox import Fox
from posbench.encodings.hybrid import HybridConfig
from posbench.model.attention import AttentionContext
from posbench.model.transformer import Transformer
from tests.conftest import tiny_model

VOCAB = 64


def model(encoding_cfg=None, attention: str = "auto", block: int = 8, n_layers: int = 2) -> Transformer:
    net = tiny_model(encoding_cfg or ENCODINGS.schema("fox")(), attention, block, n_layers, VOCAB)
    fox = next(m for m in net.modules() if isinstance(m, Fox))
    with torch.no_grad():  # gates away from 1/2 everywhere: some heads forget fast, some slowly
        for gate in fox.gates:
            gate.bias.copy_(torch.tensor([-2.0, 0.0, 2.0, 5.0]))
    return net


def by_hand(attn, x: torch.Tensor, gate: torch.nn.Linear) -> torch.Tensor:
    """FoX eq.: o_i = Σ_j softmax_j(q_i·k_j/√d + Σ_{l=j+1..i} log σ(w·x_l + b)) v_j, with loops."""
    B, T, _ = x.shape
    q, k, v = attn.qkv_proj(x).view(B, T, 12, 8).transpose(1, 2).split((4, 4, 4), dim=1)
    log_f = torch.nn.functional.logsigmoid(gate(x)).transpose(1, 2).double()  # (B, H, T)
    decay = torch.full((B, 4, T, T), float("-inf"), dtype=torch.float64)
    for i in range(T):
        for j in range(i + 1):
            decay[:, :, i, j] = log_f[:, :, j + 1 : i + 1].sum(-1)
    scores = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(8) + decay
    y = (scores.softmax(-1) @ v.double()).float()
    return attn.out_proj(y.transpose(1, 2).reshape(B, T, 32))


def test_the_forget_gates_decay_the_logits_as_the_paper_writes():
    net = model(n_layers=1)
    x = torch.randn(2, 21, 32)
    ctx = AttentionContext(net.encoding, torch.arange(21), net.attention_plan(21, needs_grad=False))
    with torch.no_grad():
        got = net.blocks[0].attn(x, ctx)
        torch.testing.assert_close(
            got, by_hand(net.blocks[0].attn, x, net.encoding.gates[0]), rtol=1e-4, atol=1e-5
        )
    assert ctx.backend.name == "blockwise" and net.cfg.attention_block < 21  # several re-centred blocks


@pytest.mark.parametrize("block", [16, 1024])
def test_every_path_equals_eager_and_bf16_keeps_its_precision_far_out(block):
    reference, blocks = model(attention="eager"), model(block=block)
    tokens = torch.randint(0, VOCAB, (2, 300))
    with torch.no_grad():
        want = reference(tokens)
        torch.testing.assert_close(blocks(tokens), want, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = blocks(tokens).float()
    # head 0 forgets fast (c reaches ~-600 by the end): D_ij per row keeps bf16's error to rounding,
    # whether the 300 queries are many blocks or one
    assert (low - want).abs().max() < 0.1


def test_the_gates_learn():
    net = model().train()
    net(torch.randint(0, VOCAB, (2, 20))).logsumexp(-1).sum().backward()
    for gate in net.encoding.gates:
        assert gate.weight.grad.abs().sum() > 0 and gate.bias.grad.abs().sum() > 0
    fresh = Transformer(net.cfg, ENCODINGS.schema("fox")(), VOCAB)
    assert all((gate.bias == 0).all() for gate in fresh.encoding.gates)  # b_f = 0 (released code)


def test_fox_with_rope_in_a_hybrid():
    cfg = HybridConfig(
        members="rope+fox", options={"rope": ENCODINGS.schema("rope")(), "fox": ENCODINGS.schema("fox")()}
    )
    eager, blocks = model(cfg, "eager"), model(cfg, block=8)
    blocks.load_state_dict(eager.state_dict())
    tokens = torch.randint(0, VOCAB, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(blocks(tokens), eager(tokens), rtol=1e-4, atol=1e-5)
        alone = model(ENCODINGS.schema("fox")())
        alone.load_state_dict({k.replace("members.fox.", ""): v for k, v in eager.state_dict().items()})
        assert not torch.allclose(alone(tokens), eager(tokens), atol=1e-4)  # the rotation counts


def test_long_evaluation_is_by_blocks():
    net = model(block=256)
    plan = net.attention_plan(16384, needs_grad=False)
    assert type(plan).__name__ == "KeyBiasBlockwise" and plan.name == "blockwise"
    assert net.length_limit_reason(16384) is None


def test_fox_in_a_per_layer_schedule():
    from posbench.encodings.schedule import LayersConfig

    cfg = LayersConfig(pattern=["fox", "rope"])
    eager, blocks = model(cfg, "eager"), model(cfg, block=8)
    blocks.load_state_dict(eager.state_dict())
    tokens = torch.randint(0, VOCAB, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(blocks(tokens), eager(tokens), rtol=1e-4, atol=1e-5)
    assert not blocks.encoding.uses_every_parameter()  # layer 1's gates never run: DDP must know
    blocks.train()
    blocks(tokens).sum().backward()
    gates = blocks.encoding.members["fox"].gates
    assert gates[0].weight.grad is not None and gates[1].weight.grad is None


def parameter_grads(net: Transformer, tokens: torch.Tensor, bf16: bool = False) -> dict:
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = net(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("block", [16, 1024])
def test_training_gradients_through_the_key_bias_channels_equal_eager(block):
    """Training takes the channel path (the bias as q/k channels, boolean masks past the first block,
    or one causal call): every parameter's gradient equals eager's in fp32, the gates' included; in
    bf16 every gradient is within 1% of fp32's (in norm), the gates' too: theirs is a sum of dS over
    queries whose terms cancel (a softmax's dS sums to 0 along a row), which a bf16 dS would not keep."""
    reference, blocks = model(attention="eager").train(), model(block=block).train()
    tokens = torch.randint(0, VOCAB, (2, 301))
    want = parameter_grads(reference, tokens)
    got = parameter_grads(blocks, tokens)
    assert any(n.startswith("encoding.gates") for n in got) and got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)
    low = parameter_grads(blocks, tokens, bf16=True)
    for name in want:
        assert (low[name] - want[name]).norm() <= 0.01 * want[name].norm(), name
