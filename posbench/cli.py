"""Hydra entry points: parse config, call ``train(cfg)`` or ``evaluate(cfg)``, report errors in one line."""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from posbench.common.checks import USER_ERROR, exit_with
from posbench.config import register_schemas, to_run_config
from posbench.runs.resolvers import register_resolvers

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
HYDRA_RECORD = ".hydra"  # where a job's Hydra record goes in its folder (hydra_record)


DIVERGED = 3  # exit codes: USER_ERROR (2), DIVERGED; a stop signal exits 128 + its number (SIGTERM: 143)
HELP_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")


def _user_errors() -> tuple[type[BaseException], ...]:
    from posbench.common.atomic import DiskFullError
    from posbench.data import DataError
    from posbench.runs.checkpoint import CheckpointError

    return (ValueError, DataError, CheckpointError, DiskFullError)


def failure(exc: BaseException) -> Optional[tuple[str, int]]:
    """(the one line, the exit code) of an error that ends a job in one line, or None (a bug)."""
    from posbench.common.atomic import disk_full_cause
    from posbench.common.checks import one_line
    from posbench.jobs.train import TrainingDiverged
    from posbench.training.signals import Interrupted

    if isinstance(exc, TrainingDiverged):
        return (f"error: {exc}" if str(exc) else ""), DIVERGED
    if isinstance(exc, Interrupted):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):  # before the trainer's own handler: nothing written yet
        return "interrupted (Ctrl-C) before anything of this run was written; run the command again", 130
    if isinstance(exc, _user_errors()):
        return f"error: {one_line(exc)}", USER_ERROR
    if isinstance(exc, PermissionError):
        return f"error: permission denied: {exc.filename}; make it readable (or writable), or use another", 2
    if isinstance(exc, OSError) and disk_full_cause(exc) is not None:  # outside an atomic write
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"error: no space left on the device{where}; free space or point run_root=... elsewhere", 2
    return None


SWEEP_PROBLEMS: list[tuple[int, str]] = []  # this process's sweep jobs that did not finish: (code, line)


def remove_if_empty(folder: Path, root: Path) -> None:
    """A job refused before it wrote anything leaves no folder behind: Hydra made it, and the empty
    folders between it and ``root`` (``run_root``), which stays."""
    folder, root = folder.resolve(), root.resolve()
    while True:
        try:
            folder.rmdir()  # only an empty folder
        except OSError:
            return
        folder = folder.parent
        if folder == root or root not in folder.parents:
            return


def _guarded(job: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Errors a user can fix (bad config, missing data, corrupt checkpoint, full disk, a folder in use),
    a divergence and a stop signal end in one line, with an exit code that tells them apart. In a
    sweep, a job that fails so (but for a stop signal) prints its line and the sweep goes on; the sweep
    then ends with a summary and that exit code (``run_hydra``)."""

    def wrapper(cfg: DictConfig) -> object:
        from posbench.common.runtime import flush_denormals
        from posbench.runs.lock import FolderInUse

        flush_denormals()  # first: before any torch work starts its threads
        try:
            return job(cfg)
        except BaseException as exc:  # sorted by failure(); anything else is re-raised
            said = failure(exc)
            if said is None:
                raise
            message, code = said
            if HydraConfig.initialized():
                remove_if_empty(
                    Path(HydraConfig.get().runtime.output_dir), Path(str(cfg.get("run_root", ".")))
                )
            if in_multirun() and code in (USER_ERROR, DIVERGED):
                if message:
                    print(message, file=sys.stderr, flush=True)
                if message and not isinstance(exc, FolderInUse):  # a held job is another sweep's
                    SWEEP_PROBLEMS.append((code, f"{HydraConfig.get().job.override_dirname}: {message}"))
                return None
            exit_with(message, code)

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
        from posbench.common.atomic import atomic_write_text

        hydra_cfg = HydraConfig.get()
        record = Path(folder) / HYDRA_RECORD
        atomic_write_text(record / "config.yaml", OmegaConf.to_yaml(cfg))
        atomic_write_text(record / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
        atomic_write_text(record / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))

    return write


@_guarded
def train_job(cfg: DictConfig) -> object:
    from posbench.common.distributed import adopt_slurm_environment
    from posbench.jobs.train import train

    adopt_slurm_environment()
    run = to_run_config(cfg)
    return train(run, HydraConfig.get().runtime.output_dir, _choices(), on_held=hydra_record(cfg))


@_guarded
def eval_job(cfg: DictConfig) -> object:
    from posbench.jobs.evaluate import check_eval_folder, evaluate_checkpoint
    from posbench.runs.lock import hold_folder

    pretrained = cfg.hf.name is not None
    if pretrained and cfg.get("checkpoint") is not None:
        raise ValueError("posbench eval takes checkpoint=PATH or hf=NAME_OR_DIR, not both")
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with hold_folder(out_dir, "eval"):
        check_eval_folder(out_dir)
        hydra_record(cfg)(out_dir)
        if pretrained:  # a pretrained Hugging Face model (posbench/jobs/pretrained.py)
            from posbench.jobs.pretrained import evaluate_pretrained

            return evaluate_pretrained(cfg, out_dir, list(HydraConfig.get().overrides.task))
        return evaluate_checkpoint(cfg, out_dir)


COMMANDS = {"train": ("train", train_job), "eval": ("eval", eval_job)}


def missing_checkpoint(command: str, argv: list[str]) -> bool:
    """``posbench eval`` without ``checkpoint=``: Hydra would fail resolving the output folder, with a
    traceback, before the job could say so."""
    if command != "eval" or any(arg in HELP_FLAGS or arg.startswith("--cfg") for arg in argv):
        return False
    return not any(arg.lstrip("+").startswith(("checkpoint=", "hf=", "hf.name=")) for arg in argv)


def pretrained_shorthand(command: str, argv: list[str]) -> list[str]:
    """``posbench eval hf=NAME_OR_DIR`` is ``hf.name=NAME_OR_DIR``: ``hf`` is a group of options
    (``hf.revision``, ``hf.label``, ``hf.dtype``, ``hf.device_map``; configs/eval.yaml)."""
    if command != "eval":
        return argv
    bare = [arg.lstrip("+") for arg in argv]  # +hf= and ++hf= too: hf is a group either way
    return [f"hf.name={b[len('hf=') :]}" if b.startswith("hf=") else a for a, b in zip(argv, bare)]


def run_hydra(command: str, argv: list[str]) -> None:
    config_name, job = COMMANDS[command]
    argv = pretrained_shorthand(command, argv)
    if missing_checkpoint(command, argv):
        exit_with(
            "error: posbench eval needs a checkpoint: pass checkpoint=PATH (a run folder or a .pt file), "
            "or hf=NAME_OR_DIR (a pretrained Llama-family model)",
            USER_ERROR,
        )
    register_schemas()
    register_resolvers()  # ${posbench_parent:...}, the run folders' names
    from posbench.common.distributed import hydra_overrides_for_rank
    from posbench.launchers import quiet_schema_by_name

    quiet_schema_by_name()

    sys.argv = [f"posbench {command}", *argv, *hydra_overrides_for_rank()]
    with composition_errors_in_one_line():
        hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")(job)()
    if SWEEP_PROBLEMS:
        lines = "\n".join(f"  {line}" for _, line in SWEEP_PROBLEMS)
        code = USER_ERROR if any(c == USER_ERROR for c, _ in SWEEP_PROBLEMS) else DIVERGED
        exit_with(f"sweep finished; {len(SWEEP_PROBLEMS)} job(s) did not:\n{lines}", code)


@contextlib.contextmanager
def composition_errors_in_one_line() -> Iterator[None]:
    """Hydra reports a config it cannot compose (an unknown key, group or option; a bad override) with
    a traceback or a multi-line message and exit code 1: say it in one line, exit 2 (a user error).
    Hydra's own reporting (``hydra._internal.utils.run_and_report``) is kept for everything else."""
    from hydra._internal import utils
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigKeyError, ValidationError

    original = utils.run_and_report

    def run_and_report(func: Callable[[], object]) -> object:
        def composed() -> object:
            try:
                return func()
            except (  # Hydra's own, and a schema's merge while composing
                ConfigCompositionException,
                MissingConfigException,
                OverrideParseException,
                ConfigKeyError,
                ValidationError,
            ) as exc:
                exit_with(f"error: {composition_message(exc)}", USER_ERROR)

        return original(composed)

    utils.run_and_report = run_and_report
    try:
        yield
    finally:
        utils.run_and_report = original


def composition_message(exc: BaseException) -> str:
    """The key or option at fault and what to do, from Hydra's or OmegaConf's message."""
    from omegaconf.errors import ConfigKeyError

    from posbench.common.checks import unknown_key

    chain = [exc]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    unknown = next((e for e in chain if isinstance(e, ConfigKeyError) and getattr(e, "full_key", None)), None)
    if unknown is not None:
        return unknown_key(unknown.full_key)
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    overridden = re.match(r"Could not override '([^']+)'", lines[0]) if lines else None
    if overridden:
        return unknown_key(overridden.group(1))
    options = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if options is not None:  # an unknown option of a group: name them all
        names = [line for line in lines[options + 1 :] if ":" not in line and "=" not in line]
        return f"{' '.join(lines[:options])}; {lines[options].rstrip(':').lower()}: {', '.join(names)}"
    causes = [str(e).strip().splitlines()[0] for e in chain[1:] if str(e).strip()]
    return "; ".join([*lines[:1], *causes[-1:]]) or type(exc).__name__
