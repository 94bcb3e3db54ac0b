"""Where a run starts from: ``train.init_from``'s parent checkpoint, recorded as the run's ``parent``.

``train.init_from=PATH`` (a run folder or a ``.pt``) starts a new run from a parent's model weights,
not its optimiser, schedule or data position. The ``posbench_parent`` resolver (``parent:`` in
``configs/train.yaml``; registered by ``runs/resolvers.py``) reads the parent's saved config once,
when the config is composed, so the run config, its identity, its results and its W&B config all
carry the same record. The identity counts the parent by its seedless digest and its step:
fine-tuning each seed of one parent experiment gives the seeds of one child experiment.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from posbench.config import ParentRecord
from posbench.runs.checkpoint import RUN_ENTRIES, CheckpointError, checkpoint_file, load_checkpoint
from posbench.runs.identity import RunIdentity


def lineage_label(config: dict, steps: Optional[int] = None) -> str:
    """``rope-L256``; a run initialised from a parent: ``rope-L256 → rope+yarn-L1024 (200 steps)``."""
    identity = RunIdentity.from_config(config)
    own = f"{identity.label}-L{identity.train_len}"
    parent = config.get("parent")
    if not isinstance(parent, dict):
        return own
    return f"{parent['lineage']} → {own}" + (f" ({steps} steps)" if steps is not None else "")


def parent_record(init_from: Optional[str]) -> Optional[dict]:
    """The record of ``train.init_from``'s checkpoint, or None without one; ValueError in one line when
    there is no readable checkpoint there."""
    if init_from is None or str(init_from).strip().lower() in ("", "null", "none"):
        return None
    path = checkpoint_file(init_from)
    try:
        state = load_checkpoint(path, mmap=True, require=RUN_ENTRIES)
    except CheckpointError as exc:
        raise ValueError(f"train.init_from={init_from}: {exc}") from None
    config = state["config"]
    identity = RunIdentity.from_config(config)
    grandparent = config.get("parent")
    record = ParentRecord(
        checkpoint=str(path.resolve()),
        name=identity.name,
        label=identity.label,
        train_len=identity.train_len,
        seed=identity.seed,
        digest=identity.digest,
        seedless_digest=identity.seedless_digest,
        step=int(state["step"]),
        lineage=lineage_label(config, int(state["step"]) if isinstance(grandparent, dict) else None),
        root_train_len=grandparent["root_train_len"] if isinstance(grandparent, dict) else identity.train_len,
    )
    return asdict(record)


def trained_length(parent: Any, seq_len: int) -> int:
    """The length a run's weights were trained at before this run: its parent's, else ``seq_len``.
    A RoPE scaling's ``original_max_position`` defaults to it (``configs/encoding/scaling/*.yaml``)."""
    return int(parent["train_len"]) if parent is not None else int(seq_len)
