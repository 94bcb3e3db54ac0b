"""Protects training behaviour: loss falls, a killed run resumes exactly, checkpoints are safe, W&B works
offline."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from posbench.common import runtime
from posbench.jobs.train import train
from posbench.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from posbench.runs.identity import RunIdentity
from posbench.training.optim import lr_at
from tests.conftest import REPO


def test_loss_falls_on_the_smoke_config(smoke_run, tmp_path):
    run = smoke_run("train.max_steps=40", "train.val_every=0", "eval.enabled=false")
    losses = train(run, tmp_path / "run")["losses"]
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (38, 39, 40)) / 3
    assert last < first - 1.0, (first, last)


def test_resume_equals_an_uninterrupted_run(smoke_run, tmp_path):
    steps = ["train.max_steps=8", "train.ckpt_every=0", "eval.enabled=false"]
    whole = train(smoke_run(*steps), tmp_path / "whole")["losses"]
    killed = train(smoke_run(*steps, "train.stop_after_steps=3"), tmp_path / "killed")
    assert max(killed["losses"]) == 3
    resumed = train(smoke_run(*steps, f"train.resume={tmp_path / 'killed'}"), tmp_path / "resumed")["losses"]
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-6, abs=1e-6), step


def test_resume_true_finds_the_latest_run_of_its_kind(smoke_run, tmp_path):
    steps = ["train.max_steps=6", "eval.enabled=false", "train.val_every=0"]
    root = tmp_path / "runs" / "smoke"
    train(smoke_run(*steps, "train.stop_after_steps=2"), root / "2026-01-01_00-00-00_alibi_L128")
    resumed = train(smoke_run(*steps, "train.resume=true"), root / "2026-01-01_00-01-00_alibi_L128")
    assert resumed["step"] == 6 and min(resumed["losses"]) == 1


def test_resume_refuses_a_checkpoint_of_another_model(smoke_run, tmp_path):
    train(smoke_run("train.max_steps=2", "eval.enabled=false", "train.val_every=0"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"another experiment .*encoding\.name: alibi -> rope"):
        train(
            smoke_run("encoding=rope", "train.max_steps=2", f"train.resume={tmp_path / 'a'}"), tmp_path / "b"
        )


def test_checkpoint_holds_loop_state_and_config(smoke_run, tmp_path):
    train(smoke_run("train.max_steps=4", "eval.enabled=false"), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 4 and state["schema_version"] == 2
    assert state["config"]["encoding"]["name"] == "alibi"
    assert state["batches"]["batch_index"] == 4
    assert set(state) >= {"model", "optimizer", "rng", "tokens_seen", "vocab_size", "corpus_fingerprint"}


def test_corrupt_and_foreign_checkpoints_get_one_clear_error(tmp_path):
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, {"model": {"w": torch.zeros(1000)}})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable posbench checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a posbench checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    assert load_checkpoint(path)["model"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_schedule_warms_up_then_decays_to_the_floor(smoke_run):
    cfg = smoke_run("train.warmup_steps=10", "train.lr=1.0", "train.min_lr_ratio=0.1").train
    lrs = [lr_at(s, cfg, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lr_at(100, cfg, 100) == pytest.approx(0.1)


def test_wandb_offline_run_writes_its_files(smoke_run, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")
    run = smoke_run("logger=wandb", "train.max_steps=4")
    out = train(run, tmp_path / "run")
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*/*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records) and any("val/loss" in r for r in records)
    assert out["results"]["results"][0]["status"] == "ok"


def test_bf16_on_a_cpu_without_native_bf16_is_refused_with_the_fix(smoke_run, tmp_path, monkeypatch):
    import posbench.common.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"use train.precision=fp32"):
        train(smoke_run("train.precision=bf16", "train.device=cpu"), tmp_path / "run")


def test_bf16_autocast_trains(smoke_run, tmp_path, monkeypatch):
    """bf16 autocast runs end to end (tiny shapes, so it is quick even without native bf16)."""
    import posbench.common.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    run = smoke_run(
        "train.precision=bf16",
        "train.max_steps=2",
        "model.d_model=32",
        "train.seq_len=32",
        "eval.lengths=[32]",
    )
    out = train(run, tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(list(out["losses"].values()))))


@pytest.mark.slow
def test_resume_true_finds_only_checkpoints_of_its_own_run(smoke_run, tmp_path):
    """rope s0, rope+yarn s0 and rope s1 in one experiment, in folders whose names all say rope_L128:
    each resumes its own checkpoint, whatever is newer."""
    from posbench.training.resume import find_resume_checkpoint

    steps = [
        "train.max_steps=6",
        "eval.enabled=false",
        "train.val_every=0",
        "train.stop_after_steps=2",
        "encoding=rope",
    ]
    variants = {
        "rope s0": ["train.seed=0"],
        "rope+yarn s0": ["encoding/scaling=yarn"],
        "rope s1": ["train.seed=1"],
    }
    root = tmp_path / "runs" / "smoke"
    folders = {}
    for minute, (name, extra) in enumerate(variants.items()):
        folders[name] = root / f"2026-01-01_00-0{minute}-00_rope_L128"
        train(smoke_run(*steps, *extra), folders[name])
    for name, extra in variants.items():
        resumed = smoke_run(*steps, *extra, "train.resume=true")
        found = find_resume_checkpoint(resumed, RunIdentity.of(resumed), root / "new")
        assert found == folders[name] / "checkpoints" / "last.pt", name
    with pytest.raises(CheckpointError, match="found no checkpoint of this run"):
        other = smoke_run(*steps, "train.seed=2", "train.resume=true")
        find_resume_checkpoint(other, RunIdentity.of(other), root / "new")
    first = load_checkpoint(folders["rope s0"])["losses"]
    resumed = train(smoke_run(*steps[:-2], "encoding=rope", "train.resume=true"), root / "resumed")
    assert resumed["step"] == 6 and resumed["losses"][1] == first["1"]


def as_schema1(ckpt: dict, q_rows: int) -> dict:
    """A schema-2 checkpoint written out as schema 1 did: each layer's q and kv projections apart, in the
    model, and in the optimiser's state and parameter order (q, then kv, where the fused one sits)."""
    model = {}
    for name, tensor in ckpt["model"].items():
        if name.endswith("qkv_proj.weight"):
            stem = name[: -len("qkv_proj.weight")]
            model[stem + "q_proj.weight"], model[stem + "kv_proj.weight"] = tensor[:q_rows], tensor[q_rows:]
        else:
            model[name] = tensor
    optimizer, state, groups, index = ckpt["optimizer"], {}, [], 0
    fused = {i for i, n in enumerate(ckpt["fused_names"]) if n.endswith("qkv_proj.weight")}
    for group in optimizer["param_groups"]:
        ids = []
        for i in group["params"]:
            pieces = [slice(0, q_rows), slice(q_rows, None)] if i in fused else [slice(None)]
            for piece in pieces:
                state[index] = {k: (v[piece] if v.dim() else v) for k, v in optimizer["state"][i].items()}
                ids.append(index)
                index += 1
        groups.append({**group, "params": ids})
    return {
        **ckpt,
        "schema_version": 1,
        "model": model,
        "optimizer": {"state": state, "param_groups": groups},
    }


def test_a_schema1_checkpoint_with_separate_q_and_kv_projections_resumes_exactly(smoke_run, tmp_path):
    """Checkpoints written before the fused q/k/v projection resume: weights and AdamW moments are fused on
    load, and the continuation equals the one from the same checkpoint in the current schema."""
    from posbench.model.transformer import Transformer
    from posbench.training.optim import parameter_groups

    steps = ["train.max_steps=6", "train.ckpt_every=0", "eval.enabled=false", "train.val_every=0"]
    train(smoke_run(*steps, "train.stop_after_steps=3"), tmp_path / "killed")
    ckpt = load_checkpoint(tmp_path / "killed")
    run = smoke_run(*steps)
    model = Transformer(run.model, run.encoding, ckpt["vocab_size"])
    ckpt["fused_names"] = [name for group in parameter_groups(model) for name, _ in group]
    legacy = as_schema1(ckpt, run.model.d_model)  # q rows: n_heads x head_dim
    del legacy["fused_names"]
    save_checkpoint(tmp_path / "legacy" / "checkpoints" / "last.pt", legacy)
    assert load_checkpoint(tmp_path / "legacy")["schema_version"] == 1
    current = train(smoke_run(*steps, f"train.resume={tmp_path / 'killed'}"), tmp_path / "a")["losses"]
    from_legacy = train(smoke_run(*steps, f"train.resume={tmp_path / 'legacy'}"), tmp_path / "b")["losses"]
    assert from_legacy == current and sorted(from_legacy) == list(range(1, 7))


def test_a_checkpoint_of_an_unknown_schema_is_refused_naming_it(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"schema_version": 99, "model": {}}, path)
    with pytest.raises(CheckpointError, match="schema 99, this posbench reads 1 and 2"):
        load_checkpoint(path)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["t5", "fox", "alibi"])
def test_bf16_loss_curves_stay_within_seed_noise_of_fp32(encoding, smoke_run, tmp_path, monkeypatch):
    """The bf16 paths of the learned biases, FoX and ALiBi train as fp32 does: over 40 steps the bf16
    curve's mean distance from fp32's (same seed) is below the distance between two fp32 seeds, and
    both learn."""
    import posbench.common.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)  # tiny shapes: quick either way

    def curve(precision: str, seed: int) -> np.ndarray:
        run = smoke_run(
            f"encoding={encoding}",
            f"train.precision={precision}",
            f"train.seed={seed}",
            "train.max_steps=40",
            "train.warmup_steps=4",
            "train.lr=3e-3",
            "train.val_every=0",
            "eval.enabled=false",
        )
        losses = train(run, tmp_path / f"{precision}{seed}")["losses"]
        return np.array([losses[step] for step in sorted(losses, key=int)])

    fp32, bf16, other_seed = curve("fp32", 0), curve("bf16", 0), curve("fp32", 1)
    assert fp32[-5:].mean() < fp32[:5].mean() - 0.3 and bf16[-5:].mean() < bf16[:5].mean() - 0.3
    assert np.abs(bf16 - fp32).mean() < np.abs(other_seed - fp32).mean()


def test_validation_at_more_lengths_equals_the_final_evaluation_there(smoke_run, tmp_path):
    """train.val_lengths logs val/loss@<length>; at the last step (the final weights, the same protocol
    and tokens) it equals the evaluation's NLL at that length."""
    run = smoke_run("train.val_lengths=[512]", "eval.max_tokens=1024", "eval.protocol=nonoverlapping")
    out = train(run, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if "val/loss@512" in r]
    assert [r["step"] for r in validations] == [3, 6] and all("val/loss" in r for r in validations)
    evaluated = {row["length"]: row["nll"] for row in out["results"]["results"]}
    assert validations[-1]["val/loss@512"] == pytest.approx(evaluated[512], rel=1e-6)
    assert validations[-1]["val/loss"] == pytest.approx(evaluated[128], rel=1e-6)


def test_a_validation_length_past_the_split_is_refused_before_training(smoke_run, tmp_path):
    with pytest.raises(ValueError, match=r"cannot validate at 100000000 tokens .*lower train.val_lengths"):
        train(smoke_run("train.val_lengths=[100000000]"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_resume_that_changes_an_experiment_key_is_refused_naming_it(smoke_run, tmp_path):
    """train.resume into a new folder with another learning rate would record the new lr and digest
    for weights trained at the old one: refused, naming the key, before any step."""
    first = tmp_path / "first"
    train(smoke_run("train.lr=2e-3"), first)
    with pytest.raises(ValueError, match=r"train.lr: 0.002 -> 0.005.*train.init_from="):
        train(smoke_run("train.lr=5e-3", f"train.resume={first}"), tmp_path / "second")
    assert not (tmp_path / "second" / "metrics.jsonl").exists()
    resumed = train(smoke_run("train.lr=2e-3", f"train.resume={first}"), tmp_path / "third")
    assert resumed["step"] == 6  # the same experiment resumes (here: nothing left to train)


def test_results_say_where_and_how_long_the_run_trained(smoke_run, tmp_path):
    import os

    first = train(
        smoke_run("train.max_steps=6", "train.stop_after_steps=3", "eval.enabled=false"), tmp_path / "r"
    )
    assert "results" not in first
    done = train(smoke_run("train.max_steps=6", f"train.resume={tmp_path / 'r'}"), tmp_path / "r")["results"]
    assert done["machine"]["cpu_count"] == os.cpu_count() and done["machine"]["torch"] == torch.__version__
    assert done["machine"]["flush_denormal"] is runtime.DENORMALS_FLUSHED is True  # x86: CI's machines
    assert done["train_wall_time_s"] > 0 and done["train_wall_time_from_step"] == 3  # the resumed part
    assert done["train_wall_time_total_s"] > done["train_wall_time_s"]  # steps 1-3 counted too
    again = smoke_run("train.max_steps=6", f"train.resume={tmp_path / 'r'}", "eval.position_buckets=4")
    redone = train(again, tmp_path / "r")["results"]  # another eval config: evaluated again, not trained
    assert redone["train_wall_time_from_step"] == 6 and redone["train_wall_time_s"] < 0.5
    assert redone["train_wall_time_total_s"] == done["train_wall_time_total_s"]


FLUSH_CHECK = """
import sys, torch
from posbench.common.runtime import flush_denormals
if sys.argv[1] == "flush":
    flush_denormals()
torch.set_num_threads(2)
tiny = torch.full((1 << 22,), 1e-39)  # subnormal fp32, times 1 on every intra-op thread
print(int((tiny * 1.0 == 0).sum()), tiny.numel())
"""


@pytest.mark.parametrize("mode", ["flush", "keep"])
def test_flushing_denormals_at_the_start_reaches_every_thread(mode):
    """flush_denormals() before torch's first parallel region: the worker threads, which take the
    mode of the thread that starts them, treat a subnormal as 0 too (x86's DAZ); without it it stays."""
    out = subprocess.run(
        [sys.executable, "-c", FLUSH_CHECK, mode], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    zeros, total = int(out[0]), int(out[1])
    assert zeros == (total if mode == "flush" else 0)
