"""Where a forward's positions come from: 0..T-1, or randomized (Ruoss et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class RandomPositionsOption:
    """Config fields of the encodings that accept randomized positions (absolute and rotary)."""

    # Ruoss et al. 2023, "Randomized Positional Encodings Boost Length Generalization of
    # Transformers" (ACL), §3: a forward of T tokens takes T distinct positions drawn uniformly
    # from [0, random_positions_max) and sorted. Their released code draws them at test time
    # too, so evaluation does the same. null = the usual 0..T-1.
    random_positions_max: Optional[int] = None
    # evaluation draws from a generator seeded with this, so perplexities are reproducible
    random_positions_eval_seed: int = 0

    def check_random_positions(self) -> None:
        if self.random_positions_max is not None and self.random_positions_max < 1:
            raise ValueError(
                f"encoding.random_positions_max={self.random_positions_max} must be a positive range "
                "(at least the longest evaluation length), or null for positions 0..T-1"
            )


def randomized_suffix(cfg: object) -> str:
    """``+randpos`` in the label of an encoding config that draws its positions at random."""
    return RandomPositions.label_suffix if getattr(cfg, "random_positions_max", None) is not None else ""


class ArangePositions:
    """The null sampler: positions 0..T-1."""

    label_suffix = ""

    def __call__(self, seq_len: int, device: torch.device, training: bool) -> torch.Tensor:
        return torch.arange(seq_len, device=device)

    def span(self, seq_len: int) -> int:
        """One past the largest position a forward of ``seq_len`` tokens may get."""
        return seq_len

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        return None


class RandomPositions:
    """Sorted positions sampled without replacement from [0, max_position) on every forward."""

    label_suffix = "+randpos"

    def __init__(self, max_position: int, eval_seed: int):
        self.max_position, self.eval_seed = max_position, eval_seed

    def __call__(self, seq_len: int, device: torch.device, training: bool) -> torch.Tensor:
        reason = self.length_limit_reason(seq_len)
        if reason is not None:
            raise ValueError(reason)
        # training draws from torch's global generator (seeded, and saved in checkpoints)
        generator = None if training else torch.Generator().manual_seed(self.eval_seed)
        chosen = torch.randperm(self.max_position, generator=generator)[:seq_len]
        return chosen.sort().values.to(device)  # (T,)

    def span(self, seq_len: int) -> int:
        return self.max_position

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        if seq_len > self.max_position:
            return (
                f"randomized positions are drawn from [0, {self.max_position}): a window of {seq_len} "
                "needs encoding.random_positions_max >= its length"
            )
        return None


ARANGE = ArangePositions()
PositionSampler = ArangePositions | RandomPositions


def position_sampler(cfg: RandomPositionsOption) -> PositionSampler:
    if cfg.random_positions_max is None:
        return ARANGE
    return RandomPositions(cfg.random_positions_max, cfg.random_positions_eval_seed)
