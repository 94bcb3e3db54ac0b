"""Protects the SLURM path on one machine (hydra/launcher=submitit_local): sweep jobs run as submitit jobs,
and a job preempted with submitit's signal is requeued, resumes from its own checkpoint, and ends with
the numbers of an uninterrupted sweep."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from omegaconf import OmegaConf, ValidationError
from submitit.local.local import LocalJobEnvironment

from hydra_plugins.posbench_launchers import LocalLauncher, SlurmLauncher
from posbench.launchers import ON_REQUEUE, quiet_schema_by_name, requeue_overrides
from posbench.reports.results import load_results
from posbench.runs.identity import RunIdentity
from tests.conftest import compose_run

GRID = ("encoding=alibi,nope", "train.seed=0,1")
RUN = (
    "debug=smoke",
    "logger=jsonl",
    "train.max_steps=20",  # steps enough for the preemption to land mid-training
    "eval.lengths=[64,128]",
    "eval.max_tokens=256",
    "eval.diagnostics_windows=0",
)
EXPERIMENT = "submitit"
PREEMPTED = ("encoding=nope", "train.seed=1")  # the job the preemption stops
TIMEOUT_S = 600
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


def test_the_requeue_overrides_resume_the_run_in_place_of_any_resume_given():
    given = ["encoding=nope", "train.resume=runs/old", "train.seed=1"]
    assert requeue_overrides(given) == ["encoding=nope", "train.seed=1", ON_REQUEUE]
    assert requeue_overrides(requeue_overrides(given)) == requeue_overrides(given)  # requeued again
    assert requeue_overrides(["+train.resume=true"]) == [ON_REQUEUE]


def composed_launcher(name: str, command: str = "train", overrides: tuple[str, ...] = ()):
    from hydra import compose, initialize_config_dir

    from posbench.cli import CONFIG_DIR
    from posbench.config import register_schemas
    from posbench.runs.resolvers import register_resolvers

    quiet_schema_by_name()
    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(command, overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return cfg, instantiate(cfg.hydra.launcher)


@pytest.mark.parametrize(("name", "cls"), [("submitit_local", LocalLauncher), ("slurm", SlurmLauncher)])
def test_a_requeued_train_job_resumes_and_another_command_runs_again_as_it_was(name, cls):
    cfg, launcher = composed_launcher(name)
    # by name: Hydra's plugin scan executes the plugin module again, so the class objects differ
    assert f"{type(launcher).__module__}.{type(launcher).__name__}" == f"{cls.__module__}.{cls.__name__}"
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    overrides = ["encoding=nope", "train.seed=1"]
    again = launcher.checkpoint(overrides, "hydra.sweep.dir", 3, "job_id_for_3", {})
    assert again.function is launcher and again.args == (
        requeue_overrides(overrides),
        "hydra.sweep.dir",
        3,
        "job_id_for_3",
        {},
    )
    launcher.setup(hydra_context=None, task_function=print, config=OmegaConf.create({"checkpoint": "runs/x"}))
    assert launcher.checkpoint(overrides, "hydra.sweep.dir", 3, "id", {}).args[0] == overrides


def test_submitit_local_sets_every_key_of_the_plugin_schema_and_refuses_a_wrong_type():
    from posbench.cli import CONFIG_DIR

    written = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "launcher" / "submitit_local.yaml")
    assert set(written) == {f.name for f in dataclasses.fields(LocalQueueConf)}
    with pytest.raises(ConfigCompositionException, match="timeout_min"):
        composed_launcher("submitit_local", overrides=("hydra.launcher.timeout_min=soon",))
    with pytest.raises(ValidationError, match="timeout_min"):
        LocalLauncher(**{**OmegaConf.to_container(written), "timeout_min": "soon"})


# --- real submitit jobs -------------------------------------------------------------------------


def job_folder(*overrides: str) -> str:
    return RunIdentity.of(compose_run(*RUN, *overrides)).folder


def expected_folders() -> list[str]:
    return sorted(job_folder(f"encoding={e}", f"train.seed={s}") for e in ("alibi", "nope") for s in (0, 1))


def start_sweep(root: Path) -> subprocess.Popen:
    """``posbench train -m`` of the 4-job grid through submitit's local executor, in its own session so
    that a failed test can stop it with its jobs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    where = (f"run_root={root}", f"experiment_name={EXPERIMENT}", "hydra/launcher=submitit_local")
    command = [sys.executable, "-m", "posbench", "train", "-m", *RUN, *GRID, *where]
    root.mkdir(parents=True)
    with open(root / "sweep.log", "w") as log:
        return subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(sweep: subprocess.Popen, root: Path, deadline: float) -> Path:
    """Wait for the sweep; its one sweep folder."""
    try:
        returncode = sweep.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(sweep.pid, signal.SIGKILL)
        raise
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert returncode == 0, (root / "sweep.log").read_text()[-4000:]
    (folder,) = (root / EXPERIMENT).iterdir()
    return folder


def submitit_logs(folder: Path) -> dict[str, str]:
    """Each submitit job's stdout and stderr, by job id (both attempts of a requeued job)."""
    return {
        job.name: "".join(path.read_text() for path in sorted(job.glob("*_0_log.*")))
        for job in (folder / ".submitit").iterdir()
        if job.name.isdigit()
    }


def numbers(job: Path) -> dict:
    """What a job computed: nll and ppl per length, and its logged training and validation losses."""
    results = {
        row["length"]: (row["nll"], row["ppl"]) for row in load_results(job / "results.json")["results"]
    }
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], key, r[key]) for r in records for key in ("train/loss", "val/loss") if key in r]
    return {"results": results, "losses": losses}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("submitit") / "whole"
    return finish(start_sweep(root), root, time.monotonic() + TIMEOUT_S)


@pytest.mark.slow
def test_a_submitit_local_sweep_runs_each_job_as_a_submitit_job_into_its_folder(uninterrupted):
    jobs = sorted(p.name for p in uninterrupted.iterdir() if (p / "results.json").is_file())
    assert jobs == expected_folders()
    logs = submitit_logs(uninterrupted)
    assert len(logs) == len(jobs)
    assert all("Job completed successfully" in log and "Requeued" not in log for log in logs.values())


def submitit_job_writing(path: Path) -> int | None:
    """The process of the submitit job that has ``path`` open (Hydra's log of its run), if one has."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or b"submitit.core._submit" not in (proc / "cmdline").read_bytes():
                continue
            if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:  # the process ended meanwhile
            continue
    return None


def first_logged_step(metrics: Path) -> int | None:
    """The step of the first training loss in ``metrics`` (a line being written is skipped)."""
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "train/loss" in record:
            return record["step"]
    return None


def preempt_once_training(sweep: subprocess.Popen, root: Path, folder: str, deadline: float) -> int:
    """Once the job's first training loss is logged, send its process submitit's preemption signal, as
    SLURM does and as submitit's local controller does at its time limit; returns that logged step.
    (``LocalJob._interrupt`` signals the controller, which in submitit 1.5 does not pass SIGUSR2 on.)"""
    while time.monotonic() < deadline and sweep.poll() is None:
        jobs = list((root / EXPERIMENT).glob(f"*/{folder}"))
        step = first_logged_step(jobs[0] / "metrics.jsonl") if jobs else None
        pid = submitit_job_writing(jobs[0] / "train.log") if step is not None else None
        if pid is not None:
            os.kill(pid, LocalJobEnvironment._usr_sig())
            return step
        time.sleep(0.01)
    raise AssertionError(f"{folder} never trained: {(root / 'sweep.log').read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the job's process through /proc")
def test_a_preempted_job_is_requeued_resumes_from_its_checkpoint_and_the_sweep_equals_an_uninterrupted_one(
    uninterrupted, tmp_path
):
    root, deadline = tmp_path / "preempted", time.monotonic() + TIMEOUT_S
    sweep = start_sweep(root)
    target = job_folder(*PREEMPTED)
    logged = preempt_once_training(sweep, root, target, deadline)
    folder = finish(sweep, root, deadline)

    requeued = [log for log in submitit_logs(folder).values() if "Requeued job" in log]
    assert len(requeued) == 1, "submitit requeued no job, or more than one"
    (log,) = requeued
    usr = LocalJobEnvironment._usr_sig().name
    assert f"{usr} received: stopping after this step with a checkpoint" in log  # posbench's handler first
    assert f"Caught signal {usr}" in log and "this job is preempted" in log  # then submitit's
    assert log.count("Starting with JobEnvironment") == 2  # the job ran again
    ((checkpoint, step),) = RESUMED.findall((folder / target / "train.log").read_text())
    assert Path(checkpoint) == folder / target / "checkpoints" / "last.pt"
    assert logged <= int(step) < compose_run(*RUN).train.total_steps()  # mid-training, not from 0

    assert sorted(p.name for p in folder.iterdir() if (p / "results.json").is_file()) == expected_folders()
    for job in expected_folders():
        assert numbers(folder / job) == numbers(uninterrupted / job), job
