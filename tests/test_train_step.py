"""Protects the training step's host reads: one per step, not one per micro-batch, with the losses,
gradient norms and weights of reading every micro-batch's loss as a Python float, bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch

import posbench.training.trainer as trainer_module
from posbench.jobs.train import train
from posbench.runs.checkpoint import load_checkpoint

TASK_STEPS = [
    "task=copy",
    "task.train_lengths=[1,8]",
    "train.batch_size=8",
    "train.grad_accum=2",
    "train.max_steps=6",
    "train.log_every=1",
    "train.ckpt_every=3",
    "train.val_every=0",
    "eval.enabled=false",
]


def per_micro_batch_reads(objective, optimizer, batches, cfg, device, lr):
    """``train_step`` as it was: each micro-batch's loss read to a Python float and summed there."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total, tokens, accum = 0.0, 0, cfg.grad_accum
    for _ in range(accum):
        x, y = (t.to(device) for t in batches.next())
        loss = objective(x, y) / accum
        loss.backward()
        total += loss.item()
        tokens += x.numel()
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), clip)
    return total, float(grad_norm), tokens


def logged(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/loss" in r]


@pytest.mark.parametrize("overrides", [TASK_STEPS, TASK_STEPS[3:]], ids=["task", "corpus"])
def test_one_read_per_step_gives_the_runs_of_per_micro_batch_reads_bit_for_bit(
    overrides, smoke_run, tmp_path, monkeypatch
):
    ours = train(smoke_run(*overrides), tmp_path / "ours")
    monkeypatch.setattr(trainer_module, "train_step", per_micro_batch_reads)
    theirs = train(smoke_run(*overrides), tmp_path / "theirs")
    assert ours["losses"] == theirs["losses"] and len(ours["losses"]) == 6  # exact floats, every step
    for a, b in zip(logged(tmp_path / "ours"), logged(tmp_path / "theirs"), strict=True):
        assert (a["train/loss"], a["train/grad_norm"]) == (b["train/loss"], b["train/grad_norm"])
    mine, old = (load_checkpoint(tmp_path / name) for name in ("ours", "theirs"))
    assert all(torch.equal(mine["model"][k], old["model"][k]) for k in old["model"])
    states = mine["optimizer"]["state"], old["optimizer"]["state"]
    assert all(torch.equal(states[0][i][key], states[1][i][key]) for i in states[1] for key in states[1][i])


def test_a_step_of_several_micro_batches_reads_the_device_once(smoke_run, monkeypatch):
    from posbench.model.loss import NextTokenLoss
    from posbench.model.transformer import Transformer
    from posbench.tasks import TaskBatches, build_task
    from posbench.training.optim import build_optimizer

    run = smoke_run(*TASK_STEPS, "train.grad_accum=4", "encoding=nope")
    model = Transformer(run.model, run.encoding, 97)
    batches = TaskBatches(build_task(run.task), 2, 0)
    reads = []
    for name in ("item", "tolist", "__float__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _r=real, _n=name: reads.append(_n) or _r(t, *a))
    loss, grad_norm, _ = trainer_module.train_step(
        NextTokenLoss(model), build_optimizer(model, run.train), batches, run.train, torch.device("cpu"), 1e-3
    )
    monkeypatch.undo()
    assert reads == ["tolist"]
    assert isinstance(loss, float) and isinstance(grad_norm, float) and math.isfinite(loss + grad_norm)
