"""posbench's Hydra callbacks (``hydra.callbacks`` in ``configs/train.yaml`` and ``configs/eval.yaml``).

Hydra builds callbacks after composing the config and before it resolves the output folder:
``RegisterResolvers`` makes posbench's resolvers resolvable in every process (joblib workers
receive it pickled; unpickling builds it again), and ``CheckOutputFolder`` turns a config that does
not validate, or a folder that cannot be made, into one line before Hydra would fail in a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from posbench.common.checks import exit_with, one_line
from posbench.config import to_run_config
from posbench.runs.resolvers import INVALID, register_resolvers


class RegisterResolvers(Callback):
    """Makes posbench's resolvers resolvable, in this process and in joblib workers."""

    def __init__(self) -> None:
        register_resolvers()

    def __reduce__(self) -> tuple:
        return (type(self), ())  # unpickling calls __init__ again


def output_folder_problem(folder: Path) -> Optional[str]:
    """Why Hydra could not make ``folder`` (one line), or None; it is made here when it can be."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder: point hydra.run.dir (or run_root=...) elsewhere"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return (
            f"cannot make the folder {folder} ({exc.strerror}): point run_root=... (or hydra.run.dir, "
            "hydra.sweep.dir) at a place you can write"
        )
    return None


class CheckOutputFolder(Callback):
    """Hydra callback: before Hydra makes the job's folder (and would fail in a traceback), a config
    that does not validate or a folder that cannot be made ends in one line, exit 2, with no folder
    left behind."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir))
        if folder.name.endswith(INVALID):
            try:  # the job would say the same, after Hydra made an empty folder for it
                to_run_config(OmegaConf.create({k: config[k] for k in config if k != "hydra"}))
            except Exception as exc:  # the schema's own message
                exit_with(f"error: {one_line(exc)}")
        problem = output_folder_problem(folder)
        if problem:
            exit_with(f"error: {problem}")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = output_folder_problem(Path(str(config.hydra.sweep.dir)))
        if problem:
            exit_with(f"error: {problem}")
