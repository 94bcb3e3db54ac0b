"""Which checkpoint ``train.resume`` means."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from posbench.config import RunConfig
from posbench.training.checkpoint import CheckpointError

TRUE_WORDS = {"true", "yes", "1", "latest"}
FALSE_WORDS = {"", "false", "no", "0", "none", "null"}


def find_resume_checkpoint(run: RunConfig, run_dir: Path) -> Optional[Path]:
    """None: start fresh. ``true``: the newest ``last.pt`` of a run of the same encoding and
    training length (and seed, in sweep folders) under ``run_root/experiment_name``, this
    run's folder included. A path:
    that checkpoint file, or a run folder holding ``checkpoints/last.pt``."""
    value = run.train.resume
    if value is None or str(value).strip().lower() in FALSE_WORDS:
        return None
    if str(value).strip().lower() in TRUE_WORDS:
        root = Path(run.run_root) / run.experiment_name
        kind = f"{getattr(run.encoding, 'members', run.encoding.name)}_L{run.train.seq_len}"  # as configs/train.yaml names folders
        names = (f"_{kind}", f"{kind}_s{run.train.seed}")  # single runs end with the first, sweep jobs are the second
        found = [p for p in root.rglob("checkpoints/last.pt") if p.parent.parent.name.endswith(names)]
        found += list((run_dir / "checkpoints").glob("last.pt"))
        if not found:
            raise CheckpointError(
                f"train.resume=true found no checkpoint of a {run.encoding.name} run at L={run.train.seq_len} "
                f"under {root}; pass train.resume=PATH to a run folder or checkpoint"
            )
        return max(set(found), key=lambda p: p.stat().st_mtime)
    path = Path(value)
    if path.is_dir() and (path / "checkpoints" / "last.pt").is_file():
        return path / "checkpoints" / "last.pt"
    if path.is_file():
        return path
    raise CheckpointError(f"train.resume={value}: no checkpoint there; pass a run folder or a .pt file")
