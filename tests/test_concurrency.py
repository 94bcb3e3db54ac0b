"""One writer per run folder, with real racing processes: a second train or eval for a folder in use is
refused in one line naming the holder and writes nothing there; an evaluation never writes into a
training run's folder or another evaluation's; folders started in the same second get their own names;
two sweeps into one sweep folder train each job once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from posbench.runs.lock import LOCK_FILE, FolderInUse, hold_folder
from tests.conftest import REPO, posbench_cli

pytestmark = pytest.mark.slow  # real subprocesses end to end; make test runs them

SMOKE = ("debug=smoke", "logger=jsonl", "eval.lengths=[128]", "eval.diagnostics_windows=0")


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "posbench", *args]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_holder(folder: Path, process: subprocess.Popen, timeout: float = 60.0) -> dict:
    """The holder record of ``folder``'s lock, once ``process`` has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}): {process.communicate()[1]}")
        path = folder / LOCK_FILE
        if path.is_file() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"no process took {folder} within {timeout} s")


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.stat().st_size):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared: {process.returncode}")
        time.sleep(0.05)
    return path


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)  # checkpoints at the current step and exits 143
    process.communicate(timeout=60)


def train_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "train/loss" in row]


@dataclass
class Race:
    run_dir: Path
    holder: dict
    pid: int
    record: str  # the holder's .hydra/config.yaml once it held the folder
    second: subprocess.CompletedProcess  # another training into the folder, other settings
    resume: subprocess.CompletedProcess  # an in-place resume of the run
    alive_after: bool  # whether the holder still ran once both were refused


@pytest.fixture(scope="module")
def race(tmp_path_factory) -> Race:
    """A smoke training that runs until stopped; while it holds its folder, a second training into it
    and an in-place resume of it start together; then it is stopped (a checkpoint at its step)."""
    run_dir = tmp_path_factory.mktemp("race") / "run"
    first = start("train", *SMOKE, "train.max_steps=100000", f"hydra.run.dir={run_dir}")
    holder = wait_for_holder(run_dir, first)
    record = wait_for_file(run_dir / ".hydra" / "config.yaml", first).read_text()  # written once held
    others = [
        start("train", *SMOKE, "train.lr=5e-3", f"hydra.run.dir={run_dir}"),
        start(
            "train", *SMOKE, "train.max_steps=100000", f"train.resume={run_dir}", f"hydra.run.dir={run_dir}"
        ),
    ]
    second, resume = (subprocess.CompletedProcess(p.args, p.wait(120), *p.communicate()) for p in others)
    alive = first.poll() is None
    stop(first)
    return Race(run_dir, holder, first.pid, record, second, resume, alive)


def test_a_second_training_into_a_folder_in_use_is_refused_naming_the_holder(race):
    assert race.holder["pid"] == race.pid and race.holder["job"] == "train"
    assert race.second.returncode == 2, race.second.stderr
    line = race.second.stderr.strip().splitlines()[-1]
    assert f"is in use by train pid {race.pid} on " in line and "wait for it to end" in line
    assert (race.run_dir / ".hydra" / "config.yaml").read_text() == race.record  # the holder's record kept
    assert race.alive_after
    steps = train_steps(race.run_dir)
    assert steps and len(steps) == len(set(steps))  # one writer: no step logged twice


def test_an_in_place_resume_while_the_run_still_trains_is_refused(race):
    assert race.resume.returncode == 2 and f"pid {race.pid}" in race.resume.stderr, race.resume.stderr


@pytest.fixture(scope="module")
def finished_run(race):
    """A training folder: the stopped race's (a checkpoint and metrics, no results yet)."""
    return race.run_dir


def test_an_evaluation_never_writes_into_a_training_folder(finished_run):
    before = {
        p.name: p.read_bytes()
        for p in [finished_run / "checkpoints" / "last.pt", finished_run / "metrics.jsonl"]
    }
    record = (finished_run / ".hydra" / "config.yaml").read_bytes()
    into = posbench_cli(
        "eval", f"checkpoint={finished_run}", f"hydra.run.dir={finished_run}", "eval.lengths=[256]"
    )
    assert into.returncode == 2, into.stderr
    assert "holds a training run" in into.stderr and "leave hydra.run.dir unset" in into.stderr
    assert {
        name: p.read_bytes()
        for name, p in [
            ("last.pt", finished_run / "checkpoints" / "last.pt"),
            ("metrics.jsonl", finished_run / "metrics.jsonl"),
        ]
    } == before
    assert (finished_run / ".hydra" / "config.yaml").read_bytes() == record
    assert not (finished_run / "eval.log").exists() and not (finished_run / "results.json").exists()


def test_two_evaluations_started_together_get_folders_of_their_own(finished_run, tmp_path):
    evals = [
        start(
            "eval",
            f"checkpoint={finished_run}",
            f"run_root={tmp_path}",
            f"eval.lengths=[{n}]",
            "eval.diagnostics_windows=0",
        )
        for n in (128, 256)
    ]
    for process in evals:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    folders = sorted((tmp_path / "eval").iterdir())
    assert len(folders) == 2
    lengths = sorted(json.loads((f / "results.json").read_text())["results"][0]["length"] for f in folders)
    assert lengths == [128, 256]
    again = posbench_cli("eval", f"checkpoint={finished_run}", f"hydra.run.dir={folders[0]}")
    assert again.returncode == 2 and "holds another evaluation" in again.stderr, again.stderr


def test_two_sweeps_into_one_folder_train_each_job_once(tmp_path):
    sweep = (
        "train",
        "-m",
        *SMOKE,
        "train.max_steps=20",
        "train.seed=0,1",
        "train.resume=auto",
        f"hydra.sweep.dir={tmp_path}",
    )
    sweeps = [start(*sweep) for _ in range(2)]
    for process in sweeps:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    runs = sorted(p.parent for p in tmp_path.rglob("results.json"))
    assert len(runs) == 2
    for run_dir in runs:
        assert train_steps(run_dir) == sorted(set(train_steps(run_dir)))  # each step once
        assert max(train_steps(run_dir)) == 20


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    held = tmp_path / "f"
    with (
        hold_folder(held, "train"),
        pytest.raises(FolderInUse, match="by this process already"),
        hold_folder(held, "eval"),
    ):
        pass
    with hold_folder(tmp_path / "f", "eval"):  # released on leaving
        pass
