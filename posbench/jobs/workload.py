"""What a run trains on and how it is scored: a corpus (perplexity at every evaluation length) or a
synthetic task (accuracy in every test bucket). Both jobs take a ``Workload`` from ``workload_of``,
so neither branches on which kind a run is.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from posbench.common.distributed import barrier
from posbench.common.runtime import Dist
from posbench.config import EvalConfig, Protocol, RunConfig
from posbench.data import TokenizedCorpus, TrainBatches, load_corpus
from posbench.encodings.positions import PosePositions, RandomPositions
from posbench.evaluation.evaluator import LengthResult, bucket_kind, evaluate_length, unavailable_reason
from posbench.evaluation.protocol import protocol_statement
from posbench.evaluation.report import (
    ReportTarget,
    evaluate_and_report,
    evaluate_task_and_report,
    task_statement,
    window_bos,
)
from posbench.evaluation.tasks import TaskResult, answer_metrics
from posbench.model.transformer import Transformer
from posbench.runs.identity import digest
from posbench.tasks import VOCAB_SIZE, Bucket, Task, TaskBatches, build_task, fixed_examples, length_buckets
from posbench.tasks.base import SPECIALS, VOCABULARY_VERSION
from posbench.tasks.config import LengthSampling
from posbench.training.trainer import TrainingData, Validate


class CorpusWorkload:
    """Language modelling on ``run.data``'s token streams."""

    def __init__(self, run: RunConfig, corpus: TokenizedCorpus):
        self.run, self.corpus = run, corpus
        self.vocab_size, self.fingerprint, self.info = corpus.vocab_size, corpus.fingerprint, corpus.info

    def training_data(self, layout: Dist) -> TrainingData:
        train = self.run.train
        batches = TrainBatches(
            self.corpus.train,
            train.seq_len,
            train.batch_size // train.grad_accum,
            train.seed,
            layout.rank,
            layout.world_size,
        )
        return TrainingData(batches, self.vocab_size, self.fingerprint)

    def validation(self, model: Transformer, device: torch.device) -> Validate:
        """Mean NLL over ``train.val_tokens`` at the training length ("val/loss") and at each of
        ``train.val_lengths`` ("val/loss@<length>"); a length ``model`` or the validation split cannot
        take is refused here, before any step."""
        train = self.run.train
        names = {
            train.seq_len: "val/loss",
            **{n: f"val/loss@{n}" for n in train.val_lengths if n != train.seq_len},
        }
        for length in names if train.val_every else ():
            reason = unavailable_reason(model, len(self.corpus.val), length)
            if reason is not None:
                fix = (
                    "lower train.val_lengths" if length != train.seq_len else "give a longer validation split"
                )
                raise ValueError(
                    f"cannot validate at {length} tokens ({reason}): {fix}, or set train.val_every=0"
                )
        cfg = EvalConfig(lengths=list(names), protocol=Protocol.nonoverlapping, max_tokens=train.val_tokens)

        def validate(model) -> dict[str, float]:
            metrics = {}
            for length, name in names.items():
                result = evaluate_length(
                    model, self.corpus.val, length, cfg, device, train.precision, progress=False
                )
                metrics[name] = result.nll
            return metrics

        return validate

    def unavailable(self, reason: str) -> tuple[list[dict], dict[str, Any]]:
        """Rows saying every length is n/a for ``reason``, and the statement beside them."""
        cfg = self.run.eval
        rows = [LengthResult(n, cfg.protocol.value, "n/a", reason=reason).to_dict() for n in cfg.lengths]
        return rows, {"protocol": self.statement()}

    def statement(self) -> dict:
        cfg = self.run.eval
        separator = self.corpus.separator_id
        return protocol_statement(cfg, bucket_kind(cfg), separator, window_bos(cfg, separator, None))

    def report(self, model: Transformer, target: ReportTarget) -> dict:
        corpus = self.corpus
        return evaluate_and_report(
            model, corpus.val, corpus.separator_id, self.run.eval, self.run.train.precision, target
        )


class TaskWorkload:
    """A synthetic task (``run.task``): examples made on the fly, scored by accuracy."""

    def __init__(self, run: RunConfig, task: Task):
        check_task_encoding(run)
        self.run, self.task = run, task
        self.vocab_size = VOCAB_SIZE
        self.fingerprint = f"task-vocabulary-{VOCABULARY_VERSION}-{digest([SPECIALS, VOCAB_SIZE])}"
        self.info = {"task": task.name, "vocab_size": VOCAB_SIZE, "fingerprint": self.fingerprint}

    def training_data(self, layout: Dist) -> TrainingData:
        train = self.run.train
        batches = TaskBatches(
            self.task, train.batch_size // train.grad_accum, train.seed, layout.rank, layout.world_size
        )
        return TrainingData(batches, self.vocab_size, self.fingerprint)

    def validation(self, model: Transformer, device: torch.device) -> Validate:
        """The answer tokens' mean cross-entropy, exact match and per-token accuracy (teacher-forced) on the
        fixed examples of the training range's lengths (the first test bucket's when they coincide)."""
        lo, hi = self.task.cfg.train_lengths
        examples = fixed_examples(self.task, Bucket(lo, hi))
        batch, precision = self.task.cfg.test_batch_size, self.run.train.precision
        return lambda model: answer_metrics(model, examples, device, batch, precision)

    def unavailable(self, reason: str) -> tuple[list[dict], dict[str, Any]]:
        rows = [TaskResult(b.hi, b.lo, "n/a", reason=reason).to_dict() for b in length_buckets(self.task.cfg)]
        return rows, {"task": task_statement(self.task)}

    def report(self, model: Transformer, target: ReportTarget) -> dict:
        return evaluate_task_and_report(model, self.task, self.run.train.precision, target)


def check_task_encoding(run: RunConfig) -> None:
    """Refuse what a task run cannot honour, before any step: a RoPE scaling (its original length is a
    token count, which a task's lengths are not), and padded rows of other lengths under positions
    drawn for the whole forward."""
    scaling = getattr(run.encoding, "scaling", None)
    if scaling is not None and scaling.kind != "none":
        raise ValueError(
            f"encoding/scaling={scaling.kind} with a task: RoPE scaling reads a training length in tokens, "
            "which task lengths are not; use encoding/scaling=none"
        )
    perplexity = EvalConfig()
    if run.eval.protocol != perplexity.protocol or run.eval.stride is not None:
        raise ValueError(
            "eval.protocol and eval.stride say how perplexity is measured; a task is scored by accuracy "
            "on its test buckets (task.test_lengths): drop them"
        )
    if run.train.val_lengths:
        raise ValueError(
            "train.val_lengths validates a corpus run at more lengths; a task run validates its training "
            "range: leave train.val_lengths empty"
        )
    label = run.encoding.label()
    drawn = any(suffix in label for suffix in (RandomPositions.label_suffix, PosePositions.label_suffix))
    if drawn and run.task.length_sampling == LengthSampling.per_sequence:
        raise ValueError(
            f"task.length_sampling=per_sequence pads rows to the batch's longest, but {label} draws its "
            "positions for the whole forward, so a short row would get the first of them: use per_batch"
        )


Workload = Union[CorpusWorkload, TaskWorkload]


def workload_of(run: RunConfig, layout: Optional[Dist] = None) -> Workload:
    """The run's workload; under torchrun rank 0 builds a corpus's token caches first (``layout``)."""
    if run.task is not None:
        return TaskWorkload(run, build_task(run.task))
    if layout is not None and not layout.is_main:
        barrier()  # rank 0 builds the token caches first
    corpus = load_corpus(run.data)
    if layout is not None and layout.is_main:
        barrier()
    return CorpusWorkload(run, corpus)
