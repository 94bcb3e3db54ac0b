"""Hydra entry points: parse config, call ``train(cfg)`` or ``evaluate(cfg)``, report errors in one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from posbench.config import register_schemas, to_run_config

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def _user_errors() -> tuple[type[BaseException], ...]:
    from posbench.checkpoint import CheckpointError
    from posbench.data import DataError

    return (ValueError, DataError, CheckpointError)


def _guarded(job: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Errors a user can fix (bad config, missing data, corrupt checkpoint) end in one line."""

    def wrapper(cfg: DictConfig) -> object:
        try:
            return job(cfg)
        except _user_errors() as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    wrapper.__name__ = job.__name__
    return wrapper


def _choices() -> dict:
    return {
        k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith(("hydra", "schema"))
    }


@_guarded
def train_job(cfg: DictConfig) -> object:
    from posbench.distributed import adopt_slurm_environment
    from posbench.jobs.train import train

    adopt_slurm_environment()
    run = to_run_config(cfg)
    return train(run, HydraConfig.get().runtime.output_dir, _choices())


@_guarded
def eval_job(cfg: DictConfig) -> object:
    from posbench.jobs.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(cfg, HydraConfig.get().runtime.output_dir)


COMMANDS = {"train": ("train", train_job), "eval": ("eval", eval_job)}


def run_hydra(command: str, argv: list[str]) -> None:
    config_name, job = COMMANDS[command]
    register_schemas()
    from posbench.distributed import hydra_overrides_for_rank

    sys.argv = [f"posbench {command}", *argv, *hydra_overrides_for_rank()]
    hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")(job)()
