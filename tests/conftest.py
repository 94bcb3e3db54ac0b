"""Shared fixtures: composing configs as the CLI does, a small run folder, the tests' tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from posbench.cli import CONFIG_DIR
from posbench.common.runtime import flush_denormals
from posbench.config import Attention, ModelConfig, RunConfig, register_schemas, to_run_config
from posbench.encodings import ENCODINGS
from posbench.model.transformer import Transformer
from posbench.runs.resolvers import register_resolvers

REPO = Path(__file__).resolve().parents[1]
flush_denormals()  # as every posbench job does first (posbench/cli.py): tests see the numbers runs see


def compose_config(*overrides: str, config_name: str = "train"):
    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_run(*overrides: str) -> RunConfig:
    """The typed config `python -m posbench train OVERRIDES` would run."""
    return to_run_config(compose_config(*overrides))


@pytest.fixture
def smoke_run(tmp_path):
    """A debug=smoke config whose runs land under tmp_path, with W&B off."""

    def make(*overrides: str) -> RunConfig:
        return compose_run("debug=smoke", "logger=jsonl", f"run_root={tmp_path / 'runs'}", *overrides)

    return make


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test-sized tensors run faster on one thread than split across cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planned_attention(
    q, k, v, pos, scores, scale: float, requested: str = "auto", block: int = 1024, layer: int = 0
):
    """Attention of one window through the backend the planner picks for ``scores`` (an encoding's
    ``Scores``) and the requested path, under the current autograd state."""
    import torch

    from posbench.model.planner import Settings, plan_attention

    settings = Settings(requested, block, q.device.type, torch.is_grad_enabled(), False)
    return plan_attention(scores, pos, q.shape[1], settings)(q, k, v, scale, layer)


def posbench_cli(*args: str, cwd: Path = REPO, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m posbench ARGS`` as a user runs it: W&B off, one thread, Hydra's short errors."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, "-m", "posbench", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


TINY_VOCAB = 64


def tiny_model(
    encoding="nope",
    attention: str = "auto",
    block: int = 8,
    n_layers: int = 2,
    vocab: int = TINY_VOCAB,
    perturb: bool = False,
    max_positions: int = 512,
    **model_kw,
) -> Transformer:
    """The tests' model, seeded 0, in eval mode: ``n_layers`` layers of width 32 with 4 heads, the
    ``attention`` path with query blocks of ``block``. ``encoding``: a config, or a registered name
    (its defaults; ``learned`` with ``max_positions``). ``perturb``: the encoding's learned parameters moved
    off their init (0.1 N(0, 1)), so what they do shows."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="test",
        n_layers=n_layers,
        d_model=32,
        n_heads=4,
        attention=Attention(attention),
        attention_block=block,
        **model_kw,
    )
    encoding_cfg = ENCODINGS.schema(encoding)() if isinstance(encoding, str) else encoding
    if encoding == "learned":
        encoding_cfg.max_positions = max_positions
    net = Transformer(cfg, encoding_cfg, vocab).eval()
    if perturb:
        with torch.no_grad():
            for p in net.encoding.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return net
