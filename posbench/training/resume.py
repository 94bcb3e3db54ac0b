"""Which checkpoint ``train.resume`` means, and whether a run may write into its folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from posbench.config import RunConfig, to_plain_dict
from posbench.reports.results import RESULTS_JSON, load_results
from posbench.runs.checkpoint import CheckpointError, saved_config
from posbench.runs.identity import RunIdentity, experiment_config, flatten

TRUE_WORDS = {"true", "yes", "1", "latest"}
AUTO_WORD = "auto"  # as true, but start fresh when there is no checkpoint of this run (SLURM requeue)
FALSE_WORDS = {"", "false", "no", "0", "none", "null"}
RUN_FILES = ("checkpoints", "metrics.jsonl", "results.json")  # posbench's own; .hydra/ is Hydra's


def same_run(config: Optional[dict], identity: RunIdentity) -> bool:
    """Whether a checkpoint's saved config is the run of ``identity`` (the same experiment and seed)."""
    try:
        return config is not None and RunIdentity.from_config(config) == identity
    except (KeyError, TypeError, ValueError):  # a config this posbench cannot read is another run's
        return False


def latest_of_this_run(run: RunConfig, identity: RunIdentity, run_dir: Path) -> Path:
    """This run's own checkpoint in ``run_dir`` if it has one, else the newest ``last.pt`` under
    ``run_root/experiment_name`` whose saved config has this run's identity: folder names are not
    consulted."""
    root = Path(run.run_root) / run.experiment_name
    own = run_dir / "checkpoints" / "last.pt"
    if own.is_file() and same_run(saved_config(own), identity):
        return own  # this run's own folder first: a rerun sweep continues each job where it stopped
    candidates = set(root.rglob("checkpoints/last.pt"))
    found = [p for p in candidates if same_run(saved_config(p), identity)]
    if not found:
        raise CheckpointError(
            f"train.resume=true found no checkpoint of this run ({identity.name}, experiment "
            f"{identity.digest}) "
            f"under {root}; pass train.resume=PATH to a run folder or checkpoint"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def find_resume_checkpoint(run: RunConfig, identity: RunIdentity, run_dir: Path) -> Optional[Path]:
    """None: start fresh. ``true``: the newest checkpoint of this very run (see
    ``latest_of_this_run``); ``auto``: the same, or None when there is none. A path: that
    checkpoint file, or a run folder holding ``checkpoints/last.pt``."""
    value = run.train.resume
    word = "" if value is None else str(value).strip().lower()
    if word in FALSE_WORDS:
        return None
    if word in TRUE_WORDS:
        return latest_of_this_run(run, identity, run_dir)
    if word == AUTO_WORD:
        try:
            return latest_of_this_run(run, identity, run_dir)
        except CheckpointError:
            return None
    path = Path(value)
    if path.is_dir() and (path / "checkpoints" / "last.pt").is_file():
        return path / "checkpoints" / "last.pt"
    if path.is_file():
        return path
    raise CheckpointError(f"train.resume={value}: no checkpoint there; pass a run folder or a .pt file")


def finished_results(run: RunConfig, identity: RunIdentity, run_dir: Path) -> Optional[dict]:
    """With ``train.resume=auto``: the results.json in ``run_dir`` when it is this run's and final (its
    whole budget trained, or diverged, and evaluated as this run's eval group says), so a rerun of a
    sweep into the same folder does nothing for it; else None."""
    path = run_dir / RESULTS_JSON
    if str(run.train.resume).strip().lower() != AUTO_WORD or not path.is_file():
        return None
    try:
        document = load_results(path)
    except (OSError, ValueError):
        return None  # unreadable: the run resumes from its checkpoint and writes it again
    config = document.get("config")
    if not same_run(config, identity) or not scored_as_configured(document, run):
        return None
    trained = document.get("step") == run.train.total_steps()
    return document if trained or document.get("diverged") else None


def scored_as_configured(document: dict, run: RunConfig) -> bool:
    """Whether ``document`` was scored as ``run`` would score it: a language model by its eval group
    (recorded as ``eval_config``), a task by its task group's test settings (in its ``config``)."""
    if run.task is None:
        return eval_settings(document.get("eval_config"), run.eval) == to_plain_dict(run.eval)
    return (document.get("config") or {}).get("task") == to_plain_dict(run.task)


def eval_settings(recorded: Optional[dict], current: Any) -> Optional[dict]:
    """A results file's eval group with the keys added to posbench since it was written at their
    defaults (e.g. ``add_bos``: false), so a finished run stays finished when the eval group grows."""
    if recorded is None:
        return None
    defaults = to_plain_dict(type(current)())
    return {**{k: v for k, v in defaults.items() if k not in recorded}, **recorded}


def restarts_in_place(
    run: RunConfig, identity: RunIdentity, run_dir: Path, resume_from: Optional[Path]
) -> bool:
    """``train.resume=auto`` found no checkpoint, and ``run_dir`` is this run's own folder (named by its
    identity, as sweep jobs are): a job killed before its first checkpoint, requeued, starts afresh there."""
    auto = str(run.train.resume).strip().lower() == AUTO_WORD
    return auto and resume_from is None and run_dir.name.endswith(identity.folder)


def experiment_changes(saved: dict, run: RunConfig) -> list[str]:
    """The experiment keys whose values differ between a saved config and ``run``: ``key: old -> new``."""
    old, new = flatten(experiment_config(saved)), flatten(experiment_config(to_plain_dict(run)))
    missing = "(absent)"
    return [
        f"{key}: {old.get(key, missing)} -> {new.get(key, missing)}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def check_resume_identity(run: RunConfig, identity: RunIdentity, resume_from: Path) -> None:
    """A resume continues the experiment its checkpoint trained: one that changes an experiment key
    (the learning rate, the budget, the encoding...) would record the new config for the old weights."""
    saved = saved_config(resume_from)
    if saved is None or same_run(saved, identity):
        return  # (an unusable file: the trainer's load says what is wrong with it)
    try:
        changes = experiment_changes(saved, run)
    except (KeyError, TypeError, ValueError):
        changes = []
    changed = "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "") if changes else "its identity"
    raise ValueError(
        f"train.resume={resume_from} holds another experiment than this config ({changed}): a resume "
        "continues the run it was; drop those overrides, or start a new run from its weights with "
        f"train.init_from={resume_from}"
    )


def check_run_folder(
    run: RunConfig, identity: RunIdentity, run_dir: Path, resume_from: Optional[Path]
) -> None:
    """Refuse a folder that already holds a run (its checkpoints, metrics or results), unless this
    command resumes that very run from it (or restarts it there: ``restarts_in_place``): a second
    run never mixes its files with the first's."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found or restarts_in_place(run, identity, run_dir, resume_from):
        return
    elsewhere = "run in another folder (leave hydra.run.dir unset for a fresh one)"
    if resume_from is not None and run_dir.resolve() in Path(resume_from).resolve().parents:
        return  # this run itself, resumed in its folder (check_resume_identity: with its own config)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise ValueError(
            f"{run_dir} already holds a run ({', '.join(found)}) with no checkpoint; {elsewhere}"
        )
    if saved_config(run_dir / "checkpoints" / "last.pt") is None:
        raise ValueError(
            f"{run_dir} holds a run whose checkpoint {run_dir / 'checkpoints' / 'last.pt'} cannot be read "
            f"(truncated, or not posbench's); move that folder away, or {elsewhere}"
        )
    raise ValueError(
        f"{run_dir} already holds a run ({', '.join(found)}); continue it with train.resume={run_dir} "
        f"hydra.run.dir={run_dir}, or {elsewhere}"
    )
