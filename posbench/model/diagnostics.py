"""Attention diagnostics: for every query, the entropy of its attention distribution and the weight
it gives the window's first key (the attention "sink": Xiao et al. 2024, "Efficient Streaming
Language Models with Attention Sinks", ICLR, §3.1).

They say why an encoding fails past its training length: an entropy that keeps growing with the
number of keys is attention flattening out (the case for a temperature, Su 2021; Nakanishi 2025),
a sink mass that collapses or explodes past L is the model's "no-op" head behaviour breaking.

``AttentionProbe`` rides along one forward (``Transformer.forward(tokens, probe=...)``): every
layer hands it its final queries and keys, and it recomputes that layer's attention one query block
at a time from explicit fp32 logits, exactly as the eager reference does (the encoding's bias,
score modifier and q/k decay included), keeping per position only the sums it needs. Memory is one
block's (B, H, rows, prefix) logits, linear in the window; the (T, T) square is never held.
"""

from __future__ import annotations

from typing import Optional

import torch

from posbench.encodings.scores import Scores
from posbench.model import remap
from posbench.model.blocks import DECAY_FLOOR, query_blocks, scale_qk
from posbench.model.masks import causal_bias
from posbench.model.stick_breaking import stick_breaking_weights


def attention_statistics(
    q: torch.Tensor,
    k: torch.Tensor,
    pos: torch.Tensor,
    scores: Scores,
    scale: float,
    layer: int,
    block: int,
    key_bias: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) and first-key weight of every query's attention. q, k (B, H, T, Dh), final
    (rotated, temperature applied); pos (T,); key_bias (B, H, T) (FoX) or None.
    -> (B, H, T), (B, H, T) fp32"""
    with torch.autocast(q.device.type, enabled=False):  # explicit fp32 logits under autocast too
        return statistics_by_blocks(q, k, pos, scores, scale, layer, block, key_bias)


def statistics_by_blocks(q, k, pos, scores: Scores, scale: float, layer: int, block: int, key_bias):
    B, H, T, _ = q.shape
    idx = torch.arange(T, device=q.device)
    remapped = None if scores.remap is None else remap.rotations(q, k, pos, scores.remap)
    bias_fn = None if scores.bias is None else scores.bias.fn
    entropy, sink = q.new_empty(B, H, T, dtype=torch.float32), q.new_empty(B, H, T, dtype=torch.float32)
    for start, end in query_blocks(T, block, B * H):  # the (B, H, rows, prefix) logits bound the rows
        if scores.stick_breaking:  # its weights, the remainder on the query's own key included
            p = stick_breaking_weights(q[:, :, start:end], k[:, :, :end], scale, start)
            entropy[:, :, start:end] = -(p * p.clamp(min=1e-38).log()).sum(-1)
            sink[:, :, start:end] = p[..., 0]
            continue
        q_b, k_b = q[:, :, start:end].float(), k[:, :, :end].float()
        if scores.decay is not None:  # re-centred on the block, as decayed_blockwise does
            q_b, k_b = scale_qk(q_b, k_b, scores.decay.factors(pos[:end], int(pos[start])), DECAY_FLOOR)
        q_b = q_b * scale
        bias = None if bias_fn is None else bias_fn(pos[start:end], pos[:end])
        if remapped is not None:  # q and k come unrotated: the merged map of the two rotations
            logits = remap.block_logits(*remapped, pos, scores.remap, start, end, scale)
        else:
            logits = q_b @ k_b.transpose(-2, -1)
        logits = logits + causal_bias(bias, idx[start:end], idx[:end], torch.float32)[None]
        if scores.score_mod is not None:
            logits = scores.score_mod(logits, q_b, layer)
        if key_bias is not None:
            logits = logits + key_bias[:, :, None, :end].float()
        log_p = logits.log_softmax(dim=-1)  # (B, H, b, end)
        p = log_p.exp()
        entropy[:, :, start:end] = -(p * log_p.masked_fill(p == 0, 0.0)).sum(-1)
        sink[:, :, start:end] = p[..., 0]
    return entropy, sink


class AttentionProbe:
    """Per layer and position in the window, sums over windows and heads of the attention entropy
    and the sink weight, filled by the forwards it rides along; ``mean()`` divides."""

    def __init__(self, n_layers: int, length: int, block: int = 256):
        self.block = block
        self.entropy = torch.zeros(n_layers, length, dtype=torch.float64)
        self.sink = torch.zeros(n_layers, length, dtype=torch.float64)
        self.rows = torch.zeros(n_layers, dtype=torch.float64)  # (window, head) rows summed per layer
        self.layer_scores: Optional[tuple[Scores, ...]] = None
        self.pos: Optional[torch.Tensor] = None

    def begin(self, scores: Scores, pos: torch.Tensor, n_layers: int) -> None:
        """Called by the model's forward: each layer's scores (a schedule's own, else the same)."""
        self.layer_scores = scores.layers if scores.layers is not None else (scores,) * n_layers
        self.pos = pos

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        scale: float,
        layer: int,
        key_bias: Optional[torch.Tensor] = None,
    ) -> None:
        entropy, sink = attention_statistics(
            q, k, self.pos, self.layer_scores[layer], scale, layer, self.block, key_bias
        )
        self.entropy[layer] += entropy.sum((0, 1)).double().cpu()
        self.sink[layer] += sink.sum((0, 1)).double().cpu()
        self.rows[layer] += entropy.shape[0] * entropy.shape[1]

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean entropy and sink weight per (layer, position). -> (n_layers, T) float64 each"""
        rows = self.rows.clamp(min=1)[:, None]
        return self.entropy / rows, self.sink / rows
