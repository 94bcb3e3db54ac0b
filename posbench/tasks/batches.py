"""Training batches of task examples: deterministic, resumable and rank-independent, as ``TrainBatches``.

Batch ``i`` draws from ``np.random.default_rng([seed, i])`` one length, uniformly in
``task.train_lengths`` (``task.length_sampling=per_batch``, the DeepMind suite's curriculum; or one
per example with ``per_sequence``), then one example of that length per row. Rows are padded on the
right to the longest of the global batch: padding after a sequence changes nothing before it under
causal attention, for encodings whose positions do not depend on the forward's length. Each rank
keeps its contiguous slice of rows. Targets are the next tokens where those are answer tokens and
``IGNORE`` elsewhere, so the loss covers the answers only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from posbench.tasks.base import PAD, Example, Task
from posbench.tasks.config import LengthSampling

IGNORE = -100  # a target ``F.cross_entropy`` skips (its default ignore_index)


def collate(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples -> (x, y), each (B, T - 1) int64 for the longest example's T tokens; y is x shifted
    by one where the next token is an answer token, ``IGNORE`` elsewhere (inputs and padding)."""
    T = max(len(e.tokens) for e in examples)
    tokens = np.full((len(examples), T), PAD, dtype=np.int64)
    answer = np.zeros((len(examples), T), dtype=bool)
    for row, example in enumerate(examples):
        tokens[row, : len(example.tokens)] = example.tokens
        answer[row, : len(example.answer)] = example.answer
    targets = np.where(answer[:, 1:], tokens[:, 1:], IGNORE)
    return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(targets)


class TaskBatches:
    def __init__(self, task: Task, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        """``batch_size`` is the global batch, in examples."""
        if batch_size % world_size:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by world_size={world_size}; "
                "pick a global batch that is a multiple of the number of ranks"
            )
        self.task, self.batch_size, self.seed = task, batch_size, seed
        self.lengths = tuple(task.cfg.train_lengths)
        self.rows = slice(rank * (batch_size // world_size), (rank + 1) * (batch_size // world_size))
        self.batch_index = 0

    def examples(self, index: int) -> list[Example]:
        """The global batch ``index``."""
        rng = np.random.default_rng([self.seed, index])
        draws = self.batch_size if self.task.cfg.length_sampling == LengthSampling.per_sequence else 1
        lengths = rng.integers(self.lengths[0], self.lengths[1] + 1, size=draws)
        return [self.task.example(rng, int(lengths[row % draws])) for row in range(self.batch_size)]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(x, y)``, each ``(batch_size // world_size, T)`` int64."""
        x, y = collate(self.examples(self.batch_index))
        self.batch_index += 1
        return x[self.rows].contiguous(), y[self.rows].contiguous()

    def state_dict(self) -> dict:
        return {
            "batch_index": self.batch_index,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "task": self.task.name,
            "train_lengths": list(self.lengths),
            "length_sampling": self.task.cfg.length_sampling.value,
        }

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (
            ("seed", self.seed),
            ("batch_size", self.batch_size),
            ("task", self.task.name),
            ("train_lengths", list(self.lengths)),
            ("length_sampling", self.task.cfg.length_sampling.value),
        ):
            if state.get(key) != mine:
                raise ValueError(
                    f"cannot resume batches: checkpoint has {key}={state.get(key)}, this run {mine}; "
                    "resume with the checkpoint's task and train settings"
                )
        self.batch_index = int(state["batch_index"])
