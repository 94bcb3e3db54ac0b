"""The trainer: steps, then guarded logging, validation and checkpointing.

It knows nothing of evaluation: the job that runs it hands it a ``validate(model) -> loss``
callable, and evaluates the model itself once ``fit()`` returns.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
from tqdm.auto import tqdm

from posbench.common.distributed import any_rank, mean_across_ranks, no_sync, wrap_ddp
from posbench.common.runtime import Dist, autocast, rng_state, set_rng_state
from posbench.config import TrainConfig
from posbench.model.loss import NextTokenLoss
from posbench.model.schema1 import fuse_optimizer_state
from posbench.runs.checkpoint import RESUME_ENTRIES, RunRecord, load_checkpoint, save_checkpoint
from posbench.tracking import Tracker
from posbench.training.optim import build_optimizer, lr_at, parameter_groups
from posbench.training.signals import StopRequests

log = logging.getLogger(__name__)

# the model -> its validation metrics, named as logged ("val/loss", a task's "val/exact_match", ...)
Validate = Callable[[torch.nn.Module], dict[str, float]]


class Batches(Protocol):
    """Where training batches come from: ``TrainBatches`` (a token stream) or ``TaskBatches`` (a task)."""

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class TrainingData:
    """What the trainer trains on: its batches, and what checkpoints record of the data."""

    batches: Batches
    vocab_size: int
    fingerprint: str  # the corpus's (or the task vocabulary's): a checkpoint is only read with it


@dataclass
class Divergence:
    """Training stopped on a non-finite loss or gradient norm (results.json's ``diverged`` record)."""

    step: int  # the step whose loss or gradient norm was not finite
    last_finite_loss: Optional[float]
    checkpoint: Optional[str]  # the last good checkpoint, kept as it was

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "last_finite_loss": self.last_finite_loss, "checkpoint": self.checkpoint}

    def message(self) -> str:
        loss = "none" if self.last_finite_loss is None else f"{self.last_finite_loss:.4f}"
        kept = f"kept {self.checkpoint}" if self.checkpoint else "no checkpoint was written"
        return (
            f"training diverged at step {self.step} (non-finite loss or gradient norm); last finite loss "
            f"{loss}; {kept}; lower train.lr or raise train.warmup_steps"
        )


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    losses: dict[int, float] = field(default_factory=dict)  # step -> training loss
    skipped: int = 0  # steps whose non-finite update was not applied (train.skip_nonfinite_steps)
    diverged: Optional[Divergence] = None
    stopped_by: Optional[int] = None  # the signal that stopped the run after its checkpoint
    last_good_loss: Optional[float] = None  # the loss of the last step whose update was applied
    wall_time_s: Optional[float] = 0.0  # seconds in fit() since step 0, every process; None: not known
    process_wall_time_s: float = 0.0  # seconds in fit()'s steps in this process (from the step it started at)


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def train_step(
    objective, optimizer, batches: Batches, cfg: TrainConfig, device: torch.device, lr: float
) -> tuple[float, float, int]:
    """Gradients over ``grad_accum`` micro-batches, clipped -> (this rank's mean loss, gradient norm,
    this rank's input tokens, padding included). ``objective``: (inputs, targets) -> mean NLL
    (``model/loss.py``'s ``NextTokenLoss``, or DDP around it). The update is not applied: the caller
    steps the optimiser once the loss proves finite. Targets of -100 (a task's inputs and padding)
    carry no loss. The loss and the gradient norm reach the host together, once per step: one device
    sync, not one per micro-batch (the loss is summed in float64 on the device, the same additions as
    summing the micro-batches' Python floats)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens, accum = 0, cfg.grad_accum
    for micro in range(accum):
        x, y = (t.to(device, non_blocking=True) for t in batches.next())
        with no_sync(objective, skip=micro < accum - 1):
            with autocast(device, cfg.precision):  # the forward only: a backward under autocast
                loss = objective(x, y) / accum  # would recast the matmuls of custom backwards
            loss.backward()
        total += loss.detach().double()
        tokens += x.numel()
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf  # inf: only measured (grads times 1.0)
    grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), clip)
    loss_value, norm_value = torch.stack((total, grad_norm.double())).tolist()
    return loss_value, norm_value, tokens


class Trainer:
    """Trains ``model`` on ``data`` for ``cfg``'s budget in ``run_dir``; only rank 0 validates and
    checkpoints. ``record`` is what its checkpoints say of the run (and which checkpoint resumes it)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        data: TrainingData,
        record: RunRecord,
        run_dir: Path,
        device: torch.device,
        dist: Dist,
        validate: Optional[Validate] = None,
        resume_from: Optional[Path] = None,
        stops: Optional[StopRequests] = None,
    ) -> None:
        self.cfg, self.model, self.data, self.record = cfg, model, data, record
        self.device, self.dist, self.validate = device, dist, validate
        self.stops = stops or StopRequests()
        self.total = cfg.total_steps()
        self.ckpt_path = run_dir / "checkpoints" / "last.pt"
        self.optimizer = build_optimizer(model, cfg)
        self.batches = data.batches
        self.state = TrainState()
        self.kept_checkpoint: Optional[Path] = resume_from  # the last good checkpoint, if any
        if resume_from is not None:
            self.resume(resume_from)

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, self.device, require=RESUME_ENTRIES)
        self.record.check_resumes(ckpt["config"])
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(self.optimizer_state(ckpt))
        self.batches.load_state_dict(ckpt["batches"])
        set_rng_state(ckpt["rng"])
        losses = {int(k): v for k, v in ckpt["losses"].items()}
        self.state = TrainState(ckpt["step"], ckpt["tokens_seen"], losses)
        self.state.last_good_loss = ckpt.get("last_good_loss", losses.get(ckpt["step"]))
        self.state.skipped = ckpt.get("skipped_steps", 0)
        self.state.wall_time_s = ckpt.get("train_wall_time_s")  # absent from checkpoints made before it
        log.info("resumed from %s at step %d", path, self.state.step)

    def optimizer_state(self, ckpt: dict) -> dict:
        """The checkpoint's optimiser state, fused first when it is of schema 1 (``model/schema1.py``)."""
        if ckpt["schema_version"] != 1:
            return ckpt["optimizer"]
        names = [[name for name, _ in group] for group in parameter_groups(self.model)]
        return fuse_optimizer_state(ckpt["optimizer"], names)

    @property
    def finished(self) -> bool:
        return self.state.step >= self.total

    def fit(self, tracker: Tracker) -> TrainState:
        """Step until the budget is spent, ``train.stop_after_steps``, a stop signal (after a checkpoint)
        or a divergence (without one); returns the loop state."""
        model = torch.compile(self.model) if self.cfg.compile else self.model
        objective = NextTokenLoss(model, self.cfg.loss_chunk, self.cfg.activation_checkpointing)
        step_fn = wrap_ddp(objective, self.device, self.model.encoding.uses_every_parameter())
        bar = tqdm(
            total=self.total,
            initial=self.state.step,
            desc="train",
            unit="step",
            disable=not self.dist.is_main,
        )
        self.model.train()
        started, before = time.perf_counter(), self.state.wall_time_s
        while not self.finished:
            loss, grad_norm, lr, tok_s = self.step(step_fn)
            # before the checkpoint, which keeps it for a resume: results report the checkpointed
            # value, so a step's validation and checkpoint count with the next step, the last one's not
            self.count_time(started, before)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", refresh=False)  # drawn by update,
            bar.update(1)  # at most every tqdm's mininterval, not on every step
            self.log(tracker, loss, lr, tok_s, grad_norm)
            if self.state.diverged is None:
                self.validate_now(tracker)  # when due, a signalled step too: a resume must not miss it
                self.checkpoint(force=self.signalled())
            if self.stopping or self.state.stopped_by or self.state.diverged:
                break
        bar.close()
        if self.state.diverged:
            self.log_divergence(tracker)
        return self.state

    def count_time(self, started: float, before: Optional[float]) -> None:
        """This process's seconds in the loop since ``started``, and the run's since step 0 (``before``:
        the resumed checkpoint's, None when it did not record them) -- one clock for both."""
        self.state.process_wall_time_s = time.perf_counter() - started
        if before is not None:
            self.state.wall_time_s = before + self.state.process_wall_time_s

    def step(self, step_fn) -> tuple[float, float, float, float]:
        """One step, averaged over ranks -> (loss, gradient norm, learning rate, tokens/s); the update
        is applied only when both are finite.

        A non-finite loss or gradient norm (the same on every rank: the loss is averaged, the gradients
        all-reduced) is never applied: it is skipped while ``train.skip_nonfinite_steps`` allows, else
        the run is marked diverged."""
        started = time.perf_counter()
        lr = lr_at(self.state.step, self.cfg, self.total)
        loss, grad_norm, tokens = train_step(step_fn, self.optimizer, self.batches, self.cfg, self.device, lr)
        loss = mean_across_ranks(loss, self.device)
        tokens *= self.dist.world_size  # every rank's slice of the global batch has the same shape
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.state.last_good_loss = loss
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += tokens
        self.state.losses[self.state.step] = loss
        if not finite:
            self.state.skipped += 1
            if self.state.skipped > self.cfg.skip_nonfinite_steps:
                self.diverge()
        return loss, grad_norm, lr, tokens / (time.perf_counter() - started)

    def diverge(self) -> None:
        kept = str(self.kept_checkpoint) if self.kept_checkpoint is not None else None
        self.state.diverged = Divergence(self.state.step, self.state.last_good_loss, kept)

    def log_divergence(self, tracker: Tracker) -> None:
        record = self.state.diverged.to_dict()
        tracker.log(
            {"train/diverged": 1, "train/last_finite_loss": record["last_finite_loss"]}, record["step"]
        )
        tracker.summary({"diverged": record})

    def signalled(self) -> bool:
        """Whether a stop signal reached any rank: every rank stops after the same step."""
        stopped = any_rank(self.stops.requested is not None, self.device)
        if stopped:
            self.state.stopped_by = self.stops.requested or int(signal.SIGTERM)  # or another rank's
        return stopped

    def due(self, every: int) -> bool:
        """Every ``every`` steps and at the last one; never when ``every`` is 0."""
        return bool(every) and (self.state.step % every == 0 or self.finished)

    @property
    def stopping(self) -> bool:
        return self.cfg.stop_after_steps is not None and self.state.step >= self.cfg.stop_after_steps

    def log(self, tracker: Tracker, loss: float, lr: float, tok_s: float, grad_norm: float) -> None:
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if self.state.step % self.cfg.log_every == 0 or self.finished or skipped:
            metrics = {
                "train/loss": loss,
                "train/lr": lr,
                "train/tokens_per_s": tok_s,
                "train/tokens": self.state.tokens_seen,
                "train/grad_norm": grad_norm,
            }
            if self.state.skipped:
                metrics["train/skipped_steps"] = self.state.skipped
            tracker.log(metrics, self.state.step)

    def validate_now(self, tracker: Tracker) -> None:
        if self.validate is not None and self.dist.is_main and self.due(self.cfg.val_every):
            tracker.log(self.validate(self.model), self.state.step)
            self.model.train()

    def checkpoint(self, force: bool = False) -> None:
        """At ``ckpt_every``, the end, a stop; never of non-finite weights (that is a divergence)."""
        if not (force or self.due(self.cfg.ckpt_every) or self.finished or self.stopping):
            return
        if not all_finite(self.model.parameters()):  # on every rank: DDP replicas are identical
            self.diverge()
            return
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, self.checkpoint_state())
            self.kept_checkpoint = self.ckpt_path

    def checkpoint_state(self) -> dict[str, Any]:
        state = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "losses": {str(k): v for k, v in state.losses.items()},
            "last_good_loss": state.last_good_loss,
            "skipped_steps": state.skipped,
            "train_wall_time_s": state.wall_time_s,
            "batches": self.batches.state_dict(),
            "rng": rng_state(),
            "config": self.record.config,
            "vocab_size": self.data.vocab_size,
            "corpus_fingerprint": self.data.fingerprint,
        }
