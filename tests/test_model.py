"""Protects the model/encoding contract: hook shapes, explicit positions, causality, relative shift
invariance, backend parity."""

from __future__ import annotations

import pytest
import torch

from posbench.config import Attention, ModelConfig
from posbench.encodings import ENCODINGS, build_encoding
from posbench.encodings.scores import PairBias, Scores
from posbench.model.transformer import Transformer
from tests.conftest import planned_attention
from tests.conftest import tiny_model as shared_tiny_model

ALL = sorted(ENCODINGS)
# FIRE divides by the query position, so only distances below its threshold are shift-invariant
# (tested in test_encoding_formulas.py)
RELATIVE = [
    name for name in ALL if name not in {"sinusoidal", "learned", "fire", "hybrid"}
]  # hybrid: sinusoidal+alibi
VOCAB = 64


def tiny_model(encoding: str, attention: str = "auto", block: int = 16, **model_kw) -> Transformer:
    """Learned encoding parameters away from their init, so tests can see them."""
    return shared_tiny_model(encoding, attention, block, vocab=VOCAB, perturb=True, **model_kw)


@pytest.mark.parametrize("encoding", ALL)
def test_hooks_keep_shapes(encoding):
    enc = build_encoding(
        ENCODINGS.schema(encoding)(**({"max_positions": 64} if encoding == "learned" else {})), 32, 4, 8, 0.02
    )
    pos = torch.arange(5, 17)
    x = torch.randn(2, 12, 32)
    assert enc.embed_input(x, pos).shape == x.shape
    q, k = torch.randn(2, 4, 12, 8), torch.randn(2, 2, 12, 8)
    q2, k2 = enc.rotate_qk(q, k, pos)
    assert q2.shape == q.shape and k2.shape == k.shape
    bias = enc.score_bias(pos[3:7], pos)  # a block of queries against all keys
    assert bias is None or bias.shape == (4, 4, 12)
    assert (bias is not None) == (enc.scores().bias is not None)


@pytest.mark.parametrize("encoding", ALL)
@pytest.mark.parametrize("attention", ["sdpa", "blockwise", "eager"])
def test_causal(encoding, attention):
    """Changing a later token never changes earlier logits."""
    model = tiny_model(encoding, attention, block=5)
    tokens = torch.randint(0, VOCAB, (2, 23))
    changed = tokens.clone()
    changed[:, 15:] = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


@pytest.mark.parametrize("encoding", RELATIVE)
def test_relative_encodings_ignore_a_shift_of_all_positions(encoding):
    model = tiny_model(encoding)
    tokens = torch.randint(0, VOCAB, (2, 19))
    pos = torch.arange(19)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, pos), model(tokens, pos + 1000), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("encoding", ["sinusoidal", "learned"])
def test_absolute_encodings_use_the_positions_given(encoding):
    model = tiny_model(encoding)
    tokens = torch.randint(0, VOCAB, (1, 19))
    pos = torch.arange(19)
    with torch.no_grad():
        assert not torch.allclose(model(tokens, pos), model(tokens, pos + 7), atol=1e-4)


def test_learned_positions_past_the_table_are_refused():
    model = tiny_model("learned")
    assert model.encoding.length_limit_reason(512) is None
    assert "512" in model.encoding.length_limit_reason(600)
    with pytest.raises(ValueError, match="learned positions end at 512"):
        model(torch.zeros(1, 600, dtype=torch.long))


@pytest.mark.parametrize("encoding", ALL)
@pytest.mark.parametrize("attention,block", [("sdpa", 16), ("blockwise", 7), ("blockwise", 64)])
@pytest.mark.parametrize("offset", [0, 333])
def test_backends_agree_with_eager_reference(encoding, attention, block, offset):
    """fp32, odd length 37, block sizes that do not divide it, windows at an offset: atol 1e-5."""
    tokens = torch.randint(0, VOCAB, (2, 37))
    pos = torch.arange(37) + offset
    reference = tiny_model(encoding, "eager")
    other = tiny_model(encoding, attention, block)
    with torch.no_grad():
        torch.testing.assert_close(other(tokens, pos), reference(tokens, pos), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoding", ["fire", "t5", "cope"])
def test_blockwise_shrinks_its_blocks_to_a_bias_budget_and_stays_exact(encoding, monkeypatch):
    """With a tiny bias budget, blocks shrink as the key prefix grows (down to one row);
    positions two apart keep T5 off its shared-table path and on the per-block one, which runs
    each query block through all layers with the keys and values cached; CoPE's explicit scores
    shrink the same way."""
    from posbench.model import blocks
    from posbench.model.backends import ByBlocks

    monkeypatch.setattr(blocks, "BLOCK_BIAS_BYTES", 4 * 4 * 24)  # 24 (row, key) pairs of 4 heads
    assert blocks.block_rows(16, 4, 6) == 4 and blocks.block_rows(16, 4, 37) == 1
    tokens = torch.randint(0, VOCAB, (2, 37))
    pos = 2 * torch.arange(37) + 41
    reference = tiny_model(encoding, "eager")
    other = tiny_model(encoding, "blockwise", 16)
    assert not isinstance(
        other.attention_plan(37, pos, needs_grad=True), ByBlocks
    )  # with autograd: layer by layer
    # one query block at a time through all layers, its bias built once (not CoPE: scores)
    assert isinstance(other.attention_plan(37, pos, needs_grad=False), ByBlocks) == (encoding != "cope")
    with torch.no_grad():
        torch.testing.assert_close(
            other(tokens, pos + 1000), reference(tokens, pos + 1000), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            other(tokens[:, :30], pos[:30]), reference(tokens[:, :30], pos[:30]), rtol=1e-5, atol=1e-5
        )


def test_attend_blockwise_matches_full_mask_for_a_bias():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 3, 29, 8) for _ in range(3))
    pos = torch.arange(29)
    slopes = torch.tensor([0.5, 0.25, 0.125])

    def bias(qp, kp):
        return -slopes[:, None, None] * (qp[:, None] - kp[None, :]).float()

    scores = Scores(bias=PairBias(bias))
    full = planned_attention(q, k, v, pos, scores, 0.35, "sdpa")
    torch.testing.assert_close(
        planned_attention(q, k, v, pos, scores, 0.35, "blockwise", block=4), full, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        planned_attention(q, k, v, pos, scores, 0.35, "eager"), full, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "variant",
    [dict(kv_heads=2), dict(kv_heads=1), dict(norm="rmsnorm", mlp="swiglu"), dict(tie_embeddings=False)],
)
def test_model_variants_run_and_stay_causal(variant):
    from posbench.config import Mlp, Norm

    kw = dict(variant)
    if "norm" in kw:
        kw["norm"], kw["mlp"] = Norm(kw["norm"]), Mlp(kw["mlp"])
    model = tiny_model("rope", **kw)
    tokens = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        out = model(tokens)
        changed = tokens.clone()
        changed[:, -1] = (changed[:, -1] + 1) % VOCAB
        torch.testing.assert_close(model(changed)[:, :-1], out[:, :-1])
    assert out.shape == (2, 11, VOCAB)
    assert (model.lm_head.weight is model.embed.weight) == model.cfg.tie_embeddings


def test_grouped_query_attention_has_fewer_key_value_parameters():
    """One key/value head instead of four: each layer's k and v projections lose 3 heads' rows
    (2 x 3 x head_dim x d_model weights per layer), and nothing else changes."""
    full, grouped = tiny_model("rope"), tiny_model("rope", kv_heads=1)
    layers, d_model, head_dim = 2, 32, 8
    assert full.num_parameters() - grouped.num_parameters() == layers * 2 * 3 * head_dim * d_model
    qkv = [m.qkv_proj.weight.shape for m in grouped.modules() if hasattr(m, "qkv_proj")]
    assert qkv == [((4 + 2 * 1) * head_dim, d_model)] * layers


def test_only_position_local_encodings_run_by_blocks():
    """Rotations that read the whole window (scaled RoPE, xPos) and explicit scores (CoPE) keep the
    layer-by-layer path; an unscaled rotation with a per-block bias may go by blocks."""
    from posbench.encodings.hybrid import HybridConfig
    from posbench.encodings.rope_scaling import YarnScalingConfig
    from posbench.model.backends import ByBlocks

    def position_local(model: Transformer) -> bool:
        return model.encoding.scores().position_local

    assert position_local(tiny_model("fire")) and position_local(tiny_model("rope"))
    assert not position_local(tiny_model("xpos")) and not position_local(tiny_model("cope"))
    scaled = ENCODINGS.schema("rope")()
    scaled.scaling = YarnScalingConfig(factor=4.0, original_max_position=64)
    assert not position_local(
        Transformer(ModelConfig(name="t", n_layers=1, d_model=32, n_heads=4), scaled, VOCAB)
    )
    hybrid = HybridConfig(members="rope+fire")
    model = Transformer(
        ModelConfig(
            name="t", n_layers=1, d_model=32, n_heads=4, attention=Attention.blockwise, attention_block=8
        ),
        hybrid,
        VOCAB,
    ).eval()
    assert isinstance(model.attention_plan(30, needs_grad=False), ByBlocks)


def test_xpos_past_its_centred_window_runs_by_blocks_and_matches_the_short_window():
    """Past decay_window the window-centred factors would overflow fp32; auto re-centres them per query
    block, and a causal model's first positions must not notice: their logits equal those of a window
    short enough for the whole-window path (scale_base 4: the centred window holds 256 positions)."""
    torch.manual_seed(0)
    cfg = ModelConfig(name="test", n_layers=2, d_model=32, n_heads=4, attention_block=37)
    model = Transformer(cfg, ENCODINGS.schema("xpos")(scale_base=4.0), VOCAB).eval()
    assert model.encoding.decay_window == 256
    tokens = torch.randint(0, VOCAB, (2, 700))
    with torch.no_grad():
        long = model(tokens)
        assert model.attention_plan(700, needs_grad=False).name == "blockwise"
        short = model(tokens[:, :200])
        assert model.attention_plan(200, needs_grad=False).name == "sdpa"
    assert torch.isfinite(long).all()
    torch.testing.assert_close(long[:, :200], short, rtol=1e-4, atol=1e-4)


def test_xpos_with_a_bias_decays_per_block_as_over_the_whole_window():
    """A hybrid of xPos and ALiBi: within the centred window, blockwise (decay re-centred per block,
    bias per block) equals eager (decay centred on the window, full bias); past it, auto takes the
    per-block path and the first positions match the short window."""
    from posbench.encodings.hybrid import HybridConfig

    def model(attention: str, rotary: str = "xpos") -> Transformer:
        torch.manual_seed(0)
        cfg = ModelConfig(
            name="test", n_layers=2, d_model=32, n_heads=4, attention_block=50, attention=Attention(attention)
        )
        options = {"xpos": {"scale_base": 4.0}} if rotary == "xpos" else {}
        built = Transformer(cfg, HybridConfig(members=f"{rotary}+alibi", options=options), VOCAB).eval()
        with torch.no_grad():  # logits large enough for the decay to show
            for block in built.blocks:
                block.attn.qkv_proj.weight.mul_(20)
        return built

    tokens = torch.randint(0, VOCAB, (1, 700))
    blockwise, eager, auto = model("blockwise"), model("eager"), model("auto")
    with torch.no_grad():
        reference = eager(tokens[:, :200])
        assert not torch.allclose(
            reference, model("eager", "rope")(tokens[:, :200]), atol=1e-3
        )  # the decay acts
        torch.testing.assert_close(blockwise(tokens[:, :200]), reference, rtol=1e-4, atol=1e-4)
        long = auto(tokens)
        assert auto.attention_plan(700, needs_grad=False).name == "blockwise" and torch.isfinite(long).all()
        torch.testing.assert_close(long[:, :200], auto(tokens[:, :200]), rtol=1e-4, atol=1e-4)


def test_xpos_past_its_centred_window_on_a_whole_window_path_says_what_to_do():
    cfg = ModelConfig(name="test", n_layers=1, d_model=32, n_heads=4, attention=Attention.sdpa)
    model = Transformer(cfg, ENCODINGS.schema("xpos")(scale_base=4.0), VOCAB).eval()
    with pytest.raises(ValueError, match=r"model.attention=auto or blockwise"):
        model(torch.zeros(1, 300, dtype=torch.long))


@pytest.mark.parametrize("encoding", ALL)
@pytest.mark.parametrize("attention", ["auto", "blockwise"])
def test_bf16_autocast_trains_and_evaluates_close_to_fp32(encoding, attention):
    """Under CPU bf16 autocast every encoding and path gives finite gradients to the same parameters as
    fp32, and logits within bf16 rounding of fp32's (atol 0.05 at these sizes)."""
    model = tiny_model(encoding, attention, block=8)
    tokens = torch.randint(0, VOCAB, (2, 29))

    def logits_and_grads(bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(tokens)
            logits.float().logsumexp(-1).mean().backward()
        return logits.detach().float(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    (reference, fp32_grads), (logits, grads) = logits_and_grads(False), logits_and_grads(True)
    assert grads.keys() == fp32_grads.keys() and all(torch.isfinite(g).all() for g in grads.values())
    torch.testing.assert_close(logits, reference, rtol=0, atol=0.05)


def test_xpos_with_explicit_scores_past_its_centred_window_is_refused_with_the_reason():
    """CoPE's explicit scores cannot take a per-block decay: past the centred window such a hybrid is n/a."""
    from posbench.encodings.hybrid import HybridConfig

    cfg = ModelConfig(name="test", n_layers=1, d_model=32, n_heads=4)
    model = Transformer(
        cfg, HybridConfig(members="xpos+cope", options={"xpos": {"scale_base": 4.0}}), VOCAB
    ).eval()
    assert model.length_limit_reason(256) is None
    assert "explicit scores" in model.length_limit_reason(300)
    with pytest.raises(ValueError, match="evaluate shorter windows"):
        model(torch.zeros(1, 300, dtype=torch.long))


def test_checkpoints_with_separate_q_and_kv_projections_load_into_the_fused_one():
    """State dicts written before the fused q/k/v projection (q_proj, then kv_proj holding k and v rows)
    load unchanged and give the same logits, grouped-query attention included."""
    model = tiny_model("rope", kv_heads=2)
    legacy = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("qkv_proj.weight"):
            prefix, q_rows = name[: -len("qkv_proj.weight")], 4 * 8  # n_heads x head_dim
            legacy[prefix + "q_proj.weight"], legacy[prefix + "kv_proj.weight"] = (
                tensor[:q_rows],
                tensor[q_rows:],
            )
        else:
            legacy[name] = tensor
    loaded = tiny_model("rope", kv_heads=2)
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    loaded.load_state_dict(legacy)
    tokens = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
