"""Run folder names from the run identity, for Hydra's ``run.dir`` and ``sweep.subdir``.

Hydra fixes the output folder before the job runs, so the names come from OmegaConf resolvers:
``${posbench_run_folder:}`` (``configs/train.yaml``: the identity of the config being composed)
and ``${posbench_checkpoint_folder:PATH}`` (``configs/eval.yaml``: the identity of the
checkpoint's run). A Hydra callback registers them (``hydra.callbacks`` in both files): Hydra
builds callbacks after composing the config and before it resolves the output folder. Joblib
workers receive the callback pickled; unpickling builds it again, so they register too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from posbench.checkpoint import saved_config
from posbench.checks import one_line
from posbench.config import to_run_config
from posbench.identity import RunIdentity
from posbench.lineage import register_parent_resolver

RUN_RESOLVER, CHECKPOINT_RESOLVER = "posbench_run_folder", "posbench_checkpoint_folder"
EVAL_RESOLVER = "posbench_eval_folder"  # configs/eval.yaml: a checkpoint's identity, or hf-<model>
UNREADABLE = "checkpoint"  # the job itself then says, in one line, what is wrong with the file
INVALID = "invalid-config"  # likewise for a config that does not validate


def run_folder(*, _root_: DictConfig) -> str:
    """The identity's folder name of the composed config this resolver is part of."""
    try:
        plain = {key: _root_[key] for key in _root_ if key != "hydra"}  # hydra's own keys hold this resolver
        return RunIdentity.of(to_run_config(OmegaConf.create(plain))).folder
    except Exception:
        return INVALID


def checkpoint_folder(path: str) -> str:
    config = saved_config(path)
    try:
        return RunIdentity.from_config(config).folder if config else UNREADABLE
    except (KeyError, TypeError, ValueError):
        return UNREADABLE


def eval_folder(checkpoint, hf) -> str:
    """``posbench eval``'s folder name: the checkpoint's run identity, or ``hf-<model name>``."""
    if hf is not None:
        return "hf-" + "".join(
            c if c.isalnum() or c in "-_." else "_" for c in str(hf).rstrip("/").split("/")[-1]
        )
    return checkpoint_folder(checkpoint) if checkpoint is not None else UNREADABLE


def register_resolvers() -> None:
    register_parent_resolver()  # the config's own resolvers, for joblib workers too
    OmegaConf.register_new_resolver(
        RUN_RESOLVER, run_folder, replace=True, use_cache=False
    )  # one per sweep job
    OmegaConf.register_new_resolver(CHECKPOINT_RESOLVER, checkpoint_folder, replace=True, use_cache=True)
    OmegaConf.register_new_resolver(EVAL_RESOLVER, eval_folder, replace=True, use_cache=True)


class RegisterFolderResolvers(Callback):
    """Hydra callback that makes the resolvers above resolvable, in this process and in workers."""

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
                stop(f"error: {one_line(exc)}")
        problem = output_folder_problem(folder)
        if problem:
            stop(f"error: {problem}")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = output_folder_problem(Path(str(config.hydra.sweep.dir)))
        if problem:
            stop(f"error: {problem}")


def stop(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(2)
