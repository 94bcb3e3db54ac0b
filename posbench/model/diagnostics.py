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

import time
from typing import Optional

import torch

from posbench.encodings.scores import LinearBias, Scores
from posbench.model import linear_bias, remap
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
    with torch.autocast(q.device.type, enabled=False):  # fp32 logits under autocast too
        if kernel_applies(q, scores, key_bias):
            slopes = None if scores.bias is None else scores.bias.slopes
            return kernel_statistics(q.float(), k.float(), pos, slopes, scale)
        return statistics_by_blocks(q, k, pos, scores, scale, layer, block, key_bias)


def kernel_applies(q: torch.Tensor, scores: Scores, key_bias: Optional[torch.Tensor]) -> bool:
    """Whether ``kernel_statistics`` can take these scores: on CPU, with no bias but a linear one
    (ALiBi) and nothing else (no decay, score modifier, remap, key bias or stick-breaking)."""
    plain = scores.decay is None and scores.score_mod is None and scores.remap is None
    plain = plain and key_bias is None and not scores.stick_breaking
    return q.device.type == "cpu" and plain and (scores.bias is None or isinstance(scores.bias, LinearBias))


def kernel_statistics(
    q, k, pos, slopes: Optional[torch.Tensor], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and first-key weight from the flash kernel, with no (query, key) tensor: for logits
    s_ij and p = softmax(s), H_i = lse_i − Σ_j p_ij s_ij, and with s_ij = scale·q_i·k_j + m·(j − c)
    (ALiBi's −m·(i − j) up to a row constant; m = 0 without a bias) the sum is scale·q_i·(Σ_j p_ij k_j)
    + m·Σ_j p_ij (j − c): one pass of the kernel over values [k, j − c] gives both, its log-sum-exp
    gives lse_i, and p_i0 = exp(s_i0 − lse_i). With a bias, query blocks as on the mask-free ALiBi
    path (``linear_bias``: the bias in one extra q/k channel, re-centred on each block's first
    position c); without one, one causal call over the window.
    q, k (B, H, T, Dh) fp32 -> (B, H, T), (B, H, T)"""
    B, H, T, D = q.shape
    m = torch.zeros(H) if slopes is None else slopes.float()
    m = m.to(q.device).view(1, H, 1)
    entropy, sink = q.new_empty(B, H, T), q.new_empty(B, H, T)
    block = T if slopes is None else linear_bias.MAX_BLOCK  # no bias: one causal call
    for start in range(0, T, block):
        end = min(start + block, T)
        offset = (pos[:end] - pos[start]).to(q.dtype).view(1, 1, end).expand(B, H, end)  # j − c
        q_b = torch.cat((q[:, :, start:end], q.new_ones(B, H, end - start, 1)), dim=-1)
        k_b = torch.cat((k[:, :, :end], (m * offset / scale)[..., None]), dim=-1)
        v_b = torch.cat((k[:, :, :end], offset[..., None]), dim=-1)
        out, lse = linear_bias.prefix_and_diagonal_lse(q_b, k_b, v_b, scale)
        q_s = q[:, :, start:end] * scale
        expected = (q_s * out[..., :D]).sum(-1) + m * out[..., D]  # Σ_j p_ij s_ij
        entropy[:, :, start:end] = (lse - expected).clamp(min=0)  # rounding, where one key takes all
        first = (q_s * k[:, :, :1]).sum(-1) + m * offset[..., :1]  # s_i0
        sink[:, :, start:end] = (first - lse).clamp(max=0).exp()  # a weight: s_i0 <= lse_i but for rounding
    return entropy, sink


def statistics_by_blocks(q, k, pos, scores: Scores, scale: float, layer: int, block: int, key_bias):
    B, H, T, _ = q.shape
    idx = torch.arange(T, device=q.device)
    remapped = None if scores.remap is None else remap.rotations(q, k, pos, scores.remap)
    bias_fn = None if scores.bias is None else scores.bias.fn
    entropy, sink = q.new_empty(B, H, T, dtype=torch.float32), q.new_empty(B, H, T, dtype=torch.float32)
    for start, end in query_blocks(T, block, B * H):  # the (B, H, rows, prefix) logits bound the rows
        if scores.stick_breaking:  # its weights, the remainder on the query's own key included
            p = stick_breaking_weights(q[:, :, start:end], k[:, :, :end], scale, start)
            entropy[:, :, start:end] = -torch.special.xlogy(p, p).sum(-1)  # 0·log 0 = 0
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
    and the sink weight, filled by the forwards it rides along (of the first ``windows`` windows
    they carry, when given); ``mean()`` divides. ``seconds``: the time spent in its own work."""

    def __init__(self, n_layers: int, length: int, block: int = 256, windows: Optional[int] = None):
        self.block, self.windows = block, windows
        self.entropy = torch.zeros(n_layers, length, dtype=torch.float64)
        self.sink = torch.zeros(n_layers, length, dtype=torch.float64)
        self.rows = torch.zeros(n_layers, dtype=torch.float64)  # (window, head) rows summed per layer
        self.seen = [0] * n_layers  # windows each layer has measured
        self.seconds = 0.0
        self.layer_scores: Optional[tuple[Scores, ...]] = None
        self.pos: Optional[torch.Tensor] = None

    def wants_more(self) -> bool:
        return self.windows is None or self.seen[0] < self.windows

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
        started = time.perf_counter()
        take = q.shape[0] if self.windows is None else min(q.shape[0], self.windows - self.seen[layer])
        if take > 0:
            q, k = q[:take], k[:take]
            key_bias = None if key_bias is None else key_bias[:take]
            entropy, sink = attention_statistics(
                q, k, self.pos, self.layer_scores[layer], scale, layer, self.block, key_bias
            )
            self.entropy[layer] += entropy.sum((0, 1)).double().cpu()
            self.sink[layer] += sink.sum((0, 1)).double().cpu()
            self.rows[layer] += entropy.shape[0] * entropy.shape[1]
            self.seen[layer] += take
        self.seconds += time.perf_counter() - started

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean entropy and sink weight per (layer, position). -> (n_layers, T) float64 each"""
        rows = self.rows.clamp(min=1)[:, None]
        return self.entropy / rows, self.sink / rows
