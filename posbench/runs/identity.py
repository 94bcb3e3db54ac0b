"""Which run is this: one identity computed from the resolved config.

Run folders (through the Hydra resolvers in ``posbench/runs/resolvers.py``), ``train.resume=true``,
W&B names, results metadata and ``posbench compare`` all use it, so they cannot disagree.
Two runs are the same experiment when their encoding, model, data and the training keys that
change the weights agree; how a run is executed, logged, checkpointed or evaluated does not count.
Which keys are which is declared on the schema fields (``posbench/common/options.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

from posbench.config import RunConfig, group_roles, to_encoding_config, to_plain_dict

DIGEST_CHARS = 6
EXPERIMENT_GROUPS = ("encoding", "model", "data", "task", "train", "parent")


def without_added(values: dict, added: dict) -> dict:
    """``values`` without the added options that are off, in nested groups too (a hybrid's members)."""
    return {
        k: without_added(v, added) if isinstance(v, dict) else v
        for k, v in values.items()
        if not (k in added and v == added[k])
    }


def experiment_part(group: str, values: dict) -> dict:
    """The keys of one group that change what is trained (their schema fields' roles, in
    ``common/options.py``), less the options added since runs were first recorded while they are off:
    a run recorded before an option existed keeps its identity (its folder, resume and compare rows).
    A key no schema knows (an old checkpoint's) counts."""
    roles = group_roles(group)
    kept = {k: v for k, v in values.items() if k not in roles or roles[k].experiment}
    return without_added(kept, {k: role.off for k, role in roles.items() if role.added})


def experiment_config(config: dict) -> dict:
    """The parts of a plain run config that make two runs different experiments. A task run trains on
    its task, not on the corpus: its data group does not count."""
    groups = [g for g in EXPERIMENT_GROUPS if isinstance(config.get(g), dict)]
    if "task" in groups:
        groups.remove("data")
    return {group: experiment_part(group, config[group]) for group in groups}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        flat.update(
            flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        )
    return flat


def training_length(config: dict) -> int:
    """The longest training length: a task's (in its unit), else ``train.seq_len`` (tokens)."""
    task = config.get("task")
    return int(task["train_lengths"][1]) if isinstance(task, dict) else int(config["train"]["seq_len"])


def without_seed(experiment: dict) -> dict:
    """The experiment without its seeds: ``train.seed``, and a parent's seed (fine-tuning each seed of
    one parent experiment gives the seeds of one child experiment)."""
    seedless = {**experiment, "train": {k: v for k, v in experiment.get("train", {}).items() if k != "seed"}}
    if "parent" in experiment:
        seedless["parent"] = {k: v for k, v in experiment["parent"].items() if k != "seed"}
    return seedless


def digest(value: Any) -> str:
    """A short, stable hash of a JSON-able value (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class RunIdentity:
    label: str  # the encoding's label: alibi, rope+yarn, sinusoidal+alibi, rope+randpos
    train_len: int  # train.seq_len, or a task's longest training length
    seed: int
    digest: str  # of the experiment config, seed included
    seedless_digest: str  # the same without the seed: the seeds of one experiment share it
    task: Optional[str] = None  # the task a task run trains on

    @classmethod
    def of(cls, run: RunConfig) -> RunIdentity:
        return cls.from_config(to_plain_dict(run), run.encoding.label())

    @classmethod
    def from_config(cls, config: dict, label: Optional[str] = None) -> RunIdentity:
        """From a plain run config (a checkpoint's, a results file's); ``label`` if already known."""
        experiment = experiment_config(config)
        task = config.get("task")
        return cls(
            label or to_encoding_config(config["encoding"]).label(),
            training_length(config),
            int(config.get("train", {}).get("seed", 0)),
            digest(experiment),
            digest(without_seed(experiment)),
            task["name"] if isinstance(task, dict) else None,
        )

    @property
    def name(self) -> str:
        """W&B run name and results ``run_name``: ``rope+yarn-L128-s0``, ``reverse-rope-L40-s0``."""
        return f"{self.task + '-' if self.task else ''}{self.label}-L{self.train_len}-s{self.seed}"

    @property
    def folder(self) -> str:
        """Run folder (or sweep job folder) name: ``rope+yarn_L128_s0_1a2b3c``, ``reverse_rope_L40_s0_…``."""
        return (
            f"{self.task + '_' if self.task else ''}{self.label}_L{self.train_len}_s{self.seed}_{self.digest}"
        )

    def to_dict(self) -> dict:
        fields = {k: v for k, v in asdict(self).items() if k != "task" or v is not None}
        return {**fields, "name": self.name, "folder": self.folder}
