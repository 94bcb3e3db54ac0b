"""Random training windows that are deterministic, resumable and rank-independent.

Batch ``i`` draws ``batch_size`` window starts from ``np.random.default_rng([seed, i])``,
uniformly over every start that leaves room for the shifted target. Each rank keeps its
own contiguous slice of those rows. Because batch ``i`` depends only on ``(seed, i)``:
- the global batch is the same for any world size (ranks concatenated = one rank);
- the whole state is the batch index, so a resumed run sees exactly the batches an
  uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

from posbench.data.errors import DataError


class TrainBatches:
    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        name: str = "training stream",
    ) -> None:
        """``batch_size`` is the global batch; ``name`` only labels the too-short error."""
        if batch_size % world_size:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by world_size={world_size}; "
                "pick a global batch that is a multiple of the number of ranks"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside 0..{world_size - 1}")
        if len(tokens) < seq_len + 1:
            raise DataError(
                f"the {name} has {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1} needed for one "
                "training window; lower train.seq_len or use a larger corpus"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rows = slice(rank * (batch_size // world_size), (rank + 1) * (batch_size // world_size))
        self.batch_index = 0

    def _starts(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        valid_starts = len(self.tokens) - self.seq_len  # a window needs seq_len + 1 tokens
        return rng.integers(0, valid_starts, size=self.batch_size)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(x, y)``, each ``(batch_size // world_size, seq_len)`` int64; y = x shifted by
        one."""
        starts = self._starts(self.batch_index)[self.rows]
        self.batch_index += 1
        windows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        windows = torch.from_numpy(windows)  # (b, seq_len + 1)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {
            "batch_index": self.batch_index,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "seq_len", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume batches: checkpoint has {key}={state[key]}, this run "
                    f"{getattr(self, key)}; "
                    "resume with the checkpoint's train settings"
                )
        self.batch_index = int(state["batch_index"])
