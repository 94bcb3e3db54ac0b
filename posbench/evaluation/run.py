"""Evaluate a model at every ``eval.lengths`` entry, then write, plot, print and log the results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posbench.config import EvalConfig, RunConfig, to_plain_dict
from posbench.evaluation.evaluator import bucket_kind, evaluate_lengths
from posbench.evaluation.protocol import protocol_statement
from posbench.identity import RunIdentity
from posbench.model.transformer import Transformer
from posbench.plots import write_plots
from posbench.results import RESULTS_JSON, format_table, write_results
from posbench.runtime import Precision
from posbench.tracking import Tracker

log = logging.getLogger(__name__)


def run_metadata(
    run: RunConfig, model: Transformer, corpus_info: dict, extra: dict[str, Any]
) -> dict[str, Any]:
    """What results.json says about the model, data and config besides the numbers; ``extra`` wins."""
    identity = RunIdentity.of(run)
    return {
        "run_name": identity.name,
        "identity": identity.to_dict(),
        "encoding": identity.label,
        "train_seq_len": identity.train_len,
        "model": {
            "name": run.model.name,
            "parameters": model.num_parameters(non_embedding=False),
            "non_embedding_parameters": model.num_parameters(),
        },
        "data": corpus_info,
        "precision": run.train.precision.value,
        "eval_config": to_plain_dict(run.eval),
        "config": to_plain_dict(run),
        **extra,
    }


def tracker_rows(document: dict) -> list[dict]:
    """One row per length for ``Tracker.log_eval``: the results row without its curve, plus the
    ratio to the training length, so runs trained at different lengths line up in W&B."""
    train_len = document["train_seq_len"]
    return [
        {**{k: v for k, v in row.items() if k != "position_curve"}, "x_train": row["length"] / train_len}
        for row in document["results"]
    ]


def summary_values(document: dict) -> dict[str, Any]:
    """Once-per-run values: perplexity at each length (a column per length in the W&B runs table)."""
    ok = [row for row in document["results"] if row["status"] == "ok"]
    values: dict[str, Any] = {f"eval/ppl@{row['length']}": row["ppl"] for row in ok}
    at_train = [row["ppl"] for row in ok if row["length"] == document["train_seq_len"]]
    if at_train:
        values["eval/ppl_at_train_len"] = at_train[0]
    values["eval/protocol"] = document["protocol"]["name"]
    values["eval/tokens_scored"] = sum(row["tokens_scored"] for row in document["results"])
    values["eval/wall_time_s"] = sum(row["wall_time_s"] for row in document["results"])
    return values


def report_to_tracker(tracker: Tracker, document: dict, plots: dict[str, Path]) -> None:
    tracker.log_eval(tracker_rows(document))
    for name, path in plots.items():
        tracker.log_image(f"plots/{name}", str(path))
    tracker.summary(summary_values(document))


def evaluate_and_report(
    model: Transformer,
    val_stream: np.ndarray,
    separator_id: int,
    cfg: EvalConfig,
    precision: Precision,
    run_dir: Path,
    tracker: Tracker,
    device: torch.device,
    metadata: dict[str, Any],
) -> dict:
    """Evaluate; write results.json/.csv and the plots into ``run_dir``; print the table; log to the tracker.

    ``metadata`` (``run_metadata``) names the run, its training length included."""
    results = evaluate_lengths(model, val_stream, cfg, device, precision)
    statement = protocol_statement(
        cfg.protocol.value, cfg.stride, cfg.max_tokens, cfg.position_buckets, bucket_kind(cfg), separator_id
    )
    document = write_results(
        run_dir, [r.to_dict() for r in results], {**metadata, "device": str(device), "protocol": statement}
    )
    plots = write_plots(document, run_dir)
    train_len = document["train_seq_len"]
    print(f"\nPerplexity of {document['encoding']} trained at {train_len} ({cfg.protocol.value} windows):")
    print(format_table(document["results"], train_len), flush=True)
    report_to_tracker(tracker, document, plots)
    log.info("results and plots written to %s", Path(run_dir) / RESULTS_JSON)
    return document
