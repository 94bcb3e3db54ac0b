"""Experiment tracking: a local JSONL log that is always on, plus optional W&B.

Code logs through the `Tracker` interface and gets its trackers from `build_tracker`.
"""

from posbench.tracking.base import FanOut, NullTracker, Tracker
from posbench.tracking.factory import build_tracker
from posbench.tracking.jsonl import JsonlTracker
from posbench.tracking.wandb_tracker import WandbTracker

__all__ = ["FanOut", "JsonlTracker", "NullTracker", "Tracker", "WandbTracker", "build_tracker"]
