"""Protects training's failure behaviour: nothing lost, nothing silently wrong (divergence, stop signals,
a reused run folder, killed writes, a full disk, one-line errors)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import posbench.training.signals as signals_module
import posbench.training.trainer as trainer_module
from posbench.common.atomic import DiskFullError, atomic_write_text
from posbench.jobs.train import TrainingDiverged, train
from posbench.reports.results import load_results
from posbench.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from posbench.training.signals import Interrupted
from tests.conftest import posbench_cli

QUICK = ["train.val_every=0", "eval.enabled=false", "train.log_every=1"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def logged_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in records(run_dir) if "train/loss" in r]


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return posbench_cli(*args, cwd=cwd, timeout=timeout)


def at_step(monkeypatch, action) -> None:
    """Run ``action(step, loss, grad_norm) -> (loss, grad_norm)`` inside every training step (1-based)."""
    real = trainer_module.train_step
    calls = {"step": 0}

    def wrapped(*args, **kwargs):
        calls["step"] += 1
        loss, grad_norm, tokens = real(*args, **kwargs)
        return (*action(calls["step"], loss, grad_norm), tokens)

    monkeypatch.setattr(trainer_module, "train_step", wrapped)


def test_divergence_keeps_the_last_good_checkpoint_bitwise(smoke_run, tmp_path, monkeypatch):
    saved = []
    real_save = trainer_module.save_checkpoint

    def recording_save(path, state):
        real_save(path, state)
        saved.append((state["step"], Path(path).read_bytes()))

    monkeypatch.setattr(trainer_module, "save_checkpoint", recording_save)
    at_step(monkeypatch, lambda step, loss, g: (float("nan"), g) if step == 5 else (loss, g))
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"diverged at step 5 .*last finite loss \d"):
        train(smoke_run("train.max_steps=8", "train.ckpt_every=3", "train.val_every=0"), run_dir)
    assert [step for step, _ in saved] == [3]  # nothing after the NaN
    ckpt = run_dir / "checkpoints" / "last.pt"
    assert ckpt.read_bytes() == saved[-1][1]
    assert all(torch.isfinite(t).all() for t in load_checkpoint(ckpt)["model"].values())
    results = load_results(run_dir)
    assert results["diverged"]["step"] == 5 and results["diverged"]["checkpoint"] == str(ckpt)
    assert math.isfinite(results["diverged"]["last_finite_loss"])
    assert {r["status"] for r in results["results"]} == {"n/a"}
    assert all("training diverged at step 5" in r["reason"] for r in results["results"])
    summary = [r["summary"] for r in records(run_dir) if "summary" in r]
    assert summary == [{"diverged": results["diverged"]}]


def test_skipped_nonfinite_steps_are_not_applied_then_training_stops(smoke_run, tmp_path, monkeypatch):
    at_step(monkeypatch, lambda step, loss, g: (loss, float("inf")) if step in (2, 4) else (loss, g))
    out = train(smoke_run("train.max_steps=3", "train.skip_nonfinite_steps=1", *QUICK), tmp_path / "a")
    assert out["step"] == 3
    assert all(torch.isfinite(t).all() for t in load_checkpoint(tmp_path / "a")["model"].values())
    assert [r["train/skipped_steps"] for r in records(tmp_path / "a") if r.get("step") == 3] == [1]
    monkeypatch.undo()
    at_step(monkeypatch, lambda step, loss, g: (loss, float("inf")) if step in (2, 4) else (loss, g))
    with pytest.raises(TrainingDiverged, match="diverged at step 4"):
        train(smoke_run("train.max_steps=6", "train.skip_nonfinite_steps=1", *QUICK), tmp_path / "b")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_its_step_and_the_in_place_resume_equals_an_uninterrupted_run(
    smoke_run, tmp_path, monkeypatch, signum
):
    steps = ["train.max_steps=7", "train.ckpt_every=0", *QUICK]
    before = signal.getsignal(signum)  # the default, or ignored where the suite runs in the background
    whole = train(smoke_run(*steps), tmp_path / "whole")["losses"]

    def send(step, loss, g):
        if step == 3:
            os.kill(os.getpid(), signum)
        return loss, g

    at_step(monkeypatch, send)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        train(smoke_run(*steps), run_dir)
    assert stopped.value.exit_code == 128 + signum
    assert f"after step 3; checkpoint {run_dir / 'checkpoints' / 'last.pt'}" in str(stopped.value)
    assert f"train.resume={run_dir} hydra.run.dir={run_dir}" in str(stopped.value)
    assert load_checkpoint(run_dir)["step"] == 3
    assert signal.getsignal(signum) == before  # handlers restored
    monkeypatch.undo()
    resumed = train(smoke_run(*steps, f"train.resume={run_dir}"), run_dir)["losses"]
    for step in range(1, 8):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-6, abs=1e-6), step
    assert logged_steps(run_dir) == list(range(1, 8))  # the in-place resume logged no step twice


def sigterm_twice_at_step_2(step, loss, g):
    if step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    return loss, g


def test_a_second_signal_stops_at_once(smoke_run, tmp_path, monkeypatch):
    at_step(monkeypatch, sigterm_twice_at_step_2)
    monkeypatch.setattr(signals_module, "REPEAT_S", 0.0)  # the second is a second request, however soon
    with pytest.raises(Interrupted, match="SIGTERM again: stopped at once"):
        train(smoke_run("train.max_steps=6", "train.ckpt_every=0", *QUICK), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_one_signal_delivered_twice_at_once_is_one_stop_request(smoke_run, tmp_path, monkeypatch):
    """SLURM signals every task of a step and torchrun's agent forwards the signal too: a worker may see
    one SIGTERM twice within milliseconds, which must still end in a checkpoint."""

    at_step(monkeypatch, sigterm_twice_at_step_2)
    with pytest.raises(Interrupted, match="stopped by SIGTERM after step 2"):
        train(smoke_run("train.max_steps=6", "train.ckpt_every=0", *QUICK), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run")["step"] == 2


@pytest.mark.slow
def test_sigterm_to_the_cli_checkpoints_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "debug=smoke", "logger=jsonl", f"hydra.run.dir={run_dir}", "train.max_steps=400"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "posbench", *args, *QUICK],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    for _ in range(600):
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("stopped by SIGTERM")]
    step = load_checkpoint(run_dir)["step"]
    assert f"after step {step};" in line and f"train.resume={run_dir}" in line
    assert max(logged_steps(run_dir)) == step


def test_a_folder_holding_a_run_is_refused_unless_resuming_it(smoke_run, tmp_path):
    steps = ["train.max_steps=4", *QUICK]
    root = tmp_path / "runs" / "smoke"
    run_dir = root / "2026-01-01_00-00-00_alibi_L128_s0_abc123"
    train(smoke_run(*steps, "train.stop_after_steps=2"), run_dir)
    before = (run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match=f"{run_dir} already holds a run .*train.resume={run_dir}"):
        train(smoke_run(*steps), run_dir)
    with pytest.raises(ValueError, match="already holds a run"):
        train(smoke_run("encoding=rope", *steps), run_dir)  # another experiment, same folder
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    assert load_checkpoint(run_dir)["step"] == 2
    assert train(smoke_run(*steps, "train.resume=true"), run_dir)["step"] == 4  # its match is this folder
    assert logged_steps(run_dir) == [1, 2, 3, 4]
    other = tmp_path / "other"
    train(smoke_run(*steps, "train.stop_after_steps=1"), other)
    with pytest.raises(ValueError, match="already holds a run"):
        train(smoke_run(*steps, f"train.resume={run_dir}"), other)  # resuming another folder's run here


def test_temp_files_of_killed_writes_are_removed_when_the_run_resumes(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    train(smoke_run("train.max_steps=4", "train.stop_after_steps=2", *QUICK), run_dir)
    stale = [run_dir / ".tmp-abc.json", run_dir / "checkpoints" / ".tmp-def.pt"]
    for path in stale:
        path.write_bytes(b"half")
    train(smoke_run("train.max_steps=4", f"train.resume={run_dir}", *QUICK), run_dir)
    assert not any(path.exists() for path in stale)


def test_resume_true_with_another_seed_finds_no_checkpoint_and_auto_starts_fresh(smoke_run, tmp_path):
    steps = ["train.max_steps=4", *QUICK]
    root = tmp_path / "runs" / "smoke"
    train(smoke_run(*steps, "train.stop_after_steps=2"), root / "2026-01-01_00-00-00_alibi_L128_s0_abc123")
    with pytest.raises(CheckpointError, match="found no checkpoint of this run"):
        train(smoke_run(*steps, "train.seed=1", "train.resume=true"), root / "seed1")
    fresh = train(smoke_run(*steps, "train.seed=1", "train.resume=auto"), root / "seed1-auto")
    assert sorted(fresh["losses"]) == [1, 2, 3, 4]
    resumed = train(smoke_run(*steps, "train.resume=auto"), root / "seed0-auto")
    assert resumed["step"] == 4 and sorted(resumed["losses"]) == [1, 2, 3, 4]


def test_a_checkpoint_without_a_config_is_refused_naming_the_file(smoke_run, tmp_path):
    path = tmp_path / "bare.pt"
    save_checkpoint(path, {"model": {}})
    with pytest.raises(CheckpointError, match=f"{path} has no config, step, tokens_seen"):
        train(smoke_run("train.max_steps=2", f"train.resume={path}", *QUICK), tmp_path / "run")
    done = cli("eval", f"checkpoint={path}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {path} has no config")


def test_eval_without_a_checkpoint_says_to_pass_one(tmp_path):
    done = cli("eval", "eval.lengths=[128]", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: posbench eval needs a checkpoint: pass checkpoint=PATH (a run folder or a .pt file), "
        "or hf=NAME_OR_DIR (a pretrained Llama-family model)"
    ]


def fill_disk(monkeypatch) -> None:
    """From now on every atomic write's temp file is /dev/full: writing it fails with ENOSPC."""
    import posbench.common.atomic as atomic

    real = atomic.tempfile.mkstemp

    def mkstemp(**kwargs):
        fd, tmp = real(**kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)


def test_a_full_disk_keeps_the_previous_file_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    from posbench.cli import _guarded

    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    fill_disk(monkeypatch)
    with pytest.raises(DiskFullError, match=f"writing {path} \\(the previous last.pt is kept\\)"):
        save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}})
    with pytest.raises(DiskFullError, match="nothing was written\\); free space"):
        atomic_write_text(tmp_path / "results.json", "x" * 100_000)
    with pytest.raises(SystemExit) as exited:
        _guarded(lambda cfg: save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}}))(None)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on the device while writing")
    monkeypatch.undo()
    assert load_checkpoint(path)["model"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert not list(tmp_path.rglob(".tmp-*"))


FULL_DISK = """
import os, sys, tempfile
import posbench.common.atomic as atomic
real = tempfile.mkstemp
def mkstemp(**kwargs):
    fd, tmp = real(**kwargs)
    os.close(fd)
    return os.open("/dev/full", os.O_WRONLY), tmp
atomic.tempfile.mkstemp = mkstemp
from posbench.__main__ import run
sys.argv = ["posbench", *sys.argv[1:]]
run()
"""


@pytest.mark.slow
def test_a_full_disk_at_start_stops_in_one_line_and_leaves_no_half_written_record(tmp_path):
    """Every write fails with ENOSPC from the first: the Hydra record (the first thing a held job writes)
    fails whole, in one line, exit 2, before any training; no empty config.yaml, no temp file."""
    run_dir = tmp_path / "run"
    args = ["train", "debug=smoke", "logger=jsonl", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on the device while writing")
    assert ".hydra" in err[0] and "Traceback" not in done.stderr
    left = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
    assert not [p for p in left if p.startswith(".hydra/") or ".tmp-" in p], left
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()


def nan_at(calls: set[int]):
    """A ``at_step`` action making the loss of the given calls (1-based, per train()) non-finite."""
    return lambda step, loss, g: (math.nan, g) if step in calls else (loss, g)


def test_skipped_steps_survive_a_resume(smoke_run, tmp_path, monkeypatch):
    """With one bad step allowed, a run that skipped one before its checkpoint still stops at the next
    after a resume, as the uninterrupted run does (the count is in the checkpoint)."""
    steps = ["train.max_steps=8", "train.ckpt_every=0", "train.skip_nonfinite_steps=1", *QUICK]
    at_step(monkeypatch, nan_at({2, 5}))
    with pytest.raises(TrainingDiverged, match="diverged at step 5"):
        train(smoke_run(*steps), tmp_path / "whole")
    at_step(monkeypatch, nan_at({2}))
    train(smoke_run(*steps, "train.stop_after_steps=3"), tmp_path / "killed")
    at_step(monkeypatch, nan_at({2}))  # the resumed run's second step is step 5
    with pytest.raises(TrainingDiverged, match="diverged at step 5"):
        train(smoke_run(*steps, f"train.resume={tmp_path / 'killed'}"), tmp_path / "resumed")


def test_a_signal_during_the_last_checkpoint_stops_before_the_evaluation(smoke_run, tmp_path, monkeypatch):
    real_save = trainer_module.save_checkpoint

    def save_then_signal(path, state):
        real_save(path, state)
        if state["step"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_signal)
    run = smoke_run("train.max_steps=4", "train.ckpt_every=0", "train.val_every=0")
    with pytest.raises(Interrupted, match="stopped by SIGTERM after step 4"):
        train(run, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run")["step"] == 4 and not (tmp_path / "run" / "results.json").exists()


def test_an_in_place_resume_with_another_config_is_refused(smoke_run, tmp_path):
    steps = ["train.max_steps=4", *QUICK]
    train(smoke_run(*steps, "train.stop_after_steps=2"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"another experiment than this config \(train\.lr: "):
        train(smoke_run(*steps, "train.lr=1e-4", f"train.resume={tmp_path / 'a'}"), tmp_path / "a")


def test_resume_auto_restarts_a_job_killed_before_its_first_checkpoint_in_its_own_folder(smoke_run, tmp_path):
    """A requeued sweep job (train.resume=auto) whose folder holds metrics but no checkpoint starts afresh
    there, with no row of the killed attempt left in metrics.jsonl."""
    from posbench.runs.identity import RunIdentity

    run = smoke_run("train.max_steps=4", "train.resume=auto", *QUICK)
    run_dir = tmp_path / "sweep" / RunIdentity.of(run).folder
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 9.9}) + "\n")
    train(run, run_dir)
    assert logged_steps(run_dir) == [1, 2, 3, 4]
    assert all(r.get("train/loss") != 9.9 for r in records(run_dir))
    with pytest.raises(ValueError, match="already holds a run"):  # another folder name: not this run's own
        other = tmp_path / "other"
        other.mkdir()
        (other / "metrics.jsonl").write_text("")
        train(run, other)


@pytest.mark.slow
def test_a_diverging_or_bad_job_does_not_stop_the_sweep_and_the_sweep_says_so(tmp_path):
    """The sweep goes on past a diverging job and past a job refused for a user error (here a
    validation length past the split), then ends with one line per such job and a non-zero code: 3
    when only divergence, 2 when a job was refused. The bad job leaves no folder."""
    args = ["train", "-m", "debug=smoke", "logger=jsonl", "train.max_steps=6", "eval.lengths=[128]"]
    diverging = posbench_cli(*args, "train.lr=1e4,1e-3", f"run_root={tmp_path / 'a'}", timeout=300)
    assert diverging.returncode == 3, diverging.stderr[-2000:]
    assert "sweep finished; 1 job(s) did not:" in diverging.stderr and "train.lr=10000.0" in diverging.stderr
    results = list((tmp_path / "a").rglob("results.json"))
    assert len(results) == 2 and sum(load_results(p).get("diverged") is not None for p in results) == 1
    bad = posbench_cli(*args, "train.val_lengths=[100000000],[]", f"run_root={tmp_path / 'b'}", timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "cannot validate at 100000000 tokens" in bad.stderr.splitlines()[-1]
    runs = [p for p in (tmp_path / "b").rglob("*_L128_*") if p.is_dir()]
    assert [(p / "results.json").is_file() for p in runs] == [True]  # the good job ran; the bad left nothing


@pytest.mark.parametrize(
    "args,expected",
    [
        (["+train.lrr=0.1"], "train.lrr is not an option of this config"),
        (["train.lrr=0.1"], "train.lrr is not an option of this config"),
        (["train.lr=fast"], "could not be converted to Float"),
        (["train.init_from=/missing"], "error: train.init_from=/missing: no checkpoint at /missing"),
        (["train.min_lr_ratio=-1"], "train.min_lr_ratio=-1.0 must be in [0, 1]"),
        (["eval.protocol=sliding", "eval.stride=100000"], "exceeds the window length 128"),
        (["eval.lengths=[128,128]"], "names 128 more than once"),
    ],
)
def test_a_bad_config_ends_in_one_line_exit_2_before_any_folder(args, expected, tmp_path):
    result = posbench_cli("train", "debug=smoke", "logger=jsonl", f"run_root={tmp_path}", *args)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.rglob("*")), list(tmp_path.rglob("*"))  # no folder, empty or not


@pytest.mark.slow
def test_a_validation_split_shorter_than_one_window_is_refused_before_any_step(tmp_path):
    (tmp_path / "train.txt").write_text("a training text of some length. " * 400)
    (tmp_path / "val.txt").write_text("too short")
    files = [f"data.train_files=[{tmp_path / 'train.txt'}]", f"data.val_files=[{tmp_path / 'val.txt'}]"]
    runs = tmp_path / "runs"
    result = posbench_cli(
        "train", "debug=smoke", "logger=jsonl", "data=text_files", *files, f"run_root={runs}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: cannot validate at 128 tokens (the validation stream has 10 tokens, fewer than one window "
        "of 129): give a longer validation split, or set train.val_every=0"
    ]
    assert not [r for run in runs.rglob("metrics.jsonl") for r in records(run.parent) if "train/loss" in r]


@pytest.mark.slow
def test_a_folder_that_cannot_be_made_ends_in_one_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for args, expected in (
        ([f"hydra.run.dir={a_file}"], "is a file, not a folder"),
        ([f"run_root={a_file / 'below'}"], "cannot make the folder"),
        (["-m", f"hydra.sweep.dir={a_file / 'sweep'}"], "cannot make the folder"),
    ):
        result = posbench_cli("train", *args, "debug=smoke", "logger=jsonl")
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_truncated_checkpoint_in_its_own_folder_is_said_to_be_unreadable(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    train(smoke_run("train.max_steps=3", *QUICK), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="it may be truncated"):
        train(smoke_run("train.max_steps=3", f"train.resume={run_dir}", *QUICK), run_dir)
    with pytest.raises(ValueError, match=r"checkpoint .*last.pt cannot be read \(truncated"):
        train(smoke_run("train.max_steps=3", "train.resume=auto", *QUICK), run_dir)


IMPORTS_THEN_RUN = """
import sys
print("importing", file=sys.stderr, flush=True)
from posbench.__main__ import run
sys.argv = ["posbench", *sys.argv[1:]]
run()
"""


def test_ctrl_c_while_posbench_imports_ends_in_one_line(tmp_path):
    """The Ctrl-C arrives once the interpreter is up and posbench (torch, Hydra) is importing: the
    child says so on stderr first, and starts with Ctrl-C's default disposition (a test runner's
    worker may ignore SIGINT, which a child would inherit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-c", IMPORTS_THEN_RUN, "train", "debug=smoke", f"run_root={tmp_path}"]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr.readline().strip() == "importing"
    time.sleep(0.2)  # torch and Hydra take seconds to import
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C) before anything"), err
    assert not list(tmp_path.rglob("*.pt"))


def test_the_bare_command_lists_every_command_and_where_each_explains_itself(capsys):
    from posbench.__main__ import main
    from posbench.cli import COMMANDS

    main([])
    usage = capsys.readouterr().out
    for command in [*COMMANDS, "compare"]:
        assert f"\n  {command} " in usage
    assert "eval hf=" in usage and "has its own --help" in usage and "debug=smoke" in usage
    for command in [*COMMANDS, "compare"]:
        done = posbench_cli(command, "--help")
        assert done.returncode == 0 and done.stdout.strip(), (command, done.stderr[-500:])
