"""The training loop: steps, then guarded logging, validation, checkpointing; evaluation at the end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from posbench.config import EvalConfig, Protocol, RunConfig, to_plain_dict
from posbench.data import TrainBatches, load_corpus
from posbench.distributed import barrier, broadcast_from_main, mean_across_ranks, no_sync, process_group, wrap_ddp
from posbench.evaluation.evaluator import evaluate_length
from posbench.evaluation.run import evaluate_and_report, run_metadata
from posbench.model.transformer import Transformer
from posbench.runtime import Dist, autocast, check_precision, dist_from_env, resolve_device, rng_state, seed_everything, set_rng_state
from posbench.tracking import build_tracker
from posbench.training.checkpoint import load_checkpoint, save_checkpoint
from posbench.training.optim import build_optimizer, lr_at
from posbench.training.resume import find_resume_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    losses: dict[int, float] = field(default_factory=dict)  # step -> training loss


def run_name(run: RunConfig, label: str) -> str:
    return f"{label}-L{run.train.seq_len}-s{run.train.seed}"


def train_step(model, optimizer, batches: TrainBatches, run: RunConfig, device: torch.device, lr: float) -> float:
    """One optimiser step over ``grad_accum`` micro-batches; returns this rank's mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total, accum = 0.0, run.train.grad_accum
    for micro in range(accum):
        x, y = (t.to(device, non_blocking=True) for t in batches.next())
        with no_sync(model, skip=micro < accum - 1), autocast(device, run.train.precision):
            logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / accum
            loss.backward()
        total += loss.item()
    if run.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def validation_loss(model: Transformer, val_stream, run: RunConfig, device: torch.device) -> float:
    cfg = EvalConfig(lengths=[run.train.seq_len], protocol=Protocol.nonoverlapping, max_tokens=run.train.val_tokens)
    result = evaluate_length(model, val_stream, run.train.seq_len, cfg, device, run.train.precision, progress=False)
    model.train()
    if result.nll is None:
        raise ValueError(f"cannot validate at train.seq_len={run.train.seq_len}: {result.reason}")
    return result.nll


def checkpoint_state(model, optimizer, batches, state: TrainState, run: RunConfig, corpus) -> dict[str, Any]:
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": state.step,
        "tokens_seen": state.tokens_seen, "losses": {str(k): v for k, v in state.losses.items()},
        "batches": batches.state_dict(), "rng": rng_state(), "config": to_plain_dict(run),
        "vocab_size": corpus.vocab_size, "corpus_fingerprint": corpus.fingerprint,
    }


def restore(ckpt: dict, model, optimizer, batches, run: RunConfig) -> TrainState:
    saved = ckpt["config"]
    for group in ("encoding", "model", "data"):
        if saved[group] != to_plain_dict(run)[group]:
            raise ValueError(f"cannot resume: the checkpoint's {group} config differs from this run's ({saved[group]})")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    batches.load_state_dict(ckpt["batches"])
    set_rng_state(ckpt["rng"])
    return TrainState(ckpt["step"], ckpt["tokens_seen"], {int(k): v for k, v in ckpt["losses"].items()})


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
            f"train.batch_size/train.grad_accum = {run.train.batch_size // run.train.grad_accum} sequences per "
            f"micro-step cannot be split over {d.world_size} processes; make it a multiple of the process count"
        )
    with process_group(d, device):
        return _train(run, Path(broadcast_from_main(str(run_dir))), choices, d, device)


def _train(run: RunConfig, run_dir: Path, choices: Optional[dict], d: Dist, device: torch.device) -> dict[str, Any]:
    seed_everything(run.train.seed)
    if not d.is_main:
        barrier()  # rank 0 builds the token caches first
    corpus = load_corpus(run.data)
    if d.is_main:
        barrier()
    model = Transformer(run.model, run.encoding, corpus.vocab_size).to(device)
    optimizer = build_optimizer(model, run.train)
    batches = TrainBatches(corpus.train, run.train.seq_len, run.train.batch_size // run.train.grad_accum,
                           run.train.seed, d.rank, d.world_size)
    state = TrainState()
    resume_from = find_resume_checkpoint(run, run_dir)
    if resume_from is not None:
        state = restore(load_checkpoint(resume_from, device), model, optimizer, batches, run)
        log.info("resumed from %s at step %d", resume_from, state.step)
    name = run_name(run, model.encoding.label)
    tracker = build_tracker(run.logger, str(run_dir), {**to_plain_dict(run), "choices": choices or {}}, name,
                            run.logger.group or run.experiment_name, d.rank)
    step_fn = wrap_ddp(torch.compile(model) if run.train.compile else model, device)
    try:
        _loop(model, step_fn, optimizer, batches, corpus, run, run_dir, tracker, device, state, d)
        metrics: dict[str, Any] = {"step": state.step, "tokens_seen": state.tokens_seen, "losses": state.losses}
        if run.eval.enabled and d.is_main and state.step >= run.train.total_steps():
            meta = run_metadata(run, model, corpus.info, {"run_name": name, "step": state.step, "tokens_seen": state.tokens_seen})
            metrics["results"] = evaluate_and_report(model, corpus.val, corpus.separator_id, run, run_dir, tracker, device, meta)
    finally:
        tracker.close()
    barrier()
    return metrics


def _loop(model, step_fn, optimizer, batches, corpus, run: RunConfig, run_dir: Path, tracker, device, state: TrainState, d: Dist) -> None:
    cfg, total = run.train, run.train.total_steps()
    tokens_per_step = cfg.batch_size * cfg.seq_len
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    bar = tqdm(total=total, initial=state.step, desc="train", unit="step", disable=not d.is_main)
    model.train()
    while state.step < total:
        started = time.perf_counter()
        lr = lr_at(state.step, cfg, total)
        loss = mean_across_ranks(train_step(step_fn, optimizer, batches, run, device, lr), device)
        state.step += 1
        state.tokens_seen += tokens_per_step
        state.losses[state.step] = loss
        tok_s = tokens_per_step / (time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
        if state.step % cfg.log_every == 0 or state.step == total:
            tracker.log({"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tok_s, "train/tokens": state.tokens_seen}, state.step)
        if cfg.val_every and (state.step % cfg.val_every == 0 or state.step == total) and d.is_main:
            tracker.log({"val/loss": validation_loss(model, corpus.val, run, device)}, state.step)
        stopping = cfg.stop_after_steps is not None and state.step >= cfg.stop_after_steps
        if d.is_main and ((cfg.ckpt_every and state.step % cfg.ckpt_every == 0) or state.step == total or stopping):
            save_checkpoint(ckpt_path, checkpoint_state(model, optimizer, batches, state, run, corpus))
        if stopping:
            break
    bar.close()
