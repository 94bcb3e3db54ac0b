"""Protects encoding=layers (per-layer schedules): each layer runs the encoding its pattern names,
local windows see only their keys on every path, labels, refusals, long evaluation per layer."""

from __future__ import annotations

import pytest
import torch

from posbench.encodings import ENCODINGS
from posbench.encodings.schedule import LayersConfig
from posbench.encodings.temperature import LogNConfig
from posbench.model.attention import AttentionContext
from posbench.model.transformer import Transformer
from tests.conftest import compose_run, tiny_model

VOCAB = 64


def model(encoding_cfg, attention: str = "auto", n_layers: int = 3, block: int = 8) -> Transformer:
    return tiny_model(encoding_cfg, attention, block, n_layers, VOCAB)


def schedule(*pattern: str, **kw) -> LayersConfig:
    return LayersConfig(pattern=list(pattern), **kw)


def test_each_layer_runs_the_encoding_its_pattern_names():
    """Layer i's attention, given the input the schedule gave it, equals that member's own attention."""
    net = model(schedule("rope", "alibi", "nope"), n_layers=4)  # layer 3 wraps around to rope
    inputs, outputs = {}, {}

    def record(module, args, out):
        inputs[module.layer], outputs[module.layer] = args[0], out

    for block in net.blocks:
        block.attn.register_forward_hook(record)
    tokens, pos = torch.randint(0, VOCAB, (2, 30)), torch.arange(30)
    with torch.no_grad():
        net(tokens)
    for i, name in enumerate(["rope", "alibi", "nope", "rope"]):
        alone = model(ENCODINGS.schema(name)(), n_layers=4)
        alone.load_state_dict(net.state_dict(), strict=False)  # the same projections
        ctx = AttentionContext(alone.encoding, pos, alone.attention_plan(30, needs_grad=False))
        with torch.no_grad():
            torch.testing.assert_close(alone.blocks[i].attn(inputs[i], ctx), outputs[i])
    assert [type(net.encoding.for_layer(i)).__name__ for i in range(4)] == ["Rope", "Alibi", "NoPE", "Rope"]


def test_a_schedule_of_one_member_is_that_member():
    for name in ("rope", "t5", "kerple_log"):
        alone, layered = model(ENCODINGS.schema(name)()), model(schedule(name))
        layered.load_state_dict(alone.state_dict(), strict=False)
        if name != "rope":
            layered.encoding.members[name].load_state_dict(alone.encoding.state_dict())
        tokens = torch.randint(0, VOCAB, (2, 33))
        with torch.no_grad():
            torch.testing.assert_close(layered(tokens), alone(tokens))


@pytest.mark.parametrize("kind", ["chunked", "sliding"])
@pytest.mark.parametrize("attention", ["sdpa", "blockwise", "eager"])
def test_a_local_window_sees_only_its_keys(kind, attention):
    """One rotary layer: a query's output depends on its window's tokens and no others."""
    net = model(schedule("rope", window=8, window_kind=kind), attention, n_layers=1, block=5)
    tokens = torch.randint(0, VOCAB, (1, 40))
    with torch.no_grad():
        base = net(tokens)
        for changed in (3, 17):
            other = tokens.clone()
            other[0, changed] = (other[0, changed] + 1) % VOCAB
            moved = (net(other) - base).abs().amax(-1)[0] > 1e-6  # (T,) which outputs changed
            seen = [
                q
                for q in range(40)
                if (q // 8 == changed // 8 if kind == "chunked" else 0 <= q - changed < 8) and q >= changed
            ]
            assert moved.nonzero().flatten().tolist() == seen


def test_the_window_applies_to_rotary_layers_only():
    net = model(schedule("rope", "nope", window=4), n_layers=2)
    layers = net.encoding.scores().layers
    assert layers[0].bias is not None and layers[1].bias is None
    assert net.encoding.label == "1xrope@chunk4-1xnope"


@pytest.mark.parametrize("attention", ["sdpa", "blockwise"])
def test_every_path_equals_eager_per_layer(attention):
    cfg = schedule("rope", "fire", "alibi", window=6, window_kind="sliding")
    cfg.options["alibi"].temperature = LogNConfig(base_length=8)
    reference, net = model(cfg, "eager"), model(cfg, attention)
    tokens = torch.randint(0, VOCAB, (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(net(tokens), reference(tokens), rtol=1e-4, atol=1e-5)


def test_long_evaluation_plans_each_layer_without_the_square():
    net = model(schedule("rope", "rope", "nope", "fire", window=64), n_layers=4)
    plan = net.attention_plan(16384, needs_grad=False)
    assert [backend.name for backend in plan.layers] == ["blockwise", "blockwise", "sdpa", "blockwise"]
    assert plan.name == "blockwise/sdpa"


def test_the_command_line_composes_members_and_their_options():
    run = compose_run(
        "encoding=layers",
        "encoding.pattern=[rope,rope,rope,nope]",
        "encoding.window=64",
        "encoding.options.rope.base=500",
        "encoding/temperature@encoding.options.nope.temperature=llama4",
    )
    assert run.encoding.label() == "3xrope@chunk64-1xnope+llama4t"
    assert set(run.encoding.options) == {"rope", "nope"} and run.encoding.options["rope"].base == 500


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"pattern": ["rope", "sinusoidal"]}, "embeds the input once"),
        ({"pattern": ["rope", "hybrid"]}, "no layer encoding"),
        ({"pattern": ["nope", "alibi"], "window": 16}, "applies to rotary layers"),
        ({"pattern": ["rope"], "temperature": LogNConfig()}, "give it to the members"),
        ({"pattern": []}, "pattern is empty"),
    ],
)
def test_bad_schedules_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        LayersConfig(**kw)
