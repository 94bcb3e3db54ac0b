"""The checkpoint format: model, optimiser, loop state, RNG and the resolved config, written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from posbench.common.atomic import atomic_write
from posbench.runs.identity import experiment_config

SCHEMA_VERSION = 2
# schema 1 kept separate q and kv projections; its weights and optimiser state are fused on load
# (model/schema1.py), so it still evaluates and resumes
READABLE_SCHEMAS = (1, 2)
RUN_ENTRIES = ("config", "step", "tokens_seen")  # what evaluating a run's checkpoint needs
RESUME_ENTRIES = (*RUN_ENTRIES, "optimizer", "losses", "batches", "rng")  # what resuming it needs


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Written atomically: a kill never leaves half a file."""
    with atomic_write(path, "wb") as handle:
        torch.save({"schema_version": SCHEMA_VERSION, **state}, handle)


def checkpoint_file(path: str | Path) -> Path:
    """A run folder's ``checkpoints/last.pt`` (or a folder's ``last.pt``); a file path as given."""
    path = Path(path)
    if path.is_dir():
        return path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    return path


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
    require: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Load with ``weights_only=True`` (no pickled code runs) and check the schema and the
    ``require``d entries (``RUN_ENTRIES``, ``RESUME_ENTRIES``).

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the config is wanted."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass a run folder or its checkpoints/last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable posbench checkpoint ({type(exc).__name__}); "
            "it may be truncated or from another program: use another checkpoint or retrain"
        ) from None
    if not isinstance(state, dict) or "schema_version" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a posbench checkpoint (no schema_version/model entries)")
    if state["schema_version"] not in READABLE_SCHEMAS:
        raise CheckpointError(
            f"{path} has checkpoint schema {state['schema_version']}, this posbench reads "
            f"{' and '.join(map(str, READABLE_SCHEMAS))}; use the posbench version that wrote it"
        )
    missing = [key for key in require if key not in state]
    if missing or ("config" in require and not isinstance(state["config"], dict)):
        raise CheckpointError(
            f"{path} has no {', '.join(missing) or 'usable config'} entry: it was not written by "
            "posbench train (or was edited); use a run folder's checkpoints/last.pt or retrain"
        )
    return state


def saved_config(path: str | Path) -> Optional[dict]:
    """The run config saved in a checkpoint, or None when the file is not a usable checkpoint."""
    try:
        config = load_checkpoint(path, mmap=True).get("config")
    except CheckpointError:
        return None
    return config if isinstance(config, dict) else None


@dataclass(frozen=True)
class RunRecord:
    """What a run's checkpoints say of it: its plain resolved config, and whether a checkpoint's saved
    config may resume it."""

    config: dict[str, Any]

    def check_resumes(self, saved: dict) -> None:
        """A checkpoint resumes only a run of the same encoding, model, data, task and parent (as the
        identity sees them)."""
        theirs, ours = experiment_config(saved), experiment_config(self.config)
        for group in ("encoding", "model", "data", "task", "parent"):
            if theirs.get(group) != ours.get(group):
                raise ValueError(
                    f"cannot resume: the checkpoint's {group} config differs from this run's ({saved[group]})"
                )
