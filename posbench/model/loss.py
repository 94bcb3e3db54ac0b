"""Next-token NLL from final hidden states and the output head, a chunk of tokens at a time.

The (tokens, V) logits of a long window are the largest tensor of a step (8K tokens of a 32K vocabulary
are 1 GiB in fp32, three times over with their log-softmax and gradient). ``token_nll`` builds them for
``chunk`` tokens at a time; under autograd each chunk is checkpointed, so its logits are freed after
the forward and rebuilt in the backward (one more head matmul per chunk). Training (``mean_nll``) and
evaluation (per-token NLL) share it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE = -100  # a target that carries no loss (a task's inputs, padding): F.cross_entropy's ignore_index


def chunk_nll(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """hidden (N, D), targets (N,) -> NLL (N,) in fp32, 0 where the target is IGNORE."""
    logits = head(hidden).float()  # with a device_map the head may sit on another device than the targets
    return F.cross_entropy(logits, targets.to(logits.device), ignore_index=IGNORE, reduction="none")


def token_nll(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """The NLL of every target: hidden (B, T, D), targets (B, T) -> (B, T) fp32, 0 where IGNORE.

    At most ``chunk`` tokens (of the flattened batch) have logits at once; the same numbers as the
    whole (B, T, V) logits at once, up to fp32 rounding."""
    if chunk < 1:
        raise ValueError(f"the loss chunk must be at least 1 token, got {chunk}")
    flat, flat_targets = hidden.flatten(0, 1), targets.flatten()  # (B·T, D), (B·T,)
    pieces = []
    for rows, rows_targets in zip(flat.split(chunk), flat_targets.split(chunk)):
        if torch.is_grad_enabled():  # the chunk's logits are not kept for the backward
            pieces.append(checkpoint(chunk_nll, head, rows, rows_targets, use_reentrant=False))
        else:
            pieces.append(chunk_nll(head, rows, rows_targets))
    return torch.cat(pieces).view(targets.shape)


def mean_nll(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """The mean NLL over targets that carry a loss, as ``F.cross_entropy`` (NaN when none does)."""
    return token_nll(hidden, head, targets, chunk).sum() / (targets != IGNORE).sum()


class NextTokenLoss(nn.Module):
    """The training objective around a Transformer: (tokens (B, T), targets (B, T)) -> mean NLL.

    One module so that DDP, which wraps it, sees the head's use inside its forward. ``chunk`` 0: the
    whole (B, T, V) logits at once; else ``chunk`` tokens at a time (``token_nll``).
    ``activation_checkpointing``: the Transformer's blocks keep only their inputs for the backward."""

    def __init__(self, model: nn.Module, chunk: int = 0, activation_checkpointing: bool = False):
        super().__init__()
        self.model, self.chunk, self.activation_checkpointing = model, chunk, activation_checkpointing

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self.model(
            tokens, hidden=self.chunk > 0, activation_checkpointing=self.activation_checkpointing
        )
        if self.chunk == 0:  # out: logits (B, T, V)
            return F.cross_entropy(out.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        return mean_nll(out, self.model.lm_head, targets, self.chunk)
