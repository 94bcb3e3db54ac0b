"""Protects the config tree: every config composes, and mistakes get one readable line, not a traceback."""

from __future__ import annotations

import subprocess

import pytest
from hydra.errors import ConfigCompositionException

from posbench.config import EvalConfig, ModelConfig, TrainConfig
from tests.conftest import REPO, compose_config, compose_run, posbench_cli

CONFIGS = REPO / "configs"


def group_choices(group: str) -> list[str]:
    """A group's YAML files, and for encoding the composites made from the registry (ConfigStore)."""
    made = ["hybrid", "layers"] if group == "encoding" else []
    return sorted([p.stem for p in (CONFIGS / group).glob("*.yaml")] + made)


@pytest.mark.parametrize(
    "group",
    ["model", "data", "train", "eval", "logger", "debug"]
    + [pytest.param(g, marks=pytest.mark.slow) for g in ("encoding", "experiment")],
)
def test_every_config_in_every_group_composes(group):
    for choice in group_choices(group):
        extra = (
            ["data.train_files=[a.txt]", "data.val_files=[b.txt]"]
            if (group, choice) == ("data", "text_files")
            else []
        )
        run = compose_run(f"{group}={choice}", *extra)
        chosen = getattr(run, group, None)
        if hasattr(chosen, "name"):  # encoding, model, data, logger: the choice is what was built
            assert chosen.name == choice or choice.startswith(f"{chosen.name}_"), (group, choice)  # rope_logn
        elif choice != "default":  # train/task, debug, experiment: choosing it changes the config
            assert run != compose_run(*extra), (group, choice)


def test_defaults_are_the_main_job():
    run = compose_run()
    assert (run.encoding.name, run.model.name, run.data.name, run.logger.name) == (
        "alibi",
        "tiny",
        "shakespeare",
        "wandb",
    )
    assert run.train.seq_len == 2048 and run.eval.lengths == [2048, 4096, 8192, 16384]
    assert run.logger.mode == "offline"
    assert (run.model.n_layers, run.model.d_model, run.model.n_heads) == (4, 256, 4)


def test_overrides_reach_the_typed_config():
    run = compose_run("encoding=rope", "encoding.base=500", "model=small", "train.seq_len=512")
    assert run.encoding.base == 500.0 and run.model.d_model == 384 and run.train.seq_len == 512


def test_learned_table_follows_the_training_length():
    assert compose_run("encoding=learned", "train.seq_len=300").encoding.max_positions == 300


def test_mistyped_key_and_value_fail_at_compose_time():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("model.nlayers=3")
    assert "nlayers" in str(info.value.__cause__ or info.value)
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("model.norm=batchnorm")
    assert "layernorm" in str(info.value.__cause__ or info.value)


def test_cross_field_checks_name_the_fix():
    with pytest.raises(ValueError, match=r"eval.lengths"):
        EvalConfig(lengths=[0, 2048])
    with pytest.raises(ValueError, match="kv_heads"):
        ModelConfig(name="x", n_heads=4, kv_heads=3)
    with pytest.raises(ValueError, match=r"train.max_steps or train.max_tokens"):
        TrainConfig(max_steps=None, max_tokens=None)
    assert TrainConfig(max_tokens=10_000, seq_len=100, batch_size=4).total_steps() == 25


def cli(*args: str) -> subprocess.CompletedProcess:
    return posbench_cli(*args)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "encoding=alibbi"], ["available options in 'encoding': ", "alibi", "rope", "sinusoidal"]),
        (["train", "model=huge"], ["available options in 'model': ", "tiny", "small", "base"]),
        (["train", "data=wiki"], ["available options in 'data': ", "shakespeare", "text_files", "hf"]),
        (["train", "eval.lengths=[0]"], ["eval.lengths must be a non-empty list"]),
        (["eval", "checkpoint=/nonexistent/last.pt"], ["no checkpoint at /nonexistent/last.pt"]),
        (["fly"], ["unknown command 'fly'", "train"]),
    ],
)
def test_cli_errors_are_one_readable_message(args, expected):
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_corrupt_checkpoint_on_the_cli(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    result = cli("eval", f"checkpoint={bad}", f"run_root={tmp_path}")
    assert result.returncode == 2 and "not a readable posbench checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


# every value the issue tracker found accepted or failing late, and others of each kind
BAD_VALUES = [
    ("train.min_lr_ratio=-1", "train.min_lr_ratio=-1.0 must be in [0, 1]"),
    ("train.min_lr_ratio=1.5", "train.min_lr_ratio=1.5 must be in [0, 1]"),
    ("train.max_steps=0", "train.max_steps=0 must be at least 1"),
    ("train.max_steps=-3", "train.max_steps=-3 must be at least 1"),
    ("train.max_tokens=-5", "train.max_tokens=-5 must be at least 1"),
    ("train.val_every=-1", "train.val_every=-1 must be at least 0"),
    ("train.ckpt_every=-1", "train.ckpt_every=-1 must be at least 0"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1 must be at least 0"),
    ("train.log_every=0", "train.log_every=0 must be at least 1"),
    ("train.lr=0", "train.lr=0.0 must be greater than 0"),
    ("train.beta2=1", "train.beta2=1.0 must be in [0, 1)"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0 must be at least 0"),
    ("train.seed=-1", "train.seed=-1 must be in [0, 4294967295]"),
    ("train.val_tokens=0", "train.val_tokens=0 must be at least 1"),
    ("train.stop_after_steps=0", "train.stop_after_steps=0 must be at least 1"),
    ("model.n_layers=0", "model.n_layers=0 must be at least 1"),
    ("model.n_heads=0", "model.n_heads=0 must be at least 1"),
    ("model.kv_heads=-2", "model.kv_heads=-2 must be at least 1 or null"),
    ("model.d_ff=0", "model.d_ff=0 must be at least 1 or null"),
    ("model.dropout=1", "model.dropout=1.0 must be in [0, 1)"),
    ("model.init_std=0", "model.init_std=0.0 must be greater than 0"),
    ("eval.batch_size=0", "eval.batch_size=0 must be at least 1"),
    ("data.bpe_vocab_size=100", "data.bpe_vocab_size=100 must be at least 257"),
    ("logger.mode=onlin", "logger.mode='onlin' is not one of offline, online, disabled, dryrun, run"),
    ("encoding=rope encoding.base=1", "encoding.base=1.0 must be greater than 1"),
    ("encoding=xpos encoding.gamma=0", "encoding.gamma=0.0 must be greater than 0"),
    ("encoding=fire encoding.init_c=-1", "encoding.init_c=-1.0 must be greater than 0"),
    ("encoding=kerple_log encoding.min_value=0", "encoding.min_value=0.0 must be greater than 0"),
    ("encoding=sandwich encoding.ratio_max=0", "encoding.ratio_max=0.0 must be greater than 0"),
    ("encoding=sinusoidal encoding.amplitude=-1", "encoding.amplitude=-1.0 must be at least 0"),
    ("encoding=learned encoding.max_positions=0", "encoding.max_positions=0 must be at least 1"),
    (
        "encoding=rope encoding/scaling=yarn encoding.scaling.beta_fast=0.5",
        "encoding.scaling.beta_fast=0.5 must be greater than 1",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES)
def test_every_out_of_range_value_is_refused_when_the_config_is_made(overrides, message):
    with pytest.raises(ValueError) as info:
        compose_run("debug=smoke", *overrides.split())
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("override", ["train.log_every=0", "model.n_heads=0", "eval.batch_size=0"])
def test_bad_values_end_in_one_line_before_training(override, tmp_path):
    """On the CLI: exit 2, one error line, no traceback, and no run folder of posbench's own."""
    result = cli("train", "debug=smoke", "logger=jsonl", f"run_root={tmp_path}", override)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and override.split("=")[0] in errors[0], result.stderr
    assert not list(tmp_path.rglob("metrics.jsonl")) and not list(tmp_path.rglob("last.pt"))
