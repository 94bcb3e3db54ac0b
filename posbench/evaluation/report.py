"""Evaluate a model at every ``eval.lengths`` entry (or every test bucket of its task), then write,
plot, print and log the results."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from posbench.common.runtime import Precision
from posbench.config import EvalConfig, RunConfig, to_plain_dict
from posbench.evaluation.evaluator import bucket_kind, evaluate_lengths
from posbench.evaluation.protocol import protocol_statement
from posbench.evaluation.tasks import evaluate_task
from posbench.model.transformer import Transformer
from posbench.reports.plots import write_plots
from posbench.reports.results import (
    RESULTS_JSON,
    format_table,
    format_task_table,
    how_trained,
    results_header,
    write_results,
)
from posbench.runs.identity import RunIdentity
from posbench.tasks import Decoding, Task
from posbench.tracking import Tracker

log = logging.getLogger(__name__)


def run_metadata(
    run: RunConfig, identity: RunIdentity, model: Transformer, corpus_info: dict, extra: dict[str, Any]
) -> dict[str, Any]:
    """The results header (``results_header``) of posbench's run ``run``, whose identity is
    ``identity``; ``extra`` wins."""
    header = results_header(
        run_name=identity.name,
        identity=identity.to_dict(),
        encoding=identity.label,
        train_seq_len=identity.train_len,
        model=run.model.name,
        parameters=model.num_parameters(non_embedding=False),
        non_embedding_parameters=model.num_parameters(),
        data=corpus_info,
        precision=run.train.precision.value,
        eval_config=None if run.task is not None else to_plain_dict(run.eval),
        config=to_plain_dict(run),
        **({"parent": run.parent} if run.parent is not None else {}),  # train.init_from's checkpoint
    )
    return {**header, **extra}


@dataclass(frozen=True)
class ReportTarget:
    """Where an evaluation reports: its results files and plots into ``run_dir``, its metrics to
    ``tracker``, under ``header`` (``results_header``); ``device`` is recorded beside the numbers."""

    run_dir: Path
    tracker: Tracker
    device: torch.device
    header: dict[str, Any]


def tracker_rows(document: dict) -> list[dict]:
    """One row per length for ``Tracker.log_eval``: the results row without its curves, plus the
    ratio to the training length, so runs trained at different lengths line up in W&B."""
    train_len = document["train_seq_len"]
    return [
        {
            **{k: v for k, v in row.items() if k not in ("position_curve", "by_depth", "attention")},
            "x_train": row["length"] / train_len,
        }
        for row in document["results"]
    ]


def attention_summary(rows: list[dict]) -> dict[str, float]:
    """Per length, the attention entropy and sink weight of the last bucket of query positions
    (the longest contexts), averaged over the layers: ``eval/attn_entropy@L``, ``eval/attn_sink@L``."""
    values = {}
    for row in rows:
        curves = row.get("attention")
        for key, name in (("entropy", "attn_entropy"), ("sink", "attn_sink")):
            last = [layer[-1] for layer in (curves or {}).get(key, []) if layer[-1] is not None]
            if curves and len(last) == len(curves[key]):  # none for a diverged model's nulls
                values[f"eval/{name}@{row['length']}"] = sum(last) / len(last)
    return values


def summary_values(document: dict) -> dict[str, Any]:
    """Once-per-run values: perplexity (or a task's accuracy) at each length, a column per length in the
    W&B runs table."""
    metric = "accuracy" if "task" in document else "ppl"
    ok = [row for row in document["results"] if row["status"] == "ok"]
    values: dict[str, Any] = {f"eval/{metric}@{row['length']}": row[metric] for row in ok}
    at_train = [row[metric] for row in ok if row["length"] == document["train_seq_len"]]
    if at_train:
        values[f"eval/{metric}_at_train_len"] = at_train[0]
    if "task" in document:
        values["eval/task"] = document["task"]["name"]
    else:
        values["eval/protocol"] = document["protocol"]["name"]
        values["eval/tokens_scored"] = sum(row["tokens_scored"] for row in document["results"])
    values["eval/wall_time_s"] = sum(row["wall_time_s"] for row in document["results"])
    values.update(attention_summary(ok))
    return values


def report_to_tracker(tracker: Tracker, document: dict, plots: dict[str, Path]) -> None:
    tracker.log_eval(tracker_rows(document))
    for name, path in plots.items():
        tracker.log_image(f"plots/{name}", str(path))
    tracker.summary(summary_values(document))


def report(
    rows: list[dict], statement: dict, target: ReportTarget, heading: Callable, table: Callable
) -> dict:
    """results.json/.csv of ``rows`` under the target's header and ``statement`` (how they were
    scored), the plots, the table printed under ``heading(document)``, the tracker."""
    document = write_results(
        target.run_dir, rows, {**target.header, "device": str(target.device), **statement}
    )
    plots = write_plots(document, target.run_dir)
    print(f"\n{heading(document)}:")
    print(table(document["results"], document["train_seq_len"]), flush=True)
    report_to_tracker(target.tracker, document, plots)
    log.info("results and plots written to %s", Path(target.run_dir) / RESULTS_JSON)
    return document


def evaluate_and_report(
    model: Transformer,
    val_stream: np.ndarray,
    separator_id: int,
    cfg: EvalConfig,
    precision: Precision,
    target: ReportTarget,
    bos_id: Optional[int] = None,
) -> dict:
    """Perplexity at every ``cfg.lengths`` entry of ``val_stream`` (documents separated by
    ``separator_id``), reported to ``target``. ``eval.add_bos`` begins every window with ``bos_id``
    (a pretrained tokenizer's BOS), or with the separator where there is none (posbench's models)."""
    bos = window_bos(cfg, separator_id, bos_id)
    results = evaluate_lengths(
        model, val_stream, cfg, target.device, precision, separator_id=separator_id, bos_id=bos
    )
    statement = protocol_statement(cfg, bucket_kind(cfg), separator_id, bos)

    def heading(document: dict) -> str:
        return f"Perplexity of {how_trained(document)} ({cfg.protocol.value} windows)"

    return report([r.to_dict() for r in results], {"protocol": statement}, target, heading, format_table)


def window_bos(cfg: EvalConfig, separator_id: int, bos_id: Optional[int]) -> Optional[int]:
    """The token that begins every window under ``eval.add_bos``; None without it."""
    if not cfg.add_bos:
        return None
    return separator_id if bos_id is None else bos_id


GREEDY_EQUIVALENCE = (
    "exact match is greedy decoding's: an answer is exactly right iff every answer token is the argmax "
    "given the true tokens before it (positions drawn once per test forward, which holds one length)"
)


def task_statement(task: Task) -> dict[str, Any]:
    """What a task's results file says about its examples, its test set and how they were scored."""
    cfg = task.cfg
    return {
        **task.statement(),
        "decoding": cfg.decoding.value,
        "decoding_note": (
            GREEDY_EQUIVALENCE
            if cfg.decoding == Decoding.teacher_forced
            else "the answer tokens are generated"
        ),
        "train_lengths": list(cfg.train_lengths),
        "test_seed": cfg.test_seed,
        "test_examples": cfg.test_examples,
        "depth_buckets": cfg.depth_buckets if task.retrieval else None,
    }


def evaluate_task_and_report(
    model: Transformer, task: Task, precision: Precision, target: ReportTarget
) -> dict:
    """Accuracy on every test bucket of ``task``, reported to ``target``."""
    results = evaluate_task(model, task, target.device, precision)

    def heading(document: dict) -> str:
        trained = f"trained on lengths up to {document['train_seq_len']}"
        return f"Accuracy of {document['encoding']} on {task.name}, {trained}"

    rows = [r.to_dict() for r in results]
    return report(rows, {"task": task_statement(task)}, target, heading, format_task_table)
