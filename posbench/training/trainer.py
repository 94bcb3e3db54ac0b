"""The trainer: steps, then guarded logging, validation and checkpointing.

It knows nothing of evaluation: the job that runs it hands it a ``validate(model) -> loss``
callable, and evaluates the model itself once ``fit()`` returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from posbench.checkpoint import load_checkpoint, save_checkpoint
from posbench.config import RunConfig, TrainConfig, to_plain_dict
from posbench.data import TokenizedCorpus, TrainBatches
from posbench.distributed import mean_across_ranks, no_sync, wrap_ddp
from posbench.identity import experiment_config
from posbench.model.legacy import fuse_optimizer_state
from posbench.runtime import Dist, autocast, rng_state, set_rng_state
from posbench.tracking import Tracker
from posbench.training.optim import build_optimizer, lr_at, parameter_groups
from posbench.training.resume import find_resume_checkpoint

log = logging.getLogger(__name__)

Validate = Callable[[torch.nn.Module], float]  # the model -> validation loss at the training length


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    losses: dict[int, float] = field(default_factory=dict)  # step -> training loss


def train_step(
    model, optimizer, batches: TrainBatches, cfg: TrainConfig, device: torch.device, lr: float
) -> float:
    """One optimiser step over ``grad_accum`` micro-batches; returns this rank's mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total, accum = 0.0, cfg.grad_accum
    for micro in range(accum):
        x, y = (t.to(device, non_blocking=True) for t in batches.next())
        with no_sync(model, skip=micro < accum - 1), autocast(device, cfg.precision):
            logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / accum
            loss.backward()
        total += loss.item()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def check_resumable(saved: dict, run: RunConfig) -> None:
    """A checkpoint resumes only a run of the same encoding, model and data (as the identity sees them)."""
    theirs, ours = experiment_config(saved), experiment_config(to_plain_dict(run))
    for group in ("encoding", "model", "data"):
        if theirs.get(group) != ours[group]:
            raise ValueError(
                f"cannot resume: the checkpoint's {group} config differs from this run's ({saved[group]})"
            )


class Trainer:
    """Trains ``model`` for ``run.train``'s budget in ``run_dir``; only rank 0 validates and checkpoints."""

    def __init__(
        self,
        run: RunConfig,
        model: torch.nn.Module,
        corpus: TokenizedCorpus,
        run_dir: Path,
        device: torch.device,
        dist: Dist,
        validate: Optional[Validate] = None,
    ) -> None:
        self.run, self.cfg, self.model, self.corpus = run, run.train, model, corpus
        self.device, self.dist, self.validate = device, dist, validate
        self.total = run.train.total_steps()
        self.tokens_per_step = run.train.batch_size * run.train.seq_len
        self.ckpt_path = run_dir / "checkpoints" / "last.pt"
        self.optimizer = build_optimizer(model, run.train)
        self.batches = TrainBatches(
            corpus.train,
            run.train.seq_len,
            run.train.batch_size // run.train.grad_accum,
            run.train.seed,
            dist.rank,
            dist.world_size,
        )
        self.state = TrainState()
        self.resume_if_asked(run_dir)

    def resume_if_asked(self, run_dir: Path) -> None:
        path = find_resume_checkpoint(self.run, run_dir)
        if path is None:
            return
        ckpt = load_checkpoint(path, self.device)
        check_resumable(ckpt["config"], self.run)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(self.optimizer_state(ckpt))
        self.batches.load_state_dict(ckpt["batches"])
        set_rng_state(ckpt["rng"])
        self.state = TrainState(
            ckpt["step"], ckpt["tokens_seen"], {int(k): v for k, v in ckpt["losses"].items()}
        )
        log.info("resumed from %s at step %d", path, self.state.step)

    def optimizer_state(self, ckpt: dict) -> dict:
        """The checkpoint's optimiser state, fused first when it is of schema 1 (``model/legacy.py``)."""
        if ckpt["schema_version"] != 1:
            return ckpt["optimizer"]
        names = [[name for name, _ in group] for group in parameter_groups(self.model)]
        return fuse_optimizer_state(ckpt["optimizer"], names)

    @property
    def finished(self) -> bool:
        return self.state.step >= self.total

    def fit(self, tracker: Tracker) -> TrainState:
        """Step until the budget is spent (or ``train.stop_after_steps``); returns the loop state."""
        step_fn = wrap_ddp(torch.compile(self.model) if self.cfg.compile else self.model, self.device)
        bar = tqdm(
            total=self.total,
            initial=self.state.step,
            desc="train",
            unit="step",
            disable=not self.dist.is_main,
        )
        self.model.train()
        while not self.finished:
            loss, lr, tok_s = self.step(step_fn)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
            self.log(tracker, loss, lr, tok_s)
            self.validate_now(tracker)
            self.checkpoint()
            if self.stopping:
                break
        bar.close()
        return self.state

    def step(self, step_fn) -> tuple[float, float, float]:
        """One optimiser step, averaged over ranks -> (loss, learning rate, tokens/s)."""
        started = time.perf_counter()
        lr = lr_at(self.state.step, self.cfg, self.total)
        loss = mean_across_ranks(
            train_step(step_fn, self.optimizer, self.batches, self.cfg, self.device, lr), self.device
        )
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        self.state.losses[self.state.step] = loss
        return loss, lr, self.tokens_per_step / (time.perf_counter() - started)

    def due(self, every: int) -> bool:
        """Every ``every`` steps and at the last one; never when ``every`` is 0."""
        return bool(every) and (self.state.step % every == 0 or self.finished)

    @property
    def stopping(self) -> bool:
        return self.cfg.stop_after_steps is not None and self.state.step >= self.cfg.stop_after_steps

    def log(self, tracker: Tracker, loss: float, lr: float, tok_s: float) -> None:
        if self.state.step % self.cfg.log_every == 0 or self.finished:
            tracker.log(
                {
                    "train/loss": loss,
                    "train/lr": lr,
                    "train/tokens_per_s": tok_s,
                    "train/tokens": self.state.tokens_seen,
                },
                self.state.step,
            )

    def validate_now(self, tracker: Tracker) -> None:
        if self.validate is not None and self.dist.is_main and self.due(self.cfg.val_every):
            tracker.log({"val/loss": self.validate(self.model)}, self.state.step)
            self.model.train()

    def checkpoint(self) -> None:
        if self.dist.is_main and (self.due(self.cfg.ckpt_every) or self.finished or self.stopping):
            save_checkpoint(self.ckpt_path, self.checkpoint_state())

    def checkpoint_state(self) -> dict[str, Any]:
        state = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "losses": {str(k): v for k, v in state.losses.items()},
            "batches": self.batches.state_dict(),
            "rng": rng_state(),
            "config": to_plain_dict(self.run),
            "vocab_size": self.corpus.vocab_size,
            "corpus_fingerprint": self.corpus.fingerprint,
        }
