"""``posbench train``: train a run, then evaluate it at ``eval.lengths`` and report the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from posbench.atomic import remove_stale_temps
from posbench.config import EvalConfig, Protocol, RunConfig, to_plain_dict
from posbench.data import TokenizedCorpus, load_corpus
from posbench.distributed import barrier, broadcast_from_main, process_group
from posbench.evaluation.evaluator import LengthResult, bucket_kind, evaluate_length
from posbench.evaluation.protocol import protocol_statement
from posbench.evaluation.run import evaluate_and_report, run_metadata
from posbench.identity import RunIdentity
from posbench.model.transformer import Transformer
from posbench.results import format_table, write_results
from posbench.runtime import (
    Dist,
    check_precision,
    dist_from_env,
    resolve_device,
    seed_everything,
)
from posbench.tracking import Tracker, build_tracker
from posbench.training.resume import (
    check_run_folder,
    find_resume_checkpoint,
    finished_results,
    restarts_in_place,
)
from posbench.training.signals import Interrupted, StopRequests, signal_name
from posbench.training.trainer import Divergence, Trainer, TrainState, Validate


class TrainingDiverged(RuntimeError):
    """The run stopped on a non-finite loss or gradient norm; its results say so."""


def train(run: RunConfig, run_dir: str | Path, choices: Optional[dict] = None) -> dict[str, Any]:
    """Train ``run`` in ``run_dir``, evaluate it at ``eval.lengths``; returns the final metrics.

    Under torchrun each rank trains its slice of every global batch (DDP); only rank 0 logs,
    validates, checkpoints and evaluates, into rank 0's ``run_dir``. A divergence raises
    ``TrainingDiverged`` and a stop signal ``Interrupted``, once their files are written.
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
        run_dir = Path(broadcast_from_main(str(run_dir)))
        done = broadcast_from_main(finished_results(run, run_dir) if d.is_main else None)
        if done is not None:
            if d.is_main:
                name = RunIdentity.of(run).name
                print(f"{name}: already finished in {run_dir} (train.resume=auto); nothing to do", flush=True)
            return {"step": done.get("step"), "results": done, "skipped": True}
        return _train(run, run_dir, choices, d, device)


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


def claim_run_folder(run: RunConfig, run_dir: Path, d: Dist) -> Optional[Path]:
    """The checkpoint to resume from, once rank 0 has checked that ``run_dir`` holds no other run
    (before anything is written there) and removed the temp files of killed atomic writes."""
    resume_from = find_resume_checkpoint(run, run_dir)
    refusal = None
    if d.is_main:
        try:
            check_run_folder(run, run_dir, resume_from)
        except ValueError as exc:
            refusal = str(exc)
        else:
            remove_stale_temps(run_dir, run_dir / "checkpoints")
    refusal = broadcast_from_main(refusal)
    if refusal:
        raise ValueError(refusal)
    return resume_from


def report_divergence(
    run: RunConfig, run_dir: Path, meta: dict, divergence: Divergence, device, separator_id: int
) -> dict:
    """results.json of a diverged run: its ``diverged`` record, and every length n/a (no numbers
    computed from diverged weights), so ``posbench compare`` lists it as such."""
    cfg, reason = run.eval, f"training diverged at step {divergence.step}"
    rows = [LengthResult(n, cfg.protocol.value, "n/a", reason=reason).to_dict() for n in cfg.lengths]
    statement = protocol_statement(
        cfg.protocol.value, cfg.stride, cfg.max_tokens, cfg.position_buckets, bucket_kind(cfg), separator_id
    )
    extra = {"device": str(device), "protocol": statement, "diverged": divergence.to_dict()}
    document = write_results(run_dir, rows, {**meta, **extra})
    print(format_table(document["results"], run.train.seq_len), flush=True)
    return document


def stop_message(state: TrainState, trainer: Trainer, run_dir: Path) -> str:
    return (
        f"stopped by {signal_name(state.stopped_by)} after step {state.step}; checkpoint "
        f"{trainer.kept_checkpoint}; continue with the same command and train.resume={run_dir} "
        f"hydra.run.dir={run_dir}"
    )


def _train(
    run: RunConfig, run_dir: Path, choices: Optional[dict], d: Dist, device: torch.device
) -> dict[str, Any]:
    resume_from = claim_run_folder(run, run_dir, d)
    seed_everything(run.train.seed)
    corpus = load_corpus_main_first(run, d)
    model = Transformer(run.model, run.encoding, corpus.vocab_size).to(device)
    with StopRequests() as stops:
        trainer = Trainer(
            run, model, corpus, run_dir, device, d, validation(run, corpus, device), resume_from, stops
        )
        identity = RunIdentity.of(run)
        config = {**to_plain_dict(run), "choices": choices or {}, "identity": identity.to_dict()}
        restart = resume_from is None and restarts_in_place(run, run_dir, None)  # metrics start afresh
        resumed_at = trainer.state.step if resume_from is not None else (0 if restart else None)
        tracker = build_tracker(
            run.logger,
            str(run_dir),
            config,
            identity.name,
            run.logger.group or run.experiment_name,
            d.rank,
            resume_step=resumed_at,
        )
        try:
            metrics = fit_and_report(run, run_dir, d, device, trainer, corpus, tracker, stops)
        finally:
            tracker.close()
    barrier()
    return metrics


def stop_if_signalled(trainer: Trainer, stops: StopRequests, run_dir: Path, d: Dist) -> None:
    """After training: raise ``Interrupted`` (the checkpoint written) if a stop signal came, also one
    during the last step's validation or checkpoint; else make a signal during the evaluation stop
    at once, saying the checkpoint is complete."""
    state = trainer.state
    if not state.stopped_by:
        trainer.signalled()
    if state.stopped_by:
        for signum, handler in stops.previous_handlers():  # e.g. submitit's requeue, after our checkpoint
            handler(signum, None)
        raise Interrupted(state.stopped_by, stop_message(state, trainer, run_dir) if d.is_main else "")
    stops.at_once = (
        f"stopped during the evaluation; the checkpoint {trainer.kept_checkpoint} is complete: evaluate "
        f"it with python -m posbench eval checkpoint={run_dir}"
    )


def fit_and_report(
    run: RunConfig,
    run_dir: Path,
    d: Dist,
    device: torch.device,
    trainer: Trainer,
    corpus: TokenizedCorpus,
    tracker: Tracker,
    stops: StopRequests,
) -> dict[str, Any]:
    state = trainer.fit(tracker)
    metrics: dict[str, Any] = {"step": state.step, "tokens_seen": state.tokens_seen, "losses": state.losses}
    meta = run_metadata(
        run, trainer.model, corpus.info, {"step": state.step, "tokens_seen": state.tokens_seen}
    )
    if state.diverged is not None:
        if d.is_main:
            metrics["results"] = report_divergence(
                run, run_dir, meta, state.diverged, device, corpus.separator_id
            )
        raise TrainingDiverged(state.diverged.message() if d.is_main else "")
    stop_if_signalled(trainer, stops, run_dir, d)
    if run.eval.enabled and d.is_main and trainer.finished:
        metrics["results"] = evaluate_and_report(
            trainer.model,
            corpus.val,
            corpus.separator_id,
            run.eval,
            run.train.precision,
            run_dir,
            tracker,
            device,
            meta,
        )
    return metrics
