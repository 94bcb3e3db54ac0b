"""The ``logger`` group's schema: which tracker, and W&B's project, mode and grouping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from omegaconf import MISSING

from posbench.common.checks import one_of
from posbench.common.options import Role, option


@dataclass
class LoggerConfig:
    OPTION_ROLE: ClassVar[Role] = Role(experiment=False, at_eval=True)  # how a run is logged

    name: str = option(MISSING, experiment=False, at_eval=True)  # wandb | jsonl | none
    project: str = "posbench"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled; online needs `wandb login`
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        one_of("logger.name", self.name, ("wandb", "jsonl", "none"))
        one_of("logger.mode", self.mode, ("offline", "online", "disabled", "dryrun", "run"))  # W&B's aliases
