"""``posbench train``: train a run, then evaluate it at ``eval.lengths`` and report the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from posbench.common.atomic import remove_stale_temps
from posbench.common.distributed import barrier, broadcast_from_main, process_group
from posbench.common.runtime import (
    Dist,
    check_precision,
    dist_from_env,
    machine_description,
    resolve_device,
    seed_everything,
)
from posbench.config import RunConfig, to_plain_dict
from posbench.evaluation.protocol import resolve_stride
from posbench.evaluation.report import ReportTarget, run_metadata
from posbench.jobs.workload import Workload, workload_of
from posbench.model.transformer import Transformer
from posbench.reports.results import format_table, format_task_table, write_results
from posbench.runs.checkpoint import RunRecord
from posbench.runs.identity import RunIdentity
from posbench.runs.lock import held_by_main
from posbench.tracking import Tracker, build_tracker
from posbench.training.init_from import initialise_from_parent
from posbench.training.resume import (
    check_resume_identity,
    check_run_folder,
    find_resume_checkpoint,
    finished_results,
    restarts_in_place,
)
from posbench.training.signals import Interrupted, StopRequests, signal_name
from posbench.training.trainer import Divergence, Trainer, TrainState


class TrainingDiverged(RuntimeError):
    """The run stopped on a non-finite loss or gradient norm; its results say so."""


def train(
    run: RunConfig,
    run_dir: str | Path,
    choices: Optional[dict] = None,
    on_held: Optional[Callable[[Path], None]] = None,
) -> dict[str, Any]:
    """Train ``run`` in ``run_dir``, evaluate it at ``eval.lengths``; returns the final metrics.

    Under torchrun each rank trains its slice of every global batch (DDP); only rank 0 logs,
    validates, checkpoints and evaluates, into rank 0's ``run_dir``, which it holds for the whole
    job (``posbench/runs/lock.py``; ``on_held(run_dir)`` is called once it does, before anything is
    written there). A divergence raises ``TrainingDiverged`` and a stop signal ``Interrupted``,
    once their files are written.
    """
    if run.task is not None and run.train.max_tokens is not None:
        raise ValueError(
            "train.max_tokens counts windows of train.seq_len tokens; a task run's examples vary in "
            "length: set its budget with train.max_steps and train.max_tokens=null"
        )
    for length in run.eval.lengths if run.eval.enabled and run.task is None else ():
        resolve_stride(length, run.eval.protocol.value, run.eval.stride)  # before training, not after it
    layout = dist_from_env()
    device = resolve_device(run.train.device, layout)
    check_precision(device, run.train.precision)
    if run.train.batch_size // run.train.grad_accum % layout.world_size:
        raise ValueError(
            f"train.batch_size/train.grad_accum = {run.train.batch_size // run.train.grad_accum} "
            f"sequences per micro-step cannot be split over {layout.world_size} processes; "
            "make it a multiple of the process count"
        )
    identity = RunIdentity.of(run)  # once per job: every check and record below is of this run
    with process_group(layout, device):
        run_dir = Path(broadcast_from_main(str(run_dir)))
        with held_by_main(run_dir, "train", layout):
            done = broadcast_from_main(finished_results(run, identity, run_dir) if layout.is_main else None)
            if done is not None:
                if layout.is_main:
                    print(
                        f"{identity.name}: already finished in {run_dir} (train.resume=auto); nothing to do",
                        flush=True,
                    )
                return {"step": done.get("step"), "results": done, "skipped": True}
            if layout.is_main and on_held is not None:
                on_held(run_dir)
            return _train(run, identity, run_dir, choices, layout, device)


def claim_run_folder(run: RunConfig, identity: RunIdentity, run_dir: Path, layout: Dist) -> Optional[Path]:
    """The checkpoint to resume from, once rank 0 has checked that ``run_dir`` holds no other run
    (before anything is written there) and removed the temp files of killed atomic writes."""
    resume_from = find_resume_checkpoint(run, identity, run_dir)
    refusal = None
    if layout.is_main:
        try:
            if resume_from is not None:
                check_resume_identity(run, identity, resume_from)
            check_run_folder(run, identity, run_dir, resume_from)
        except ValueError as exc:
            refusal = str(exc)
        else:
            remove_stale_temps(run_dir, run_dir / "checkpoints")
    refusal = broadcast_from_main(refusal)
    if refusal:
        raise ValueError(refusal)
    return resume_from


def report_divergence(work: Workload, run_dir: Path, meta: dict, divergence: Divergence, device) -> dict:
    """results.json of a diverged run: its ``diverged`` record, and every length n/a (no numbers
    computed from diverged weights), so ``posbench compare`` lists it as such."""
    rows, statement = work.unavailable(f"training diverged at step {divergence.step}")
    extra = {"device": str(device), **statement, "diverged": divergence.to_dict()}
    document = write_results(run_dir, rows, {**meta, **extra})
    table = format_task_table if "task" in document else format_table
    print(table(document["results"], document["train_seq_len"]), flush=True)
    return document


def stop_message(state: TrainState, trainer: Trainer, run_dir: Path) -> str:
    return (
        f"stopped by {signal_name(state.stopped_by)} after step {state.step}; checkpoint "
        f"{trainer.kept_checkpoint}; continue with the same command and train.resume={run_dir} "
        f"hydra.run.dir={run_dir}"
    )


def _train(
    run: RunConfig,
    identity: RunIdentity,
    run_dir: Path,
    choices: Optional[dict],
    layout: Dist,
    device: torch.device,
) -> dict[str, Any]:
    resume_from = claim_run_folder(run, identity, run_dir, layout)
    seed_everything(run.train.seed)
    work = workload_of(run, layout)
    model = Transformer(run.model, run.encoding, work.vocab_size).to(device)
    if resume_from is None and run.parent is not None:  # a resumed run has its own weights
        initialise_from_parent(model, run, work.vocab_size, work.fingerprint)
    with StopRequests() as stops:
        validate = work.validation(model, device)
        record = RunRecord(to_plain_dict(run))
        data = work.training_data(layout)
        trainer = Trainer(
            run.train, model, data, record, run_dir, device, layout, validate, resume_from, stops
        )
        config = {**record.config, "choices": choices or {}, "identity": identity.to_dict()}
        # a run restarted in its own folder logs its metrics afresh
        restart = resume_from is None and restarts_in_place(run, identity, run_dir, None)
        resumed_at = trainer.state.step if resume_from is not None else (0 if restart else None)
        tracker = build_tracker(
            run.logger,
            str(run_dir),
            config,
            identity.name,
            run.logger.group or run.experiment_name,
            layout.rank,
            resume_step=resumed_at,
        )
        try:
            metrics = fit_and_report(run, identity, run_dir, layout, device, trainer, work, tracker, stops)
        finally:
            tracker.close()
    barrier()
    return metrics


def stop_if_signalled(trainer: Trainer, stops: StopRequests, run_dir: Path, layout: Dist) -> None:
    """After training: raise ``Interrupted`` (the checkpoint written) if a stop signal came, also one
    during the last step's validation or checkpoint; else make a signal during the evaluation stop
    at once, saying the checkpoint is complete."""
    state = trainer.state
    if not state.stopped_by:
        trainer.signalled()
    if state.stopped_by:
        for signum, handler in stops.previous_handlers():  # e.g. submitit's requeue, after our checkpoint
            handler(signum, None)
        raise Interrupted(state.stopped_by, stop_message(state, trainer, run_dir) if layout.is_main else "")
    stops.at_once = (
        f"stopped during the evaluation; the checkpoint {trainer.kept_checkpoint} is complete: evaluate "
        f"it with python -m posbench eval checkpoint={run_dir}"
    )


def fit_and_report(
    run: RunConfig,
    identity: RunIdentity,
    run_dir: Path,
    layout: Dist,
    device: torch.device,
    trainer: Trainer,
    work: Workload,
    tracker: Tracker,
    stops: StopRequests,
) -> dict[str, Any]:
    first_step = trainer.state.step
    state = trainer.fit(tracker)
    metrics: dict[str, Any] = {"step": state.step, "tokens_seen": state.tokens_seen, "losses": state.losses}
    timing = {  # this process's part of the training: a resumed run counts from the step it resumed at
        "train_wall_time_s": round(state.process_wall_time_s, 3),
        "train_wall_time_from_step": first_step,
        "train_wall_time_total_s": None if state.wall_time_s is None else round(state.wall_time_s, 3),
        "machine": machine_description(device),
    }
    meta = run_metadata(
        run,
        identity,
        trainer.model,
        work.info,
        {"step": state.step, "tokens_seen": state.tokens_seen, **timing},
    )
    if state.diverged is not None:
        if layout.is_main:
            metrics["results"] = report_divergence(work, run_dir, meta, state.diverged, device)
        raise TrainingDiverged(state.diverged.message() if layout.is_main else "")
    stop_if_signalled(trainer, stops, run_dir, layout)
    if run.eval.enabled and layout.is_main and trainer.finished:
        metrics["results"] = work.report(trainer.model, ReportTarget(run_dir, tracker, device, meta))
    return metrics
