"""Results files (results.json, results.csv) and the printed perplexity table."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

RESULTS_SCHEMA_VERSION = 1
CSV_FIELDS = ("length", "protocol", "status", "ppl", "nll", "tokens_scored", "windows", "backend", "wall_time_s", "reason")


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_results(run_dir: str | Path, rows: list[dict], metadata: dict[str, Any]) -> dict:
    """Write ``results.json`` and ``results.csv`` into ``run_dir``; returns the JSON document."""
    run_dir = Path(run_dir)
    document = {"schema_version": RESULTS_SCHEMA_VERSION, **metadata, "results": rows}
    atomic_write_text(run_dir / "results.json", json.dumps(document, indent=2) + "\n")
    with open(run_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return document


def format_table(rows: Iterable[dict], train_len: int | None = None) -> str:
    """A fixed-width table: length, perplexity, NLL, tokens scored, backend."""
    lines = [f"{'length':>8} {'x train':>7} {'ppl':>10} {'nll':>8} {'tokens':>9}  backend"]
    for row in rows:
        ratio = f"{row['length'] / train_len:.1f}" if train_len else "-"
        if row["status"] != "ok":
            lines.append(f"{row['length']:>8} {ratio:>7} {'n/a':>10} {'':>8} {0:>9}  ({row['reason']})")
            continue
        ppl = row["ppl"] if math.isfinite(row["ppl"]) else float("inf")
        lines.append(f"{row['length']:>8} {ratio:>7} {ppl:>10.3f} {row['nll']:>8.4f} {row['tokens_scored']:>9}  {row['backend']}")
    return "\n".join(lines)
