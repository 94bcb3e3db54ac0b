"""Protects the long-evaluation attention paths: the mask-free linear-bias path and FlexAttention agree with
the eager reference, and auto picks them only where they are exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from posbench.config import Attention, ModelConfig
from posbench.encodings import ENCODINGS, alibi_slopes
from posbench.encodings.scores import LinearBias, PairBias, Scores
from posbench.model.linear_bias import linear_bias_attention
from posbench.model.planner import Settings, plan_attention
from posbench.model.transformer import Transformer
from tests.conftest import planned_attention


def pair(encoding: str, attention: str, block: int = 16) -> tuple[Transformer, Transformer]:
    torch.manual_seed(0)
    cfg = dict(name="t", n_layers=2, d_model=32, n_heads=4, attention_block=block)
    reference = Transformer(
        ModelConfig(**cfg, attention=Attention.eager), ENCODINGS.schema(encoding)(), 64
    ).eval()
    other = Transformer(
        ModelConfig(**cfg, attention=Attention(attention)), ENCODINGS.schema(encoding)(), 64
    ).eval()
    other.load_state_dict(reference.state_dict())
    return reference, other


@pytest.mark.parametrize("length,block,offset", [(37, 8, 0), (100, 33, 500), (64, 64, 0), (5, 2, 9)])
def test_linear_path_equals_eager_for_alibi(length, block, offset):
    reference, linear = pair("alibi", "linear", block)
    tokens, pos = torch.randint(0, 64, (2, length)), torch.arange(length) + offset
    with torch.no_grad():
        out = linear(tokens, pos)
        assert linear.attention_plan(length, pos, needs_grad=False).name == "linear"
        torch.testing.assert_close(out, reference(tokens, pos), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_linear_path_is_exact_at_64k_positions():
    """fp32 against an fp64 softmax for the last queries of a 65,536-token window (atol 1e-5)."""
    torch.manual_seed(0)
    T, H, D = 65536, 2, 8
    q, k, v = (torch.randn(1, H, T, D) for _ in range(3))
    slopes, pos, scale = alibi_slopes(8)[[0, 7]], torch.arange(T), D**-0.5
    with torch.no_grad():
        out = linear_bias_attention(q, k, v, pos, slopes, scale, block=4096)[:, :, -4:]
    rows = torch.arange(T - 4, T)
    logits = (q[0, :, rows].double() @ k[0].double().transpose(-1, -2)) * scale  # (H, 4, T)
    logits -= slopes.double()[:, None, None] * (rows[:, None] - pos[None, :]).double()
    logits = logits.masked_fill(pos[None, None, :] > rows[None, :, None], float("-inf"))
    reference = logits.softmax(-1) @ v[0].double()
    torch.testing.assert_close(out[0].double(), reference, rtol=0, atol=1e-5)


def test_auto_takes_the_linear_path_only_without_autograd_on_cpu():
    model = pair("alibi", "auto")[1]
    long = 16384
    assert model.attention_plan(long, needs_grad=False).name == "linear"
    assert model.attention_plan(512, needs_grad=False).name == "sdpa"  # a small mask is cheaper than blocks
    assert model.attention_plan(long, needs_grad=True).name == "blockwise"  # training: keep exact gradients

    def planned(scores, requested="auto", needs_grad=False):
        return plan_attention(scores, torch.arange(long), 4, Settings(requested, needs_grad=needs_grad)).name

    slopes = alibi_slopes(4)
    assert planned(Scores()) == "sdpa"
    assert planned(Scores(bias=PairBias(LinearBias(slopes).fn))) == "blockwise"  # a bias with no linear form
    assert planned(Scores(bias=LinearBias(slopes)), "linear", needs_grad=True) == "blockwise"


def xpos_reference(q, k, v, q_pos, k_pos, zeta, scale_base, scale, bias=None):
    """fp64 softmax of the decayed scores computed pair by pair:
    sum_d q_nd k_md zeta_d^((n - m)/scale_base)."""
    half = zeta.numel()
    per_channel = torch.cat((zeta, zeta, torch.ones(q.shape[-1] - 2 * half, dtype=torch.float64)))
    dist = (q_pos[:, None] - k_pos[None, :]).double()  # (Tq, Tk)
    decay = per_channel[None, None, :] ** (dist[:, :, None] / scale_base)  # (Tq, Tk, D)
    logits = torch.einsum("bhnd,bhmd,nmd->bhnm", q.double(), k.double(), decay) * scale
    if bias is not None:
        logits = logits + bias.double()
    logits = logits.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    return logits.softmax(-1) @ v.double()


@pytest.mark.parametrize("block,with_bias,grad", [(37, False, False), (64, True, False), (50, False, True)])
def test_xpos_decay_recentred_per_block_is_exact_where_the_centred_window_overflows(block, with_bias, grad):
    """600 positions at scale_base 4 (the centred factors overflow past 256): the per-block path
    against an fp64 pair-by-pair reference (atol 1e-5), with and without a bias, under autograd too
    (the masked path other devices take)."""
    torch.manual_seed(0)
    T, H, D = 600, 2, 12  # rotary pairs on 8 of 12 channels: the other 4 carry no decay
    xpos = ENCODINGS.implementation("xpos")(
        ENCODINGS.schema("xpos")(scale_base=4.0, rotary_dim=8 / 12), H * D, H, D, 0.02
    )
    alibi = ENCODINGS.implementation("alibi")(ENCODINGS.schema("alibi")(), H * D, H, D, 0.02)
    q, k, v = (torch.randn(1, H, T, D) for _ in range(3))
    pos, scale = torch.arange(T) + 5, D**-0.5
    scores = Scores(bias=alibi.scores().bias if with_bias else None, decay=xpos.scores().decay)
    with torch.set_grad_enabled(grad):
        out = planned_attention(q, k, v, pos, scores, scale, "blockwise", block)
    assert torch.isfinite(out).all()
    reference = xpos_reference(
        q, k, v, pos, pos, xpos.zeta, 4.0, scale, alibi.score_bias(pos, pos) if with_bias else None
    )
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_xpos_is_exact_at_64k_positions():
    """The model's default scale_base 512 at 65,536 positions (twice its centred window): the last
    queries against an fp64 softmax of the decayed scores (atol 1e-5)."""
    torch.manual_seed(0)
    T, H, D = 65536, 2, 8
    xpos = ENCODINGS.implementation("xpos")(ENCODINGS.schema("xpos")(), H * D, H, D, 0.02)
    assert xpos.scores().decay.window < T
    q, k, v = (torch.randn(1, H, T, D) for _ in range(3))
    pos, scale = torch.arange(T), D**-0.5
    with torch.no_grad():
        out = planned_attention(q, k, v, pos, xpos.scores(), scale, "blockwise", 1024)[:, :, -4:]
    rows = torch.arange(T - 4, T)
    reference = xpos_reference(q[:, :, rows], k, v, pos[rows], pos, xpos.zeta, 512.0, scale)
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("encoding", ["t5", "kerple_log", "fire", "sandwich"])
def test_other_biases_run_blockwise_when_long(encoding):
    model = pair(encoding, "auto")[1]
    assert model.attention_plan(16384, needs_grad=False).name == "blockwise"


@pytest.mark.slow
def test_flex_attention_equals_eager_for_alibi():
    """FlexAttention compiled on CPU (forward only); ~30 s of compilation."""
    reference, flex = pair("alibi", "flex")
    tokens, pos = torch.randint(0, 64, (2, 100)), torch.arange(100) + 77
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens, pos), reference(tokens, pos), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["t5", "kerple_log", "sandwich"])
def test_flex_attention_equals_eager_for_distance_biases(encoding):
    """Biases of the distance alone run FlexAttention through a per-window table lookup (CPU, compiled
    forward)."""
    reference, flex = pair(encoding, "flex")
    tokens, pos = torch.randint(0, 64, (2, 100)), torch.arange(100) + 77
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens, pos), reference(tokens, pos), rtol=1e-5, atol=1e-5)
        assert flex.attention_plan(100, pos, needs_grad=False).name == "flex"


def test_flex_without_a_score_mod_says_what_to_do():
    model = pair("fire", "flex")[1]
    with torch.no_grad(), pytest.raises(ValueError, match=r"model.attention=auto"):
        model(torch.zeros(1, 8, dtype=torch.long))


def test_flex_refuses_cpu_training_with_the_fix():
    q = k = v = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match=r"model.attention=auto"):
        planned_attention(q, k, v, torch.arange(8), Scores(), 0.5, "flex")


@pytest.mark.parametrize("spread", [1.0, 1e6])
def test_learned_bias_gradients_through_the_flash_kernel_equal_the_unfused_ones(spread):
    """bias_grad.py: output and the q, k, v and mask gradients equal SDPA's unfused path (fp32, atol 1e-5),
    at a length that is not a multiple of its gradient block, with a bias of unit size and one with half
    its entries near -1e6 (KERPLE-power's range), whose vanishing probabilities the backward flushes to 0."""
    from posbench.model.bias_grad import GRAD_BLOCK, flash_bias_attention

    torch.manual_seed(0)
    B, H, T, D = 2, 3, GRAD_BLOCK + 45, 16
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    far = torch.rand(1, H, T, T) < 0.5  # these get probabilities below 1e-38 when spread is large
    bias = (torch.randn(1, H, T, T) - far * spread * (1 + torch.rand(1, H, T, T))).requires_grad_()
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = torch.randn(B, H, T, D)

    def grads(attention):
        for t in (q, k, v, bias):
            t.grad = None
        out = attention(q, k, v, bias.masked_fill(future, float("-inf")))
        (out * weights).sum().backward()
        return [out.detach()] + [t.grad.clone() for t in (q, k, v, bias)]

    fused = grads(lambda q, k, v, mask: flash_bias_attention(q, k, v, mask, 0.3))
    unfused = grads(lambda q, k, v, mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3))
    for a, b in zip(fused, unfused):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def counted_fused_calls(encoding: str, length: int, monkeypatch):
    """A 2-layer model of ``encoding``, tokens of ``length`` + 1, and the list that each call of
    bias_grad's fused attention appends to."""
    from posbench.model import bias_grad

    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(name="t", n_layers=2, d_model=32, n_heads=4), ENCODINGS.schema(encoding)(), 64
    )
    tokens = torch.randint(0, 64, (2, length))
    calls = []
    original = bias_grad.FlashBiasAttention.apply
    monkeypatch.setattr(bias_grad.FlashBiasAttention, "apply", lambda *a: calls.append(1) or original(*a))
    return model, tokens, calls


@pytest.mark.parametrize("encoding", ["t5", "fire"])
def test_model_training_takes_the_fused_bias_gradient(encoding, monkeypatch):
    from posbench.model import bias_grad

    model, tokens, calls = counted_fused_calls(encoding, 41, monkeypatch)

    def parameter_grads(fused: bool):
        model.zero_grad()
        monkeypatch.setattr(
            bias_grad, "applies", (lambda q, m: m.requires_grad) if fused else (lambda q, m: False)
        )
        F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fused, unfused = parameter_grads(True), parameter_grads(False)
    assert calls and any(n.startswith("encoding.") for n in fused)
    for name in unfused:
        torch.testing.assert_close(fused[name], unfused[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("encoding", ["t5", "kerple_log", "kerple_power", "sandwich", "alibi"])
def test_distance_only_mask_is_the_bias_laid_out_by_distance_with_its_gradients(encoding):
    """full_mask's per-distance (Toeplitz) layout against the bias evaluated per (query, key), values
    and every encoding parameter's gradient (a sum per diagonal), at a length with odd factors."""
    from posbench.model.masks import full_mask

    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(name="t", n_layers=1, d_model=32, n_heads=4), ENCODINGS.schema(encoding)(), 64
    )
    enc = model.encoding
    pos, weights = torch.arange(45) + 3, torch.randn(1, 4, 45, 45).tril()

    def mask_and_grads(distance_only: bool):
        enc.zero_grad()
        mask = full_mask(enc.score_bias, pos, torch.float32, distance_only)
        if mask.requires_grad:
            (mask.masked_fill(mask.isinf(), 0) * weights).sum().backward()
        return mask.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    (laid_out, grads), (reference, reference_grads) = mask_and_grads(True), mask_and_grads(False)
    torch.testing.assert_close(laid_out, reference)
    assert grads.keys() == reference_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], reference_grads[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "requested,encoding,expected",
    [
        ("blockwise", "nope", "sdpa"),
        ("linear", "rope", "sdpa"),  # no bias: the causal kernel is memory-linear
        ("linear", "t5", "blockwise"),  # a bias that is not linear
        ("flex", "cope", "eager"),
        ("sdpa", "cope", "eager"),  # explicit scores, whatever is requested
        ("blockwise", "xpos", "blockwise"),
        ("eager", "alibi", "eager"),
        ("sdpa", "t5", "sdpa"),
    ],
)
def test_the_recorded_backend_is_the_path_that_runs(requested, encoding, expected):
    """The planner names the path it returns, not the one requested: a results row never claims a path that
    did not run."""
    model = pair(encoding, requested)[1]
    assert model.attention_plan(64, needs_grad=False).name == expected


def test_learned_bias_attention_in_bf16_follows_fp32_within_bf16_rounding():
    """bias_grad.py under bf16 (q, k, v bf16, the mask fp32): the output and every gradient against
    the fp32 computation on the same bf16-rounded inputs, to bf16's relative precision (1%, in norm),
    and the mask's gradient stays fp32."""
    from posbench.model.bias_grad import GRAD_BLOCK, flash_bias_attention

    torch.manual_seed(0)
    B, H, T, D = 2, 3, GRAD_BLOCK + 45, 16
    q, k, v = (torch.randn(B, H, T, D).bfloat16() for _ in range(3))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    bias = torch.randn(1, H, T, T)
    weights = torch.randn(B, H, T, D)

    def grads(dtype):
        inputs = [t.to(dtype, copy=True).requires_grad_() for t in (q, k, v)] + [
            bias.clone().requires_grad_()
        ]
        out = flash_bias_attention(*inputs[:3], inputs[3].masked_fill(future, float("-inf")), 0.3)
        (out.float() * weights).sum().backward()
        return [out.detach()] + [t.grad for t in inputs]

    low, high = grads(torch.bfloat16), grads(torch.float32)
    assert [t.dtype for t in low] == [torch.bfloat16] * 4 + [torch.float32]
    for a, b in zip(low, high):
        assert ((a.float() - b).norm() / b.norm()).item() < 1e-2


@pytest.mark.parametrize("encoding", ["t5", "kerple_log", "kerple_power"])
def test_bf16_training_takes_the_fused_bias_gradient_at_fp32_precision(encoding, monkeypatch):
    """Under bf16 autocast a learned bias still trains through bias_grad.py (in fp32 inside): every
    gradient within 1% of fp32's in norm, the bias parameters' within 3%. FIRE is left out: its MLP
    itself runs in bf16 under autocast, and two of its gradients here are ~1e-8, all rounding."""

    model, tokens, calls = counted_fused_calls(encoding, 301, monkeypatch)

    def parameter_grads(bf16: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(tokens[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, got = parameter_grads(False), parameter_grads(True)
    assert len(calls) == 4 and any(n.startswith("encoding.") for n in got)  # 2 layers x 2 runs
    for name in want:
        bound = 0.03 if name.startswith("encoding.") else 0.01
        assert (got[name] - want[name]).norm() <= bound * want[name].norm(), name
