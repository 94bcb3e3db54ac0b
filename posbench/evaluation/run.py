"""Evaluate a model at every ``eval.lengths`` entry, then write, print and log the results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posbench.config import RunConfig, to_plain_dict
from posbench.evaluation.evaluator import evaluate_lengths
from posbench.evaluation.protocol import __doc__ as PROTOCOL_DOC
from posbench.model.transformer import Transformer
from posbench.results import format_table, write_results
from posbench.tracking import Tracker

log = logging.getLogger(__name__)


def protocol_statement(run: RunConfig, separator_id: int) -> dict[str, Any]:
    """The protocol, stated in every results file."""
    stride = run.eval.stride
    return {
        "name": run.eval.protocol.value,
        "stride": stride if stride is not None or run.eval.protocol.value == "nonoverlapping" else "length/2",
        "max_tokens_per_length": run.eval.max_tokens,
        "aggregation": "perplexity = exp(token-weighted mean NLL over all scored tokens)",
        "stream": f"validation documents joined by separator token {separator_id}, one separator before the first",
        "positions": "each window starts at position 0",
        "description": " ".join(PROTOCOL_DOC.split()),
    }


def run_metadata(run: RunConfig, model: Transformer, corpus_info: dict, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "encoding": model.encoding.label,
        "train_seq_len": run.train.seq_len,
        "model": {"name": run.model.name, "parameters": model.num_parameters(non_embedding=False),
                  "non_embedding_parameters": model.num_parameters()},
        "data": corpus_info,
        "config": to_plain_dict(run),
        **extra,
    }


def evaluate_and_report(
    model: Transformer, val_stream: np.ndarray, separator_id: int, run: RunConfig, run_dir: Path,
    tracker: Tracker, device: torch.device, metadata: dict[str, Any],
) -> dict:
    """Evaluate, write results.json/.csv into ``run_dir``, print the table, log to the tracker."""
    results = evaluate_lengths(model, val_stream, run.eval, device, run.train.precision)
    rows = [r.to_dict() for r in results]
    document = write_results(run_dir, rows, {**metadata, "protocol": protocol_statement(run, separator_id)})
    table = format_table(rows, run.train.seq_len)
    print(f"\nPerplexity of {metadata['encoding']} trained at {run.train.seq_len} ({run.eval.protocol.value} windows):")
    print(table, flush=True)
    tracker.log_eval([{k: v for k, v in r.items() if k != "position_curve"} for r in rows if r["status"] == "ok"])
    log.info("results written to %s", run_dir / "results.json")
    return document
