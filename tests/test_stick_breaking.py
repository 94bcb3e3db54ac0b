"""Protects encoding=stick_breaking: the weights against the paper's product form written out with
loops, weights that sum to one, blocks equal to the whole window, gradients, long evaluation."""

from __future__ import annotations

import math

import torch

from posbench.encodings import ENCODINGS
from posbench.model.attention import AttentionContext
from posbench.model.stick_breaking import stick_breaking_weights
from posbench.model.transformer import Transformer
from tests.conftest import tiny_model

VOCAB = 64


def model(attention: str = "auto", block: int = 8) -> Transformer:
    return tiny_model("stick_breaking", attention, block, vocab=VOCAB)


def by_hand(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """A_ij = β_ij Π_{j<k<i} (1 − β_ik) for j < i, and 1 − Σ_j A_ij on j = i. q, k (T, Dh) -> (T, T)"""
    T = q.shape[0]
    beta = torch.sigmoid((q.double() @ k.double().T) * scale)
    weights = torch.zeros(T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(i):
            weights[i, j] = beta[i, j] * math.prod(1 - beta[i, m] for m in range(j + 1, i))
        weights[i, i] = 1 - weights[i, :i].sum()
    return weights


def test_the_weights_are_the_papers_product_and_sum_to_one():
    q, k = torch.randn(1, 2, 13, 8) * 2, torch.randn(1, 2, 13, 8) * 2
    got = stick_breaking_weights(q, k, 0.35, 0)
    for h in range(2):
        torch.testing.assert_close(got[0, h].double(), by_hand(q[0, h], k[0, h], 0.35), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(1, 2, 13))
    assert (got >= -1e-6).all() and (got.triu(1) == 0).all()  # causal, a distribution per query
    block = stick_breaking_weights(q[:, :, 5:9], k[:, :, :9], 0.35, 5)  # a block of queries 5..8
    torch.testing.assert_close(block, got[:, :, 5:9, :9])


def test_blocks_equal_the_whole_window_and_train():
    whole, blocks = model("eager"), model(block=4)
    tokens = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(blocks(tokens), whole(tokens), rtol=1e-5, atol=1e-6)
    net = model().train()
    net(tokens).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in net.blocks[0].attn.parameters())


def test_one_layers_output_is_the_weighted_values():
    net = model()
    x = torch.randn(1, 11, 32)
    attn = net.blocks[0].attn
    q, k, v = attn.qkv_proj(x).view(1, 11, 12, 8).transpose(1, 2).split((4, 4, 4), dim=1)
    weights = torch.stack([by_hand(q[0, h], k[0, h], 1 / math.sqrt(8)) for h in range(4)])  # (H, T, T)
    want = attn.out_proj((weights @ v[0].double()).float().transpose(0, 1).reshape(1, 11, 32))
    ctx = AttentionContext(net.encoding, torch.arange(11), net.attention_plan(11, needs_grad=False))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, ctx), want, rtol=1e-4, atol=1e-5)


def test_long_evaluation_is_by_blocks_and_a_bias_is_refused():
    assert model(block=256).attention_plan(16384, needs_grad=False).name == "stick_breaking"
    from posbench.encodings.hybrid import HybridConfig

    cfg = HybridConfig(
        members="stick_breaking+alibi",
        options={
            "stick_breaking": ENCODINGS.schema("stick_breaking")(),
            "alibi": ENCODINGS.schema("alibi")(),
        },
    )
    torch.manual_seed(0)
    net = Transformer(model().cfg, cfg, VOCAB)
    assert "stick-breaking attention takes no positional bias" in net.length_limit_reason(64)


def test_the_blocks_own_backward_equals_autograd_through_the_weights():
    """StickBreaking's backward (weights recomputed, dz = G − β·C) against autograd through
    stick_breaking_weights, for q, k and v, over several blocks of a window."""
    from posbench.model.blocks import query_blocks
    from posbench.model.stick_breaking import stick_breaking_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8, requires_grad=True) for _ in range(3))
    weights = torch.randn(2, 3, 37, 8)

    def grads(attention):
        for t in (q, k, v):
            t.grad = None
        (attention() * weights).sum().backward()
        return [t.grad.clone() for t in (q, k, v)]

    def by_autograd():
        spans = query_blocks(37, 5, 2 * 3 * 4)
        blocks = [
            stick_breaking_weights(q[:, :, s:e] * 2, k[:, :, :e], 0.4, s) @ v[:, :, :e] for s, e in spans
        ]
        return torch.cat(blocks, dim=2)

    got = grads(lambda: stick_breaking_attention(q * 2, k, v, 0.4, 5))
    for a, b in zip(got, grads(by_autograd)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def chunked_and_whole(q, k, v, scale: float, block: int):
    """Outputs and q/k/v gradients by chunks and through the whole window's weights (autograd)."""
    from posbench.model.stick_breaking import stick_breaking_attention

    torch.manual_seed(1)
    probe = torch.randn(q.shape[0], q.shape[1], q.shape[2], v.shape[-1])
    results = []
    for attention in (
        lambda: stick_breaking_attention(q, k, v, scale, block),
        lambda: stick_breaking_weights(q, k, scale, 0) @ v,
    ):
        for t in (q, k, v):
            t.grad = None
        out = attention()
        (out * probe).sum().backward()
        results.append([out.detach()] + [t.grad.clone() for t in (q, k, v)])
    return results


def test_chunks_stop_where_the_stick_is_used_up_and_change_nothing(monkeypatch):
    """Logits near 0 (β ≈ 1/2) use the stick up within ~150 keys: at T = 1024 the far chunks are
    skipped, yet outputs and gradients equal the whole window's (their weights are exactly 0)."""
    from posbench.model import stick_breaking

    visited = []
    real = stick_breaking.broken_sticks
    monkeypatch.setattr(
        stick_breaking, "broken_sticks", lambda q, k, *a: visited.append(k.shape[-2]) or real(q, k, *a)
    )
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1024, 8, requires_grad=True) for _ in range(3))
    chunked, whole = chunked_and_whole(q, k, v, 0.1, 64)  # 64-row blocks, 128-key chunks
    chunks = len(visited) - visited.count(1024)  # forward and backward; the whole window's has 1024 keys
    # after 3 chunks each query has 320 earlier keys, whose log(1 - β) sum to about -220
    assert chunks <= 2 * 16 * 3 < 2 * sum(-(-(start + 64) // 128) for start in range(0, 1024, 64))
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunks_that_cannot_stop_visit_the_whole_prefix():
    """Logits far below 0 (β ≈ 0) leave the stick whole: every chunk counts, and all agree."""
    torch.manual_seed(0)
    q = (torch.randn(1, 2, 300, 8) - 3).requires_grad_()
    k = (torch.randn(1, 2, 300, 8) + 3).requires_grad_()
    v = torch.randn(1, 2, 300, 8, requires_grad=True)
    chunked, whole = chunked_and_whole(q, k, v, 0.5, 16)  # 16-row blocks, 32-key chunks
    assert whole[0].abs().max() > 0
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_every_key_a_block_skips_has_weight_exactly_zero():
    """The stop is exact, not a cut-off: the whole window's fp32 weight of every key left out is 0."""
    from posbench.model.stick_breaking import block_forward

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1024, 8) for _ in range(3))
    whole = stick_breaking_weights(q, k, 0.1, 0)
    skipped = 0
    for start in range(0, 1024, 64):
        out = torch.zeros(1, 2, 64, 8)
        visited = block_forward(q[:, :, start : start + 64], k, v, 0.1, start, 128, out)[1]
        first = visited[-1][0]  # the farthest chunk visited begins here
        assert (whole[:, :, start : start + 64, :first] == 0).all()
        skipped += 64 * first  # (query, key) pairs
    assert skipped > 1024 * 1024 // 4  # over half of the causal triangle
