"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from posbench.config import TrainConfig


def parameter_groups(model: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """(name, parameter) of the optimiser's two groups, in its order: matrices decay; gains, biases and
    encoding scalars do not (Loshchilov & Hutter 2019)."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [[(n, p) for n, p in params if p.dim() >= 2], [(n, p) for n, p in params if p.dim() < 2]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = ([p for _, p in group] for group in parameter_groups(model))
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``lr·min_lr_ratio`` at the end."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))
