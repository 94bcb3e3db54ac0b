"""``posbench train``: train a run, then evaluate it at ``eval.lengths`` and report the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from posbench.config import EvalConfig, Protocol, RunConfig, to_plain_dict
from posbench.data import TokenizedCorpus, load_corpus
from posbench.distributed import barrier, broadcast_from_main, process_group
from posbench.evaluation.evaluator import evaluate_length
from posbench.evaluation.run import evaluate_and_report, run_metadata
from posbench.identity import RunIdentity
from posbench.model.transformer import Transformer
from posbench.runtime import (
    Dist,
    check_precision,
    dist_from_env,
    resolve_device,
    seed_everything,
)
from posbench.tracking import build_tracker
from posbench.training.trainer import Trainer, Validate


def train(run: RunConfig, run_dir: str | Path, choices: Optional[dict] = None) -> dict[str, Any]:
    """Train ``run`` in ``run_dir``, evaluate it at ``eval.lengths``; returns the final metrics.

    Under torchrun each rank trains its slice of every global batch (DDP); only rank 0 logs,
    validates, checkpoints and evaluates, into rank 0's ``run_dir``.
    """
    d = dist_from_env()
    device = resolve_device(run.train.device, d)
    check_precision(device, run.train.precision)
    if run.train.batch_size // run.train.grad_accum % d.world_size:
        raise ValueError(
            f"train.batch_size/train.grad_accum = {run.train.batch_size // run.train.grad_accum} "
            f"sequences per micro-step cannot be split over {d.world_size} processes; "
            "make it a multiple of the process count"
        )
    with process_group(d, device):
        return _train(run, Path(broadcast_from_main(str(run_dir))), choices, d, device)


def load_corpus_main_first(run: RunConfig, d: Dist) -> TokenizedCorpus:
    if not d.is_main:
        barrier()  # rank 0 builds the token caches first
    corpus = load_corpus(run.data)
    if d.is_main:
        barrier()
    return corpus


def validation(run: RunConfig, corpus: TokenizedCorpus, device: torch.device) -> Validate:
    """The trainer's periodic validation: mean NLL at the training length over ``train.val_tokens``."""
    cfg = EvalConfig(
        lengths=[run.train.seq_len], protocol=Protocol.nonoverlapping, max_tokens=run.train.val_tokens
    )

    def validate(model) -> float:
        result = evaluate_length(
            model, corpus.val, run.train.seq_len, cfg, device, run.train.precision, progress=False
        )
        if result.nll is None:
            raise ValueError(f"cannot validate at train.seq_len={run.train.seq_len}: {result.reason}")
        return result.nll

    return validate


def _train(
    run: RunConfig, run_dir: Path, choices: Optional[dict], d: Dist, device: torch.device
) -> dict[str, Any]:
    seed_everything(run.train.seed)
    corpus = load_corpus_main_first(run, d)
    model = Transformer(run.model, run.encoding, corpus.vocab_size).to(device)
    trainer = Trainer(run, model, corpus, run_dir, device, d, validation(run, corpus, device))
    identity = RunIdentity.of(run)
    config = {**to_plain_dict(run), "choices": choices or {}, "identity": identity.to_dict()}
    tracker = build_tracker(
        run.logger, str(run_dir), config, identity.name, run.logger.group or run.experiment_name, d.rank
    )
    try:
        state = trainer.fit(tracker)
        metrics: dict[str, Any] = {
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "losses": state.losses,
        }
        if run.eval.enabled and d.is_main and trainer.finished:
            meta = run_metadata(
                run, model, corpus.info, {"step": state.step, "tokens_seen": state.tokens_seen}
            )
            metrics["results"] = evaluate_and_report(
                model,
                corpus.val,
                corpus.separator_id,
                run.eval,
                run.train.precision,
                run_dir,
                tracker,
                device,
                meta,
            )
    finally:
        tracker.close()
    barrier()
    return metrics
