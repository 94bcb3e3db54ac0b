"""Protects the inference-time remaps (encoding/remap=self_extend|rerope|leaky_rerope): the merged
attention against a per-pair transcription of the papers' positions, identities, refusals."""

from __future__ import annotations

import math

import pytest
import torch

from posbench.encodings.remap import LeakyReropeConfig, ReropeConfig, SelfExtendConfig
from posbench.encodings.rope import RopeConfig
from posbench.encodings.rope_scaling import rope_inv_freq
from posbench.model.attention import AttentionContext
from posbench.model.transformer import Transformer
from tests.conftest import compose_run, tiny_model

VOCAB = 64


def model(remap=None, block: int = 8) -> Transformer:
    return tiny_model(RopeConfig(remap=remap), block=block, n_layers=1, vocab=VOCAB)


def rotated(x: torch.Tensor, position: float) -> torch.Tensor:
    """x (Dh,) rotated at ``position``, written with complex numbers: pair d is x_d + i·x_{d+Dh/2}."""
    half = x.shape[-1] // 2
    z = torch.complex(x[:half].double(), x[half:].double()) * torch.exp(
        1j * position * rope_inv_freq(2 * half)
    )
    return torch.cat((z.real, z.imag))


def positions(remap, i: int, j: int) -> tuple[float, float]:
    """The papers' positions of query i and key j."""
    w = remap.window
    if i - j < w:
        return i, j
    if isinstance(remap, SelfExtendConfig):  # LongLM: i // G + w - w // G, j // G
        return i // remap.group + w - w // remap.group, j // remap.group
    if isinstance(remap, ReropeConfig):  # distance clipped at w
        return w, 0
    return (i + w * (remap.k - 1)) / remap.k, j / remap.k  # leaky: w + (i - j - w) / k


def by_hand(net: Transformer, x: torch.Tensor, remap) -> torch.Tensor:
    attn = net.blocks[0].attn
    T = x.shape[1]
    q, k, v = attn.qkv_proj(x).view(1, T, 12, 8).transpose(1, 2).split((4, 4, 4), dim=1)
    logits = torch.full((4, T, T), float("-inf"), dtype=torch.float64)
    for h in range(4):
        for i in range(T):
            for j in range(i + 1):
                qi, kj = positions(remap, i, j)
                logits[h, i, j] = rotated(q[0, h, i], qi) @ rotated(k[0, h, j], kj) / math.sqrt(8)
    y = (logits.softmax(-1) @ v[0].double()).float()  # (H, T, Dh)
    return attn.out_proj(y.transpose(0, 1).reshape(1, T, 32))


@pytest.mark.parametrize(
    "remap",
    [SelfExtendConfig(window=6, group=3), ReropeConfig(window=5), LeakyReropeConfig(window=4, k=3.0)],
    ids=["self_extend", "rerope", "leaky_rerope"],
)
def test_the_merged_attention_uses_the_papers_positions(remap):
    net = model(remap, block=4)  # several query blocks, each merging its two softmaxes
    x = torch.randn(1, 17, 32)
    ctx = AttentionContext(net.encoding, torch.arange(17), net.attention_plan(17, needs_grad=False))
    assert ctx.backend.name == "remap"
    with torch.no_grad():
        torch.testing.assert_close(net.blocks[0].attn(x, ctx), by_hand(net, x, remap), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("remap", [SelfExtendConfig(window=4, group=1), ReropeConfig(window=64)])
def test_identities_group_one_and_a_window_past_the_length_are_plain_rope(remap):
    plain, remapped = model(), model(remap)
    tokens = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(remapped(tokens), plain(tokens), rtol=1e-4, atol=1e-5)


def test_leaky_rerope_distance_grows_by_one_over_k_past_the_window():
    remap = LeakyReropeConfig(window=8, k=4.0)
    q_pos, k_pos = remap.far_positions(torch.tensor([30]), torch.tensor([2]))
    assert float(q_pos - k_pos) == pytest.approx(8 + (28 - 8) / 4)


def test_a_remap_is_for_evaluation_and_a_rotary_encoding_alone():
    net = model(SelfExtendConfig(window=4)).train()
    with pytest.raises(ValueError, match="inference-time remap of a trained model"):
        net(torch.randint(0, VOCAB, (1, 10)))
    with pytest.raises(ValueError, match="xPos's decay has no remapped form"):
        compose_run("encoding=xpos", "encoding/remap=rerope")


def test_the_command_line_and_long_evaluation():
    run = compose_run("encoding=rope", "encoding/remap=self_extend", "encoding.remap.window=32")
    assert run.encoding.label() == "rope+self_extend" and run.encoding.remap == SelfExtendConfig(window=32)
    net = model(SelfExtendConfig(window=32), block=256)
    assert net.attention_plan(16384, needs_grad=False).name == "remap"


@pytest.mark.slow
def test_posbench_eval_applies_a_remap_and_a_temperature_to_a_rope_checkpoint(smoke_run, tmp_path):
    from posbench.jobs.evaluate import evaluate_checkpoint
    from posbench.jobs.train import train
    from tests.conftest import compose_config

    fast = ("train.max_steps=2", "train.val_every=0", "eval.lengths=[256]", "eval.max_tokens=256")
    train(smoke_run("encoding=rope", *fast), tmp_path / "run")
    plain = evaluate_checkpoint(
        compose_config(f"checkpoint={tmp_path / 'run'}", "logger=jsonl", *fast[2:], config_name="eval"),
        tmp_path / "a",
    )
    for overrides, label, backend in [
        (
            ("encoding/remap=self_extend", "encoding.remap.window=32", "encoding.remap.group=4"),
            "rope+self_extend",
            "remap",
        ),
        (("encoding/temperature=logn",), "rope+logn", "sdpa"),
    ]:
        config = compose_config(
            f"checkpoint={tmp_path / 'run'}", "logger=jsonl", *fast[2:], *overrides, config_name="eval"
        )
        document = evaluate_checkpoint(config, tmp_path / label)
        row = document["results"][0]
        assert document["encoding"] == label and row["backend"] == backend and row["status"] == "ok"
        assert row["nll"] != plain["results"][0]["nll"]  # it changed the numbers (slightly: 2 steps)


@pytest.mark.parametrize(
    "remap",
    [SelfExtendConfig(window=6, group=3), ReropeConfig(window=5), LeakyReropeConfig(window=4, k=3.0)],
    ids=["self_extend", "rerope", "leaky_rerope"],
)
def test_the_cpu_kernel_path_equals_the_explicit_one(remap):
    """kernel_by_blocks (CPU: flash-kernel calls with masks) against merged_by_blocks (explicit logits,
    the path off CPU), with queries whose first rows have no far key yet."""
    from posbench.model.remap import kernel_by_blocks, merged_by_blocks

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 41, 8) for _ in range(3))
    scores = model(remap).encoding.scores()
    pos = torch.arange(41)
    torch.testing.assert_close(
        kernel_by_blocks(q, k, v, pos, scores.remap, 0.35, 8),
        merged_by_blocks(q, k, v, pos, scores.remap, 0.35, 8),
        rtol=1e-5,
        atol=1e-6,
    )
