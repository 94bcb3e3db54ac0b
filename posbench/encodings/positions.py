"""Where a forward's positions come from: 0..T-1, randomized (Ruoss et al. 2023), or PoSE's skip-wise
training positions (Zhu et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from posbench.common.options import option


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

    def check_positions(self) -> None:
        if self.random_positions_max is not None and self.random_positions_max < 1:
            raise ValueError(
                f"encoding.random_positions_max={self.random_positions_max} must be a positive range "
                "(at least the longest evaluation length), or null for positions 0..T-1"
            )
        check_pose(self)


@dataclass
class PoseOption:
    """Config field of the encodings that take PoSE's training positions (absolute, rotary, biases)."""

    # PoSE (Zhu et al. 2024, ICLR, §3.2), as its released code does it (dwzhu-pku/PoSE,
    # train_pose.py): a training window of T tokens is cut in two chunks, [0, r) with r uniform in
    # 1..(T+1)//2 and [r, T) shifted by a skip u uniform in 0..pose_target - T, so its positions reach
    # into [0, pose_target). Evaluation uses 0..T-1. null = off.
    pose_target: Optional[int] = option(None, at_eval=True, off=None)

    def check_positions(self) -> None:
        check_pose(self)


def check_pose(cfg: object) -> None:
    target = getattr(cfg, "pose_target", None)
    if target is not None and target < 2:
        raise ValueError(f"encoding.pose_target={target} must be a target length of at least 2")
    if target is not None and getattr(cfg, "random_positions_max", None) is not None:
        raise ValueError(
            "encoding.pose_target and encoding.random_positions_max both choose the positions: set one"
        )


def positions_suffix(cfg: object) -> str:
    """``+randpos`` or ``+pose`` in the label of an encoding config whose positions are not 0..T-1."""
    if getattr(cfg, "random_positions_max", None) is not None:
        return RandomPositions.label_suffix
    return PosePositions.label_suffix if getattr(cfg, "pose_target", None) is not None else ""


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


class PosePositions:
    """PoSE's training positions: two chunks, the second shifted by a random skip into the target
    length; 0..T-1 outside training."""

    label_suffix = "+pose"

    def __init__(self, target: int):
        self.target = target

    def __call__(self, seq_len: int, device: torch.device, training: bool) -> torch.Tensor:
        pos = torch.arange(seq_len)
        if not training or seq_len < 2:
            return pos.to(device)
        if seq_len > self.target:
            raise ValueError(
                f"PoSE trains windows of {seq_len} tokens into a target of {self.target}: raise "
                "encoding.pose_target above train.seq_len"
            )
        # training draws from torch's global generator (seeded, and saved in checkpoints)
        cut = int(torch.randint(1, (seq_len + 1) // 2 + 1, ()))
        skip = int(torch.randint(0, self.target - seq_len + 1, ()))
        pos[cut:] += skip
        return pos.to(device)  # (T,), increasing, below target

    def span(self, seq_len: int) -> int:
        return max(seq_len, self.target)

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        return None


ARANGE = ArangePositions()
PositionSampler = ArangePositions | RandomPositions | PosePositions


def position_sampler(cfg: object) -> PositionSampler:
    """The sampler an encoding config asks for (0..T-1 for one without ``PositionOptions``)."""
    if getattr(cfg, "random_positions_max", None) is not None:
        return RandomPositions(cfg.random_positions_max, cfg.random_positions_eval_seed)
    if getattr(cfg, "pose_target", None) is not None:
        return PosePositions(cfg.pose_target)
    return ARANGE
