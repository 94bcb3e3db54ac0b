"""Protects multi-process training: torchrun (gloo, CPU) matches one process at the same global batch; only
rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = [
    "train",
    "debug=smoke",
    "logger=jsonl",
    "train.log_every=1",
    "train.batch_size=4",
    "train.max_steps=5",
]


def losses(run_root: Path) -> dict[int, float]:
    (metrics,) = run_root.glob("smoke/*/metrics.jsonl")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    """Same global batch of 4: two ranks of 2 rows each. Tolerance 1e-4 absolute on the loss
    (gradients are averaged by an all-reduce instead of inside one mean)."""
    run([sys.executable, "-m", "posbench", *SMOKE, f"run_root={tmp_path / 'one'}"], tmp_path)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "posbench",
    ]
    run([*torchrun, *SMOKE, f"run_root={tmp_path / 'two'}"], tmp_path)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-4), step
    # only rank 0 wrote: one run folder, one metrics file, one checkpoint, no stray files in cwd
    assert len(list((tmp_path / "two").glob("smoke/*"))) == 1
    assert len(list((tmp_path / "two").rglob("last.pt"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    results = json.loads(next((tmp_path / "two").glob("smoke/*/results.json")).read_text())
    assert results["results"][0]["status"] == "ok"
