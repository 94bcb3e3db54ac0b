"""The tracker interface, its "off" and fan-out implementations, and value conversion.

Training and evaluation code log through a `Tracker` and never import a backend; the
factory (`posbench.tracking.factory.build_tracker`) picks the backends once.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, Iterable, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log scalar metrics at trainer step `step`; names must not start with "eval/"."""

    def log_eval(self, rows: list[dict]) -> None:
        """Log one evaluation: one row per eval length, each with "length", "ppl", "nll",
        "tokens_scored" and optionally other keys."""

    def log_image(self, key: str, path: str) -> None:
        """Log the image file at `path` (e.g. a ppl-vs-length plot) under `key`."""

    def summary(self, values: dict) -> None:
        """Record final, once-per-run values (best ppl, total tokens, ...)."""

    def close(self) -> None:
        """Flush and release the backend; safe to call twice."""


class NullTracker:
    """Tracking switched off (non-zero ranks): every call does nothing."""

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_eval(self, rows: list[dict]) -> None:
        pass

    def log_image(self, key: str, path: str) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


class FanOut:
    """Forwards every call to each tracker in order (e.g. JSONL + W&B)."""

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_eval(self, rows: list[dict]) -> None:
        for tracker in self.trackers:
            tracker.log_eval(rows)

    def log_image(self, key: str, path: str) -> None:
        for tracker in self.trackers:
            tracker.log_image(key, path)

    def summary(self, values: dict) -> None:
        for tracker in self.trackers:
            tracker.summary(values)

    def close(self) -> None:
        # Close every backend even if one fails, so the local log is never left unflushed
        # because the remote one raised; then report the first failure.
        errors = []
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]


def plain(value: Any, key: str = "value") -> Any:
    """Turn numpy/torch scalars (anything with `.item()`) and enums into plain Python
    values, recursively through dicts and lists; `key` names the culprit in errors."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item"):
        try:
            return value.item()
        except (ValueError, RuntimeError) as error:  # a tensor/array of several values
            raise TypeError(f"{key}: expected a scalar, got {type(value).__name__} ({error})") from None
    raise TypeError(f"{key}: cannot log a value of type {type(value).__name__}")


def json_safe(value: Any, key: str = "value") -> Any:
    """`plain`, then NaN and ±inf become None: JSON has no non-finite numbers, and a
    diverged run's NaN loss must still be a readable line."""
    return _finite_or_none(plain(value, key))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def check_metric_names(metrics: dict) -> None:
    """`log` must not use the "eval/" namespace: W&B plots it against eval length, so a
    per-step validation loss there would be drawn on the wrong axis. Use "val/"."""
    misplaced = [key for key in metrics if str(key).startswith("eval/")]
    if misplaced:
        raise ValueError(f"{misplaced}: 'eval/' is for log_eval rows; log per-step values as 'val/...'")


def check_eval_rows(rows: list[dict]) -> None:
    """Every eval row must say which length it measured; W&B plots against it."""
    for index, row in enumerate(rows):
        if "length" not in row:
            raise ValueError(f"eval row {index} has no 'length' key: {sorted(row)}")
