"""Typed configuration: the run's schema, assembled from each component's, registered in Hydra's ConfigStore.

Hydra composes the YAML under ``configs/``; every group's YAML names one of the schemas
in its defaults list, so a mistyped key or a value of the wrong type fails at compose
time with Hydra's own message. ``to_run_config`` turns the composed DictConfig into
dataclasses; nothing below the entry points sees a DictConfig.

The model's, the data's and the logger's schemas live beside their components
(``model/config.py``, ``data/config.py``, ``tracking/config.py``) and are re-exported here.
``train`` and ``eval`` stay here: training and evaluation must not import each other, and
both read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from posbench.common.checks import above, at_least, unknown_key, within
from posbench.common.options import Role, execution, option, roles
from posbench.common.runtime import Precision
from posbench.data.config import (
    DataConfig,
    HFConfig,
    ShakespeareConfig,
    TextFilesConfig,
    Tokenizer,
)
from posbench.data.sources import CORPORA
from posbench.encodings import (
    ENCODINGS,
    REMAPS,
    SCALINGS,
    TEMPERATURES,
    EncodingConfig,
)
from posbench.encodings.registry import member_choices
from posbench.encodings.schedule import layer_choices
from posbench.model.config import Attention, Mlp, ModelConfig, Norm
from posbench.tasks import TASKS, TaskConfig
from posbench.tracking.config import LoggerConfig

__all__ = [
    "Attention",
    "BucketKind",
    "DataConfig",
    "EvalConfig",
    "EvalRunConfig",
    "HFConfig",
    "LoggerConfig",
    "Mlp",
    "ModelConfig",
    "Norm",
    "ParentRecord",
    "Precision",
    "Protocol",
    "RunConfig",
    "ShakespeareConfig",
    "TaskConfig",
    "TextFilesConfig",
    "Tokenizer",
    "TrainConfig",
    "group_roles",
    "group_schemas",
    "register_schemas",
    "to_encoding_config",
    "to_plain_dict",
    "to_run_config",
]


class Protocol(str, Enum):
    nonoverlapping = "nonoverlapping"
    sliding = "sliding"
    truncated = "truncated"  # one window per document, its first L tokens (YaRN's long-document ppl)


class BucketKind(str, Enum):
    log = "log"
    linear = "linear"


@dataclass
class TrainConfig:
    seq_len: int = 2048
    batch_size: int = 8  # global batch, in sequences, summed over ranks and accumulation
    grad_accum: int = 1
    max_steps: Optional[int] = 1000
    max_tokens: Optional[int] = None  # a token budget; wins over max_steps when set
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr·min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: Precision = option(Precision.fp32, at_eval=True)  # an evaluation may run at another
    device: str = execution("auto")  # auto | cpu | cuda | cuda:N
    compile: bool = execution(False)
    # keep only each block's input for the backward and recompute the rest: activation memory of one
    # block, not of every layer, for about one more forward per step; the same losses and gradients
    activation_checkpointing: bool = execution(False)
    # tokens whose (tokens, vocabulary) logits exist at once in the loss, each chunk recomputed in the
    # backward (model/loss.py); 0 = the whole batch's logits at once. The same loss up to fp32 rounding
    loss_chunk: int = execution(0)
    seed: int = 0
    log_every: int = execution(10)
    val_every: int = execution(200)  # steps between validation losses at the training length; 0 = never
    val_tokens: int = execution(65536)  # tokens scored by each periodic validation
    # more lengths validated with it (corpus runs), logged as val/loss@<length>: a fine-tuning's
    # steps-to-quality curve at the lengths it extends to
    val_lengths: List[int] = execution(default_factory=list)
    ckpt_every: int = execution(200)  # steps between checkpoints; 0 = only at the end
    # true = this run's latest checkpoint; auto = the same, or a fresh start without one (and nothing to
    # do when its results are final: resumable sweeps); or a path to a run folder or .pt file
    resume: Optional[str] = execution(None)
    # a run folder or .pt: start from that checkpoint's model weights (a new run: fresh optimiser,
    # schedule and data); recorded as the run's ``parent`` (posbench/runs/lineage.py)
    init_from: Optional[str] = execution(None)  # a path: the parent counts by its record
    stop_after_steps: Optional[int] = execution(None)  # stop early (as if killed) after this many steps
    # steps with a non-finite loss/grad norm skipped before stopping: a guard; with no such step the run
    # trains exactly the same
    skip_nonfinite_steps: int = execution(0)

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"train.seq_len must be at least 1, got {self.seq_len}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train.batch_size and train.grad_accum must be at least 1")
        self.check_ranges()
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be a multiple of train.grad_accum={self.grad_accum}"
            )
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("set a budget: train.max_steps or train.max_tokens")

    def check_ranges(self) -> None:
        at_least("train.max_steps", self.max_steps, 1, "optimiser steps", allow_none=True)
        at_least("train.max_tokens", self.max_tokens, 1, "a token budget", allow_none=True)
        above("train.lr", self.lr, 0, "the peak learning rate")
        within("train.min_lr_ratio", self.min_lr_ratio, 0, 1, "the cosine's floor as a fraction of train.lr")
        at_least("train.warmup_steps", self.warmup_steps, 0, "0 = no warmup")
        at_least("train.weight_decay", self.weight_decay, 0)
        within("train.beta1", self.beta1, 0, 1, "AdamW's first-moment decay", open_high=True)
        within("train.beta2", self.beta2, 0, 1, "AdamW's second-moment decay", open_high=True)
        at_least("train.grad_clip", self.grad_clip, 0, "a gradient-norm bound; 0 = no clipping")
        within("train.seed", self.seed, 0, 2**32 - 1, "numpy's seed range")
        at_least("train.log_every", self.log_every, 1, "steps between logged losses")
        at_least("train.val_every", self.val_every, 0, "steps between validations; 0 = never")
        at_least("train.val_tokens", self.val_tokens, 1, "tokens scored by each validation")
        for length in self.val_lengths:
            at_least("train.val_lengths[]", length, 1, "window lengths in tokens")
        at_least("train.ckpt_every", self.ckpt_every, 0, "steps between checkpoints; 0 = only at the end")
        at_least(
            "train.stop_after_steps", self.stop_after_steps, 1, "stop early after this many", allow_none=True
        )
        at_least("train.skip_nonfinite_steps", self.skip_nonfinite_steps, 0, "0 = stop at the first one")
        at_least("train.loss_chunk", self.loss_chunk, 0, "tokens per chunk of the loss; 0 = no chunks")

    def total_steps(self) -> int:
        if self.max_tokens is not None:
            return max(1, -(-self.max_tokens // (self.batch_size * self.seq_len)))
        assert self.max_steps is not None
        return self.max_steps


@dataclass
class EvalConfig:
    lengths: List[int] = field(default_factory=lambda: [2048, 4096, 8192, 16384])
    protocol: Protocol = Protocol.nonoverlapping
    stride: Optional[int] = None  # sliding protocol: tokens scored per window (None = length/2)
    max_tokens: Optional[int] = 131072  # scored tokens per length; None = the whole stream
    # every window begins with a BOS token (hf=: the tokenizer's BOS; posbench's models: the document
    # separator, which begins every document in training), as lm-evaluation-harness and YaRN's eval do
    add_bos: bool = False
    # protocol=truncated: the first `documents` validation documents (null = all, until max_tokens) of
    # at least min_document_tokens tokens (null = the longest of eval.lengths: the same documents at
    # every length)
    documents: Optional[int] = None
    min_document_tokens: Optional[int] = None
    batch_size: int = 1
    position_buckets: int = 16  # buckets of the per-position loss curve
    bucket_kind: BucketKind = BucketKind.log  # per-position buckets: log-spaced or equal widths
    # windows per length whose attention entropy and sink weight are measured (0: none)
    diagnostics_windows: int = 1
    # tokens whose (tokens, vocabulary) logits exist at once in the scoring (model/loss.py); 0 = a whole
    # batch's at once. The same numbers to fp32 rounding; at 64K tokens of a 128K vocabulary the whole
    # logits would be 32 GiB in fp32
    loss_chunk: int = 4096
    enabled: bool = True  # evaluate after training

    def __post_init__(self) -> None:
        bad = [n for n in self.lengths if n < 1]
        if bad or not self.lengths:
            raise ValueError(
                "eval.lengths must be a non-empty list of lengths of at least 1 token, got "
                f"{list(self.lengths)}"
            )
        if self.stride is not None and self.stride < 1:
            raise ValueError("eval.stride must be at least 1")
        repeated = sorted({n for n in self.lengths if list(self.lengths).count(n) > 1})
        if repeated:
            raise ValueError(
                f"eval.lengths={list(self.lengths)} names {', '.join(map(str, repeated))} more than once; "
                "each length is evaluated once (list it once)"
            )
        if self.position_buckets < 1:
            raise ValueError("eval.position_buckets must be at least 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("eval.max_tokens must be at least 1 (or null for the whole stream)")
        at_least("eval.batch_size", self.batch_size, 1, "windows per forward")
        at_least("eval.documents", self.documents, 1, "null = every document long enough", allow_none=True)
        at_least(
            "eval.min_document_tokens",
            self.min_document_tokens,
            1,
            "null = the longest length",
            allow_none=True,
        )
        if getattr(self.protocol, "value", self.protocol) != "truncated" and (
            self.documents is not None or self.min_document_tokens is not None
        ):
            raise ValueError(
                "eval.documents and eval.min_document_tokens choose eval.protocol=truncated's documents: "
                "add eval.protocol=truncated or drop them"
            )
        at_least("eval.diagnostics_windows", self.diagnostics_windows, 0, "0 = no attention diagnostics")
        at_least("eval.loss_chunk", self.loss_chunk, 0, "tokens' logits at once; 0 = a whole batch's")

    def document_minimum(self, length: int) -> int:
        """protocol=truncated: the tokens a document needs to be scored at ``length``."""
        return max(length, self.min_document_tokens or max(self.lengths))


@dataclass
class ParentRecord:
    """``parent`` in a run config: the checkpoint a run was initialised from. It counts in the
    identity by its experiment (seedless), its seed and its step, not by where its file is."""

    checkpoint: str = execution()  # the file, resolved
    name: str = execution()  # the parent run's name, e.g. rope-L256-s0
    label: str  # its encoding label
    train_len: int
    seed: int
    digest: str = execution()  # the seedless digest and the seed say the same
    seedless_digest: str
    step: int  # the parent's optimiser steps at that checkpoint
    lineage: str = execution()  # the parent's own lineage label, e.g. rope-L256
    root_train_len: int  # the training length of the first run of the lineage


@dataclass
class RunConfig:
    encoding: EncodingConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = MISSING
    task: Optional[TaskConfig] = None  # a synthetic task to train and test on, in place of the corpus
    # train.init_from's checkpoint (a ParentRecord), read when the config is composed (runs/lineage.py)
    parent: Any = None
    experiment_name: str = "default"
    run_root: str = "runs"


@dataclass
class EvalRunConfig(RunConfig):
    """`posbench eval`: the checkpoint's own config, with these overrides on top."""

    checkpoint: str = MISSING


def group_schemas() -> dict[str, list[type]]:
    """Each group of a run config -> the schemas its values may have; their fields' roles
    (``common/options.py``) say which keys are the experiment and which an evaluation may change."""
    return {
        "encoding": ENCODINGS.schemas(),
        "model": [ModelConfig],
        "data": CORPORA.schemas(),
        "task": TASKS.schemas(),
        "train": [TrainConfig],
        "eval": [EvalConfig],
        "logger": [LoggerConfig],
        "parent": [ParentRecord],
    }


def group_roles(group: str) -> dict[str, Role]:
    """Every key of a run config's ``group`` -> its role."""
    return roles(group_schemas()[group])


def register_schemas() -> None:
    """Put every schema into Hydra's ConfigStore under ``schema/<group>/<name>``."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="eval_run_schema", node=EvalRunConfig)
    for registry in (ENCODINGS, SCALINGS, TEMPERATURES, REMAPS, CORPORA, TASKS):
        registry.store(cs)
    for name, members in (("hybrid", member_choices()), ("layers", layer_choices())):
        cs.store(group="encoding", name=name, node=composite_encoding(name, members))
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/train", name="train", node=TrainConfig)
    cs.store(group="schema/eval", name="eval", node=EvalConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)


def composite_encoding(name: str, members: list[str]) -> dict:
    """The ``encoding=hybrid`` / ``encoding=layers`` config, made from the registry: its schema, and
    every member's own ``configs/encoding/NAME.yaml`` at ``options.NAME`` (so
    ``encoding.options.rope.base=500`` and ``encoding/scaling@encoding.options.rope.scaling=yarn``
    work); options of encodings that are not members are dropped by the schema."""
    members_defaults = [f"/encoding/{member}@options.{member}" for member in members]
    return {
        "defaults": [f"/schema/encoding/{name}@_here_", {"temperature": "none"}, *members_defaults, "_self_"]
    }


def to_encoding_config(plain: dict) -> EncodingConfig:
    """An encoding group as a plain dict (a checkpoint's, a results file's) -> its typed config."""
    return ENCODINGS.coerce(plain)


def to_run_config(cfg: DictConfig | dict) -> RunConfig:
    """Composed config (or a plain dict from a checkpoint) -> typed dataclasses.

    ``__post_init__`` validation runs here; a plain dict picks each group's schema by name.
    """
    plain = (
        OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else cfg
    )
    plain = {k: v for k, v in plain.items() if k != "hydra"}
    schema = OmegaConf.structured(EvalRunConfig if "checkpoint" in plain else RunConfig)
    schema.encoding = ENCODINGS.structured(plain["encoding"]["name"])
    schema.data = CORPORA.structured(plain["data"]["name"])
    if plain.get("task") is not None:
        schema.task = TASKS.structured(plain["task"]["name"])
    try:
        merged = OmegaConf.merge(schema, plain)
    except ConfigKeyError as exc:  # a key no schema has, e.g. +train.lrr=0.1
        raise ValueError(unknown_key(exc.full_key)) from None
    except ValidationError as exc:  # a value of the wrong type, e.g. train.lr=fast
        raise ValueError(f"{exc.full_key}: {str(exc).strip().splitlines()[0]}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_plain_dict(run: Any) -> dict:
    """A dataclass config -> a JSON-able dict (enums as their values)."""
    return OmegaConf.to_container(OmegaConf.structured(run), resolve=True, enum_to_str=True)  # type: ignore[return-value]
