"""Which run is this: one identity computed from the resolved config.

Run folders (through the Hydra resolvers in ``posbench/runs/resolvers.py``), ``train.resume=true``,
W&B names, results metadata and ``posbench compare`` all use it, so they cannot disagree.
Two runs are the same experiment when their encoding, model, data and the training keys that
change the weights agree; how a run is executed, logged, checkpointed or evaluated does not count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

from posbench.config import RunConfig, to_encoding_config, to_plain_dict
from posbench.tasks.config import TEST_KEYS

DIGEST_CHARS = 6
EXPERIMENT_GROUPS = ("encoding", "model", "data", "task", "train", "parent")
# Keys of those groups that do not change what is trained: where and how fast it runs (the
# attention path computes the same function), how it is logged and checkpointed, and where the
# token cache lives (its content is fingerprinted).
NOT_EXPERIMENT = {
    "model": ("attention", "attention_block"),
    "data": ("cache_dir",),
    "train": (
        "resume",
        "stop_after_steps",
        "skip_nonfinite_steps",  # a guard: with no non-finite step it trains exactly the same
        "log_every",
        "ckpt_every",
        "val_every",
        "val_tokens",
        "val_lengths",
        "device",
        "compile",
        "activation_checkpointing",  # recomputes the same activations
        "loss_chunk",  # the same loss, a chunk of tokens at a time
        "init_from",  # a path: the parent counts by its record below
    ),
    "task": TEST_KEYS,  # how a trained model is tested
    # the parent counts by its experiment (seedless), its seed and its step, not by where its file is
    "parent": ("checkpoint", "name", "digest", "lineage"),
}


# Options added since runs were first recorded, with their off value: left out while off, so a run
# recorded before an option existed keeps its identity (its folder, resume and compare rows).
ADDED_OPTIONS = {
    "encoding": {
        "pose_target": None,
        "temperature": {"kind": "none"},
        "p_rope": 1.0,
        "resonance": False,
        "remap": {"kind": "none"},
    },
    "data": {"pretrained_tokenizer": None, "pretrained_revision": None},
}


def without_added(values: dict, added: dict) -> dict:
    """``values`` without the added options that are off, in nested groups too (a hybrid's members)."""
    return {
        k: without_added(v, added) if isinstance(v, dict) else v
        for k, v in values.items()
        if not (k in added and v == added[k])
    }


def experiment_config(config: dict) -> dict:
    """The parts of a plain run config that make two runs different experiments. A task run trains on
    its task, not on the corpus: its data group does not count."""
    groups = [g for g in EXPERIMENT_GROUPS if isinstance(config.get(g), dict)]
    if "task" in groups:
        groups.remove("data")
    return {
        group: without_added(
            {k: v for k, v in config[group].items() if k not in NOT_EXPERIMENT.get(group, ())},
            ADDED_OPTIONS.get(group, {}),
        )
        for group in groups
    }


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
