"""Checkpoints: model, optimiser, loop state, RNG and the resolved config, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from posbench.config import SCHEMA_VERSION


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, then rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"schema_version": SCHEMA_VERSION, **state}, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` (no pickled code runs) and check the schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass a run folder or its checkpoints/last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable posbench checkpoint ({type(exc).__name__}); "
            "it may be truncated or from another program: use another checkpoint or retrain"
        ) from None
    if not isinstance(state, dict) or "schema_version" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a posbench checkpoint (no schema_version/model entries)")
    if state["schema_version"] != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint schema {state['schema_version']}, this posbench reads {SCHEMA_VERSION}; "
            "use the posbench version that wrote it"
        )
    return state
