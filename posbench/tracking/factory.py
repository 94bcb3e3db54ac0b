"""`build_tracker`: the one place that decides which trackers a process gets."""

from __future__ import annotations

import os

from posbench.tracking.base import FanOut, NullTracker, Tracker
from posbench.tracking.config import LoggerConfig
from posbench.tracking.jsonl import JsonlTracker
from posbench.tracking.wandb_tracker import WandbTracker, resolve_mode

LOGGER_NAMES = ("wandb", "jsonl", "none")


def build_tracker(
    cfg: LoggerConfig,
    run_dir: str,
    config: dict,
    name: str,
    group: str | None = None,
    rank: int = 0,
    job_type: str = "train",
    resume_step: int | None = None,
) -> Tracker:
    """Trackers for this process.

    Rank 0 always writes `<run_dir>/metrics.jsonl`; `cfg.name == "wandb"` adds W&B
    (unless its mode resolves to "disabled"); "jsonl" and "none" both mean JSONL only,
    i.e. "none" disables remote tracking, never the local log. Other ranks get a
    `NullTracker`, so callers never check the rank themselves. `resume_step`: a run resumed at that
    step drops the rows its predecessor logged after it from `metrics.jsonl`. `cfg.group`, when set,
    overrides `group` (the caller's default, e.g. the experiment name).
    """
    if cfg.name not in LOGGER_NAMES:
        raise ValueError(f"logger.name={cfg.name!r} is not one of {LOGGER_NAMES}")
    if rank != 0:
        return NullTracker()
    os.makedirs(run_dir, exist_ok=True)
    local = JsonlTracker(os.path.join(run_dir, "metrics.jsonl"), resume_step)
    if cfg.name != "wandb" or resolve_mode(cfg.mode) == "disabled":
        return local
    try:
        remote = WandbTracker(cfg, run_dir, config, name, group, job_type)
    except Exception:
        local.close()  # the caller never gets a tracker to close
        raise
    return FanOut([local, remote])
