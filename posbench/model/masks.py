"""Float attention masks: a bias plus -inf on the future, for a whole window or one query block.

A bias of the distance alone over consecutive positions is evaluated once per distance
(``distance_table``) and laid out as a Toeplitz matrix in one copy (``CausalToeplitz``), whose
gradient is a sum per diagonal.
"""

from __future__ import annotations

from typing import Optional

import torch

from posbench.encodings.scores import BiasFn


def causal_bias(
    bias: Optional[torch.Tensor], q_pos_idx: torch.Tensor, k_pos_idx: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Bias plus -inf above the diagonal, by index in the window. -> (H or 1, Tq, Tk)"""
    future = k_pos_idx[None, :] > q_pos_idx[:, None]  # (Tq, Tk)
    mask = torch.zeros(future.shape, dtype=dtype, device=future.device).masked_fill(future, float("-inf"))
    return mask[None] if bias is None else bias.to(dtype) + mask[None]


def full_mask(
    bias_fn: Optional[BiasFn], pos: torch.Tensor, dtype: torch.dtype, shared_table: bool = False
) -> Optional[torch.Tensor]:
    """The (1, H, T, T) float mask for the sdpa path, or None for the causal flag. ``shared_table``
    (the planner's call: a bias of the distance alone over consecutive positions): the bias is
    evaluated once per distance (``distance_table``) and laid out as a Toeplitz matrix in one copy;
    the (H, T, T) work is that copy, and its gradient (a sum per diagonal) is all a learned bias
    scatters back."""
    if bias_fn is None:
        return None
    T = pos.numel()
    if shared_table and T > 1:
        return CausalToeplitz.apply(distance_table(bias_fn, pos, T, dtype))[None]
    idx = torch.arange(T, device=pos.device)
    return causal_bias(bias_fn(pos, pos), idx, idx, dtype)[None]


def block_causal_bias(
    bias_fn: BiasFn, pos: torch.Tensor, start: int, end: int, dtype: torch.dtype
) -> torch.Tensor:
    """The bias of queries start..end-1 over keys 0..end-1, -inf on their future. -> (1, H, b, end)"""
    bias = bias_fn(pos[start:end], pos[:end]).to(dtype)  # (H, b, end), a fresh tensor per block
    bias = bias.clone() if bias._base is not None or not bias.is_contiguous() else bias
    future = torch.ones(end - start, end - start, dtype=torch.bool, device=pos.device).triu(1)
    bias[:, :, start:].masked_fill_(future, float("-inf"))  # only the diagonal square has a future
    return bias[None]


def consecutive(pos: torch.Tensor) -> bool:
    return pos.numel() < 2 or bool((pos[1:] - pos[:-1] == 1).all())


def distance_table(bias_fn: BiasFn, pos: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """u[h, t] = bias at distance d = (T - 1) - t for t < T + block - 1, i.e. d runs from
    T - 1 down to -(block - 1); -inf where d < 0 (the causal mask). -> (H, T + block - 1)"""
    T = pos.numel()
    distances = torch.arange(T - 1, -block, -1, device=pos.device)  # (T + block - 1,)
    values = bias_fn(pos[0] + distances.clamp(min=0), pos[:1])[:, :, 0].to(
        dtype
    )  # (H, n): query at d, key at 0
    return values.masked_fill(distances[None, :] < 0, float("-inf")).contiguous()


class CausalToeplitz(torch.autograd.Function):
    """``distance_table``'s u (H, 2T - 1), u[h, t] the bias at distance (T - 1) - t, laid out as the
    (H, T, T) matrix of distance i - j; its gradient is the sum of each diagonal on or below the main
    one. The future's entries (t >= T) get none: in ``distance_table`` they are the constant -inf."""

    @staticmethod
    def forward(ctx, table):
        heads, T = table.shape[0], (table.shape[1] + 1) // 2
        hankel = table.as_strided((heads, T, T), (table.stride(0), 1, 1))  # [h, a, j] = u[h, a + j]
        return hankel.flip(1)  # [h, i, j] = u[h, T - 1 - i + j], a copy

    @staticmethod
    def backward(ctx, grad):
        """Rows of a (T, 2T) buffer holding grad on their right half, read with a row stride of
        2T + 1: column c then walks the diagonal of distance T - c (the left half pads with zeros)."""
        heads, T = grad.shape[0], grad.shape[-1]
        padded = grad.new_empty(heads, T, 2 * T)
        padded[:, :, :T].zero_()
        padded[:, :, T:] = grad
        sums = padded.as_strided((heads, T, T + 1), (2 * T * T, 2 * T + 1, 1)).sum(
            1
        )  # [h, c]: distance T - c
        grad_table = grad.new_zeros(heads, 2 * T - 1)
        grad_table[:, :T] = sums[:, 1:]  # t = c - 1: distances T - 1 down to 0; the future has none
        return grad_table
