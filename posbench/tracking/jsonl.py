"""The local log that is always on: `<run_dir>/metrics.jsonl`, one JSON object a line.

Record shapes (every record has "time", Unix seconds):
  metrics  {"step": 100, "time": ..., "train/loss": 2.31, ...}
  eval     {"step": 100, "time": ..., "eval": {"length": 4096, "ppl": 9.1, ...}}  one per row
  image    {"step": 100, "time": ..., "image": {"key": "eval/ppl_plot", "path": "..."}}
  summary  {"time": ..., "summary": {...}}
"step" is the last step passed to `log` (null before any), so a metrics call without a
step and the eval/image records carry the step they belong to.
NaN and ±inf are written as null: JSON has no non-finite numbers.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from posbench.common.atomic import atomic_write
from posbench.tracking.base import check_eval_rows, check_metric_names, json_safe

# Record keys a metric name must not shadow: readers tell records apart by them.
RESERVED_KEYS = ("step", "time", "eval", "image", "summary")
ENDING_KEYS = ("eval", "image", "summary")  # records of a run's end, not of a step


def keep_through_step(path: str, step: int) -> None:
    """Rewrite the log (atomically) without the records of steps after ``step``, without the records
    of an ending (evaluation rows, images, summaries: the resumed run writes its own) and without
    lines a kill cut short: a run resumed in place from a checkpoint at ``step`` logs those again."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            ending = isinstance(record, dict) and any(key in record for key in ENDING_KEYS)
            if not ending and (not isinstance(record, dict) or (record.get("step") or 0) <= step):
                kept.append(line if line.endswith("\n") else line + "\n")
    with atomic_write(path) as f:
        f.write("".join(kept))


class JsonlTracker:
    def __init__(self, path: str, resume_step: int | None = None) -> None:
        """``resume_step``: a run resumed at that step continues this file without the rows past it."""
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume_step is not None:
            keep_through_step(path, resume_step)
        # Append, so a resumed run continues the file its killed predecessor wrote.
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the tracker's life, closed by close()
        self._last_step: int | None = None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        check_metric_names(metrics)
        clash = [key for key in RESERVED_KEYS if key in metrics]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the JSONL record; rename them")
        if step is not None:
            self._last_step = int(step)
        self._write(metrics)

    def log_eval(self, rows: list[dict]) -> None:
        check_eval_rows(rows)
        for row in rows:
            self._write({"eval": row})

    def log_image(self, key: str, path: str) -> None:
        self._write({"image": {"key": key, "path": os.path.abspath(path)}})

    def summary(self, values: dict) -> None:
        self._write({"summary": values}, with_step=False)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def _write(self, body: dict[str, Any], with_step: bool = True) -> None:
        head = {"step": self._last_step} if with_step else {}
        record = json_safe({**head, "time": time.time(), **body}, "record")
        # allow_nan=False: json_safe already removed non-finite floats, so this only
        # guards against a regression writing non-standard JSON.
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        # Flush each line to the OS so a killed (even SIGKILLed) run loses nothing.
        self._file.flush()
