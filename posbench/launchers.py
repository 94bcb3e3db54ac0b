"""Requeue for posbench's submitit launchers: a requeued train job continues its run instead of being
refused.

submitit requeues a job stopped by its preemption or time-limit signal (SIGUSR2) by asking the
launcher's ``checkpoint`` for the submission to run again; posbench has written the run's checkpoint
by then (``posbench/training/signals.py``). hydra-submitit-launcher submits the same overrides again,
and posbench would refuse them: the job's folder holds its run. ``ContinuesOnRequeue`` adds
``train.resume=auto``, which resumes from the checkpoint in the job's own folder, or starts afresh there
when the job was stopped before its first one (``posbench/training/resume.py``); the folder stays the
same, since resuming is not part of the run identity that names it. Hydra takes launchers only from
its plugin namespace: the launchers are in ``hydra_plugins/posbench_launchers``, and
``configs/hydra/launcher/{slurm,submitit_local}.yaml`` name them.
"""

from __future__ import annotations

import warnings
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

RESUME_KEY = "train.resume"
ON_REQUEUE = f"{RESUME_KEY}=auto"
_ABSENT = object()
# configs/hydra/launcher/submitit_local.yaml takes the name of the plugin's schema, so Hydra validates it
# against that schema, and warns that matching a schema by name is deprecated
SCHEMA_BY_NAME = r"\s*'hydra/launcher/submitit_local' is validated against ConfigStore schema"


def quiet_schema_by_name() -> None:
    """Silence Hydra's warning about submitit_local.yaml's schema, the only one matched by name."""
    warnings.filterwarnings("ignore", message=SCHEMA_BY_NAME, category=UserWarning)


def requeue_overrides(overrides: list[str]) -> list[str]:
    """A requeued train job's overrides: its own, with ``train.resume=auto`` for any ``train.resume``."""
    parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    kept = [text for text, override in zip(overrides, parsed) if override.key_or_group != RESUME_KEY]
    return [*kept, ON_REQUEUE]


class ContinuesOnRequeue:
    """Mixed into a submitit launcher: checks its keys against the plugin's schema, and requeues a
    train job (its config has ``train.resume``) so that it resumes; any other job runs again as it was."""

    schema: type

    def __init__(self, **params: Any) -> None:
        OmegaConf.merge(OmegaConf.structured(self.schema), params)  # a wrong key or type fails here
        super().__init__(**params)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one sweep job, in its submitit process (which composes its config again)."""
        quiet_schema_by_name()
        return super().__call__(*args, **kwargs)

    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook, called in the job once its signal arrived: the submission to run again."""
        if OmegaConf.select(self.config, RESUME_KEY, default=_ABSENT) is not _ABSENT:
            sweep_overrides = requeue_overrides(sweep_overrides)
        return super().checkpoint(sweep_overrides, *args, **kwargs)
