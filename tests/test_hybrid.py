"""Protects encoding=hybrid: one member equals that member, hooks combine as written by hand, typed member
options, strictest limits, refused combinations."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import torch

from posbench.config import TrainConfig, to_plain_dict, to_run_config
from posbench.encodings import ENCODINGS, PositionalEncoding, alibi_slopes
from posbench.encodings.absolute import LearnedConfig, SinusoidalConfig, sinusoidal_table
from posbench.encodings.hybrid import HybridConfig, member_choices
from posbench.encodings.rope import RopeConfig
from posbench.encodings.rope_scaling import YarnScalingConfig
from posbench.encodings.scores import PairBias, Scores
from posbench.jobs.train import train
from posbench.model.transformer import Transformer
from posbench.training.optim import build_optimizer
from tests.conftest import REPO, compose_config, compose_run, tiny_model

VOCAB = 64
# member configs that differ from their defaults where the default would hide a mistake
MEMBER_CONFIGS = {
    "learned": LearnedConfig(max_positions=256),
    "rope": RopeConfig(base=500.0, scaling=YarnScalingConfig(factor="auto", original_max_position=16)),
    "sinusoidal": SinusoidalConfig(random_positions_max=200),
}


def model_with(encoding_cfg, attention: str = "auto") -> Transformer:
    return tiny_model(encoding_cfg, attention, vocab=VOCAB)


def member_cfg(name: str):
    return copy.deepcopy(MEMBER_CONFIGS.get(name) or ENCODINGS.schema(name)())


def hybrid_cfg(*names: str) -> HybridConfig:
    return HybridConfig(members="+".join(names), options={name: member_cfg(name) for name in names})


@pytest.mark.parametrize("name", member_choices())
def test_a_hybrid_of_one_member_is_that_member_exactly(name):
    """Same seed, same weights, bit-identical logits, at 3x the yarn member's original length."""
    alone, hybrid = model_with(member_cfg(name)), model_with(hybrid_cfg(name))
    assert hybrid.encoding.label == alone.encoding.label
    assert [p.shape for p in hybrid.parameters()] == [p.shape for p in alone.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(alone.parameters(), hybrid.parameters()))
    tokens, pos = torch.randint(0, VOCAB, (2, 48)), torch.arange(48) + 5
    with torch.no_grad():
        assert torch.equal(hybrid(tokens, pos), alone(tokens, pos))
        assert torch.equal(
            hybrid(tokens), alone(tokens)
        )  # positions the encoding chooses (randomized for sinusoidal)
    assert hybrid.encoding.length_limit_reason(300) == alone.encoding.length_limit_reason(300)
    assert hybrid.attention_plan(48, needs_grad=True).name == alone.attention_plan(48, needs_grad=True).name


class SinusoidalPlusAlibiByHand(PositionalEncoding):
    """Vaswani §3.5 table added to the inputs and Press et al. §3 bias, written out directly."""

    def embed_input(self, x, pos):
        return x + self.init_std * sinusoidal_table(pos, self.d_model)

    def score_bias(self, q_pos, k_pos):
        return -alibi_slopes(self.n_heads)[:, None, None] * (q_pos[:, None] - k_pos[None, :]).float()

    def scores(self):
        return Scores(bias=PairBias(self.score_bias))


@pytest.mark.parametrize("attention", ["eager", "sdpa", "blockwise"])
def test_sinusoidal_plus_alibi_equals_both_applied_by_hand(attention):
    hybrid = model_with(HybridConfig(members="sinusoidal+alibi"), attention)
    by_hand = copy.deepcopy(hybrid)
    by_hand.encoding = SinusoidalPlusAlibiByHand(hybrid.encoding.cfg, 32, 4, 8, 0.02)
    tokens, pos = torch.randint(0, VOCAB, (2, 37)), torch.arange(37) + 100
    with torch.no_grad():
        torch.testing.assert_close(hybrid(tokens, pos), by_hand(tokens, pos), rtol=1e-6, atol=1e-6)
    assert hybrid.encoding.label == "sinusoidal+alibi"


@pytest.mark.parametrize("members,linear", [("sinusoidal+alibi", True), ("alibi+t5", False)])
def test_the_linear_bias_path_is_taken_only_when_alibi_is_the_only_bias(members, linear):
    reference, other = (
        model_with(HybridConfig(members=members), "eager"),
        model_with(HybridConfig(members=members), "linear"),
    )
    tokens, pos = torch.randint(0, VOCAB, (2, 37)), torch.arange(37) + 9
    with torch.no_grad():
        torch.testing.assert_close(other(tokens, pos), reference(tokens, pos), rtol=1e-5, atol=1e-5)
    assert other.attention_plan(37, pos, needs_grad=False).name == (
        "linear" if linear else "blockwise"
    )  # a sum of biases needs the mask


def test_biases_add_and_every_members_parameters_train():
    model = model_with(hybrid_cfg("learned", "alibi", "t5")).train()
    members = model.encoding.members
    q_pos, k_pos = torch.arange(3, 9), torch.arange(9)
    expected = members["alibi"].score_bias(q_pos, k_pos) + members["t5"].score_bias(q_pos, k_pos)
    torch.testing.assert_close(model.encoding.score_bias(q_pos, k_pos), expected, rtol=0, atol=0)
    assert {"encoding.members.learned.table.weight", "encoding.members.t5.table.weight"} <= set(
        model.state_dict()
    )
    optimised = {
        id(p) for group in build_optimizer(model, TrainConfig()).param_groups for p in group["params"]
    }
    assert all(id(p) in optimised for p in model.encoding.parameters())
    model(torch.randint(0, VOCAB, (2, 20))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoding.parameters())


def test_the_strictest_member_sets_the_limit():
    enc = model_with(hybrid_cfg("learned", "rope")).encoding
    assert enc.length_limit_reason(256) is None
    assert "learned positions end at 256" in enc.length_limit_reason(257)
    assert enc.label == "learned+rope+yarn"


def test_options_are_typed_per_member_from_the_command_line():
    run = compose_run(
        "encoding=hybrid",
        "encoding.members=learned+rope",
        "encoding.options.rope.base=500",
        "encoding/scaling@encoding.options.rope.scaling=yarn",
        "train.seq_len=300",
    )
    learned, rope = run.encoding.options["learned"], run.encoding.options["rope"]
    assert list(run.encoding.options) == ["learned", "rope"]  # options of non-members are dropped
    assert learned.max_positions == 300 and rope.base == 500.0
    assert (
        rope.scaling.kind == "yarn"
        and rope.scaling.factor == "auto"
        and rope.scaling.original_max_position == 300
    )
    assert to_run_config(to_plain_dict(run)) == run  # what a checkpoint stores builds the same config


def test_default_hybrid_is_sinusoidal_plus_alibi_and_its_config_offers_every_member():
    """The composed encoding=hybrid holds every registered member's own YAML defaults at options.NAME
    (made from the registry), and encoding=layers every member that acts in attention."""
    run = compose_run("encoding=hybrid")
    assert run.encoding.members == "sinusoidal+alibi"
    composed = compose_config("encoding=hybrid").encoding.options
    assert sorted(composed) == member_choices() and len(member_choices()) == len(ENCODINGS) - 2
    assert composed.rope.base == compose_config("encoding=rope").encoding.base
    layers = compose_config("encoding=layers").encoding.options
    assert sorted(layers) == sorted(set(member_choices()) - {"sinusoidal", "learned"})


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["encoding.members=rope+xpos"], "encoding.members holds rope and xpos: both rotate q and k"),
        (["encoding.members=alibi+sinusoidal+alibi"], "names alibi twice"),
        (["encoding.members=sinusoidal+hybrid"], "encoding.members cannot hold a hybrid"),
        (["encoding.members="], "encoding.members is empty"),
        (
            ["encoding.members=sinus+alibi"],
            "'sinus' is no encoding (join names with a single '+'); valid members: alibi, cope,",
        ),
        (
            ["encoding.members=rope+alibi", "encoding.options.rope.rotary_dim=2"],
            "encoding.options.rope.rotary_dim=2.0 is the rotated",
        ),
        (
            [
                "encoding.members=rope+sinusoidal",
                "encoding.options.rope.random_positions_max=99",
                "encoding.options.sinusoidal.random_positions_max=99",
            ],
            "rope and sinusoidal both set random_positions_max",
        ),
    ],
)
def test_invalid_combinations_fail_before_training_with_one_line(overrides, message):
    with pytest.raises(ValueError) as info:
        compose_run("encoding=hybrid", *overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_options_from_a_checkpoint_are_checked_against_the_member_schema():
    with pytest.raises(
        ValueError, match=r"encoding.options.rope: Key 'bse' not in 'RopeConfig'; its keys are"
    ):
        HybridConfig(members="rope", options={"rope": {"bse": 3}})
    with pytest.raises(ValueError, match=r"encoding.options.sinusiodal names no encoding"):
        HybridConfig(members="sinusoidal", options={"sinusiodal": {"base": 3}})


def test_cli_prints_a_refused_combination_as_one_line(tmp_path):
    args = ["train", "encoding=hybrid", "encoding.members=xpos+rope", f"run_root={tmp_path}"]
    result = subprocess.run(
        [sys.executable, "-m", "posbench", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: encoding.members holds xpos and rope: both rotate q and k, and a rotation "
        "of a rotation is neither scheme; keep one rotary member"
    )


@pytest.mark.parametrize("members", ["sinusoidal+alibi", "learned+alibi"])
def test_trains_on_smoke_and_evaluates_at_four_times_its_length(smoke_run, tmp_path, members):
    run = smoke_run(
        "encoding=hybrid",
        f"encoding.members={members}",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.val_every=0",
        "train.ckpt_every=0",
        "eval.max_tokens=512",
        "eval.lengths=[128,512]",
    )
    metrics = train(run, tmp_path / "run")
    assert all(math.isfinite(loss) for loss in metrics["losses"].values())
    assert metrics["results"]["encoding"] == members
    rows = {row["length"]: row for row in metrics["results"]["results"]}
    assert rows[128]["status"] == "ok"
    if members.startswith("learned"):
        assert rows[512]["status"] == "n/a" and "learned positions end at 128" in rows[512]["reason"]
    else:
        assert rows[512]["status"] == "ok" and math.isfinite(rows[512]["ppl"])


def test_a_hybrids_scores_are_its_members_combined():
    """scores.combine: a linear bias alone stays linear (the mask-free path); with a bias of the distance
    it becomes one of the distance (the shared table); with a per-pair bias, a per-pair one; the sum of
    the parts' biases and of their elementwise forms where both have one; one decay; position-local only
    if every part is."""
    from posbench.encodings.scores import DistanceBias, LinearBias, combine

    def kind(members: str):
        return type(model_with(HybridConfig(members=members)).encoding.scores().bias)

    assert kind("sinusoidal+alibi") is LinearBias
    assert kind("alibi+t5") is DistanceBias and kind("kerple_log+sandwich") is DistanceBias
    assert kind("alibi+fire") is PairBias and kind("rope") is type(None)
    hybrid = model_with(HybridConfig(members="alibi+t5+xpos")).encoding
    scores, q_pos, k_pos = hybrid.scores(), torch.arange(3, 20), torch.arange(20)
    members = hybrid.members
    expected = members["alibi"].score_bias(q_pos, k_pos) + members["t5"].score_bias(q_pos, k_pos)
    torch.testing.assert_close(scores.bias.fn(q_pos, k_pos), expected)
    assert scores.decay is not None and not scores.position_local
    slopes = torch.tensor([0.5, 0.25])
    doubled = combine(
        [
            Scores(bias=LinearBias(slopes)),
            Scores(bias=DistanceBias(LinearBias(slopes).fn, LinearBias(slopes).elementwise)),
        ]
    )
    head, qi, kj = torch.tensor(1), torch.tensor(9), torch.tensor(4)
    assert doubled.bias.elementwise(torch.tensor(0.0), head, qi, kj) == -2 * 0.25 * 5
