"""Hydra entry points: parse config, call ``train(cfg)`` or ``evaluate(cfg)``, report errors in one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from posbench.config import register_schemas, to_run_config

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
HYDRA_RECORD = ".hydra"  # where a job's Hydra record goes in its folder (hydra_record)


USER_ERROR, DIVERGED = 2, 3  # exit codes; a stop signal exits 128 + its number (SIGTERM: 143)
HELP_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")


def _user_errors() -> tuple[type[BaseException], ...]:
    from posbench.atomic import DiskFullError
    from posbench.checkpoint import CheckpointError
    from posbench.data import DataError

    return (ValueError, DataError, CheckpointError, DiskFullError)


def _say(message: str, code: int) -> None:
    if message:  # ranks other than 0 stop with an empty message: rank 0 says it once
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def _guarded(job: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Errors a user can fix (bad config, missing data, corrupt checkpoint, full disk), a divergence
    and a stop signal end in one line, with an exit code that tells them apart."""

    def wrapper(cfg: DictConfig) -> object:
        from posbench.atomic import disk_full_cause
        from posbench.jobs.train import TrainingDiverged
        from posbench.run_lock import FolderInUse
        from posbench.training.signals import Interrupted

        try:
            return job(cfg)
        except FolderInUse as exc:
            if in_multirun():  # the sweep goes on: that job is another process's now
                print(f"error: {exc}; this sweep goes on without it", file=sys.stderr, flush=True)
                return None
            _say(f"error: {exc}", USER_ERROR)
        except _user_errors() as exc:
            _say(f"error: {exc}", USER_ERROR)
        except TrainingDiverged as exc:
            if in_multirun():  # the sweep goes on: the run's results say it diverged, compare lists it
                print(f"error: {exc}", file=sys.stderr, flush=True)
                return None
            _say(f"error: {exc}" if str(exc) else "", DIVERGED)
        except Interrupted as exc:
            _say(str(exc), exc.exit_code)
        except KeyboardInterrupt:  # before the trainer's own handler is installed: nothing written yet
            _say("interrupted (Ctrl-C) before anything of this run was written; run the command again", 130)
        except PermissionError as exc:
            _say(
                f"error: permission denied: {exc.filename}; make it readable (or writable), or use another", 2
            )
        except OSError as exc:  # a full disk outside an atomic write (metrics.jsonl, W&B files)
            if disk_full_cause(exc) is None:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            _say(
                f"error: no space left on the device{where}; free space or point run_root=... elsewhere",
                USER_ERROR,
            )

    wrapper.__name__ = job.__name__
    return wrapper


def in_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _choices() -> dict:
    return {
        k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith(("hydra", "schema"))
    }


def hydra_record(cfg: DictConfig) -> Callable[[Path], None]:
    """What Hydra would write into ``<folder>/.hydra/`` (the job's config, Hydra's own, the overrides),
    written by posbench once the job holds its folder: the configs set ``hydra.output_subdir: null``,
    since Hydra writes before any job code runs, and a job refused a folder must not overwrite the
    record of the run that holds it."""

    def write(folder: Path) -> None:
        hydra_cfg = HydraConfig.get()
        record = Path(folder) / HYDRA_RECORD
        record.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, record / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), record / "hydra.yaml")
        OmegaConf.save(hydra_cfg.overrides.task, record / "overrides.yaml")

    return write


@_guarded
def train_job(cfg: DictConfig) -> object:
    from posbench.distributed import adopt_slurm_environment
    from posbench.jobs.train import train

    adopt_slurm_environment()
    run = to_run_config(cfg)
    return train(run, HydraConfig.get().runtime.output_dir, _choices(), on_held=hydra_record(cfg))


@_guarded
def eval_job(cfg: DictConfig) -> object:
    from posbench.jobs.evaluate import check_eval_folder, evaluate_checkpoint
    from posbench.run_lock import hold_folder

    if cfg.get("hf") is not None and cfg.get("checkpoint") is not None:
        raise ValueError("posbench eval takes checkpoint=PATH or hf=NAME_OR_DIR, not both")
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with hold_folder(out_dir, "eval"):
        check_eval_folder(out_dir)
        hydra_record(cfg)(out_dir)
        if cfg.get("hf") is not None:  # a pretrained Hugging Face model (posbench/jobs/pretrained.py)
            from posbench.jobs.pretrained import evaluate_pretrained

            return evaluate_pretrained(cfg, out_dir, list(HydraConfig.get().overrides.task))
        return evaluate_checkpoint(cfg, out_dir)


COMMANDS = {"train": ("train", train_job), "eval": ("eval", eval_job)}


def missing_checkpoint(command: str, argv: list[str]) -> bool:
    """``posbench eval`` without ``checkpoint=``: Hydra would fail resolving the output folder, with a
    traceback, before the job could say so."""
    if command != "eval" or any(arg in HELP_FLAGS or arg.startswith("--cfg") for arg in argv):
        return False
    return not any(arg.lstrip("+").startswith(("checkpoint=", "hf=")) for arg in argv)


def run_hydra(command: str, argv: list[str]) -> None:
    config_name, job = COMMANDS[command]
    if missing_checkpoint(command, argv):
        _say(
            "error: posbench eval needs a checkpoint: pass checkpoint=PATH (a run folder or a .pt file), "
            "or hf=NAME_OR_DIR (a pretrained Llama-family model)",
            USER_ERROR,
        )
    register_schemas()
    from posbench.distributed import hydra_overrides_for_rank
    from posbench.launchers import quiet_schema_by_name

    quiet_schema_by_name()

    sys.argv = [f"posbench {command}", *argv, *hydra_overrides_for_rank()]
    hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")(job)()
