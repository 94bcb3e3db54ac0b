"""Protects experiment tracking: the local JSONL log is always written and readable, rank gating, and W&B
offline/online behaviour without network or prompts."""

from __future__ import annotations

import glob
import json
import os
import time

import numpy as np
import pytest
import torch

from posbench.config import LoggerConfig
from posbench.tracking import FanOut, JsonlTracker, NullTracker, build_tracker

EVAL_ROWS = [
    {"length": 128, "ppl": 3.0, "nll": 1.1, "tokens_scored": 1000},
    {"length": 256, "ppl": float("nan"), "nll": np.float64(1.2), "tokens_scored": 2000, "encoding": "rope"},
]


def read_records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def wandb_home(monkeypatch, tmp_path):
    """A user with no W&B credentials and no WANDB_MODE; fresh wandb process state."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_SILENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))  # does not exist
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / ".cache" / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / ".local" / "wandb"))
    # wandb caches settings and credentials per process; start and end from nothing.
    wandb.teardown()
    yield home
    wandb.teardown()


def test_jsonl_records_parse_and_carry_step_and_time(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tracker = JsonlTracker(str(path))
    tracker.log({"train/loss": torch.tensor(2.5), "lr": np.float32(0.5)}, step=10)
    tracker.log({"train/loss": float("nan"), "grad_norm": float("inf")})  # no step: keeps 10
    tracker.log_eval(EVAL_ROWS)
    tracker.log_image("eval/plot", "plot.png")
    tracker.summary({"best_ppl": np.float64(3.0)})
    # Read before close: every line must already be on disk for a killed run.
    records = read_records(str(path))
    tracker.close()

    assert len(records) == 6
    assert all(isinstance(r["time"], float) for r in records)
    assert records[0] == {"step": 10, "time": records[0]["time"], "train/loss": 2.5, "lr": 0.5}
    assert records[1]["step"] == 10
    assert records[1]["train/loss"] is None and records[1]["grad_norm"] is None  # NaN/inf → null
    assert [r["eval"]["length"] for r in records[2:4]] == [128, 256]
    assert records[3]["eval"]["ppl"] is None and records[3]["eval"]["encoding"] == "rope"
    assert records[4]["image"] == {"key": "eval/plot", "path": os.path.abspath("plot.png")}
    assert records[5]["summary"] == {"best_ppl": 3.0} and "step" not in records[5]


def test_jsonl_appends_on_resume_and_rejects_bad_input(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    for step in (1, 2):  # two processes writing the same run directory
        tracker = JsonlTracker(path)
        tracker.log({"loss": 1.0}, step=step)
        tracker.close()
    assert [r["step"] for r in read_records(path)] == [1, 2]

    tracker = JsonlTracker(path)
    with pytest.raises(ValueError, match="reserved"):
        tracker.log({"step": 3})
    with pytest.raises(TypeError, match="loss"):
        tracker.log({"loss": torch.ones(3)}, step=3)
    with pytest.raises(ValueError, match="val/"):  # W&B would plot it against eval length
        tracker.log({"eval/loss": 1.0}, step=3)
    with pytest.raises(ValueError, match="length"):
        tracker.log_eval([{"ppl": 3.0}])
    tracker.close()


class Recorder:
    def __init__(self, fail_close: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_close = fail_close

    def log(self, metrics, step=None):
        self.calls.append(("log", metrics, step))

    def log_eval(self, rows):
        self.calls.append(("log_eval", rows))

    def log_image(self, key, path):
        self.calls.append(("log_image", key, path))

    def summary(self, values):
        self.calls.append(("summary", values))

    def close(self):
        self.calls.append(("close",))
        if self.fail_close:
            raise RuntimeError("remote close failed")


def test_fanout_calls_every_tracker_and_closes_all_despite_errors():
    first, second = Recorder(fail_close=True), Recorder()
    fan = FanOut([first, second])
    fan.log({"loss": 1.0}, step=3)
    fan.log_eval(EVAL_ROWS)
    fan.log_image("k", "p.png")
    fan.summary({"a": 1})
    with pytest.raises(RuntimeError, match="remote close failed"):
        fan.close()
    expected = [
        ("log", {"loss": 1.0}, 3),
        ("log_eval", EVAL_ROWS),
        ("log_image", "k", "p.png"),
        ("summary", {"a": 1}),
        ("close",),
    ]
    assert first.calls == expected and second.calls == expected


def test_nonzero_rank_gets_null_tracker_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    tracker = build_tracker(LoggerConfig(name="wandb"), str(run_dir), {}, "r", rank=1)
    assert isinstance(tracker, NullTracker)
    tracker.log({"loss": 1.0}, step=1)
    tracker.close()
    assert not run_dir.exists()


@pytest.mark.parametrize("name", ["jsonl", "none"])
def test_jsonl_and_none_keep_the_local_log_only(tmp_path, name):
    tracker = build_tracker(LoggerConfig(name=name), str(tmp_path), {}, "r")
    tracker.log({"loss": 1.0}, step=1)
    tracker.close()
    assert isinstance(tracker, JsonlTracker)
    assert read_records(str(tmp_path / "metrics.jsonl"))[0]["loss"] == 1.0
    assert not (tmp_path / "wandb").exists()


def test_unknown_logger_name_fails(tmp_path):
    with pytest.raises(ValueError, match=r"logger.name"):
        build_tracker(LoggerConfig(name="tensorboard"), str(tmp_path), {}, "r")


def test_wandb_offline_run_writes_local_files(wandb_home, tmp_path):
    image = pytest.importorskip("PIL.Image")
    plot = tmp_path / "plot.png"
    image.new("RGB", (8, 8)).save(plot)
    run_dir = tmp_path / "run"
    started = time.monotonic()
    tracker = build_tracker(
        LoggerConfig(name="wandb", tags=["test"]),
        str(run_dir),
        {"model": {"d_model": 64}},
        "offline-test",
        group="tests",
    )
    for step in range(3):
        tracker.log({"train/loss": torch.tensor(3.0 - step)}, step=step)
    tracker.log_eval(EVAL_ROWS)
    tracker.log_image("eval/ppl_plot", str(plot))
    tracker.summary({"best_ppl": 3.0})
    tracker.close()
    assert time.monotonic() - started < 60  # offline must never wait on login or network

    (offline_dir,) = glob.glob(str(run_dir / "wandb" / "offline-run-*"))
    (transaction_log,) = glob.glob(os.path.join(offline_dir, "*.wandb"))
    assert os.path.getsize(transaction_log) > 0
    assert glob.glob(os.path.join(offline_dir, "files", "media", "table", "eval", "table_*.table.json"))
    assert glob.glob(os.path.join(offline_dir, "files", "media", "images", "eval", "ppl_plot_*.png"))
    records = read_records(str(run_dir / "metrics.jsonl"))  # the local log is on with W&B too
    assert [r["step"] for r in records[:3]] == [0, 1, 2]
    assert sum("eval" in r for r in records) == 2


def test_wandb_mode_env_var_wins_over_config(wandb_home, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tracker = build_tracker(LoggerConfig(name="wandb", mode="online"), str(tmp_path), {}, "r")
    tracker.close()
    assert isinstance(tracker, JsonlTracker)
    assert not (tmp_path / "wandb").exists()


@pytest.mark.parametrize("source", ["config", "env"])
def test_online_without_api_key_fails_fast_with_advice(wandb_home, tmp_path, monkeypatch, source):
    cfg = LoggerConfig(name="wandb", mode="online" if source == "config" else "offline")
    if source == "env":
        monkeypatch.setenv("WANDB_MODE", "online")
    started = time.monotonic()
    with pytest.raises(RuntimeError) as error:
        build_tracker(cfg, str(tmp_path), {}, "r")
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "wandb login" in message and "logger.mode=offline" in message
    assert ("WANDB_MODE" in message) == (source == "env")
    assert not (tmp_path / "wandb").exists()


def test_a_resumed_log_drops_rows_past_the_checkpoint_its_ending_and_a_cut_short_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tracker = JsonlTracker(str(path))
    for step in (1, 2, 3, 4):
        tracker.log({"train/loss": float(step)}, step=step)
    tracker.summary({"diverged": {"step": 4}})  # an ending the resumed run redoes
    tracker.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 2, "train/lo')  # a kill in the middle of a line
    resumed = JsonlTracker(str(path), resume_step=2)
    resumed.log({"train/loss": 30.0}, step=3)
    resumed.close()
    rows = read_records(str(path))
    assert [(r.get("step"), r.get("train/loss")) for r in rows if "train/loss" in r] == [
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]
    assert not [r for r in rows if "summary" in r]  # the resumed run writes its own
