"""The attention paths, each an object bound to one forward's positions with one call signature,
``backend(q, k, v, scale, layer) -> (B, H, T, Dh)`` (q, k, v (B, H, T, Dh), already rotated), and
a ``name`` that results record. Which path runs where is decided in ``planner.py`` alone.

- ``Sdpa``: ``F.scaled_dot_product_attention``; causal flag without a bias, else one float mask for
  the whole (T, T) square, built at the first layer's call and shared by the others; a learned bias
  on CPU trains through the flash kernel with its own bias gradient (``bias_grad.py``).
- ``Blockwise``: query blocks over their causal key prefix (``blocks.py``); a bias of the distance
  alone is one shared table that every block views.
- ``ByBlocks``: the window one query block at a time through all layers (the model's forward runs
  it); each block's bias is built once and every layer attends its cached keys (``CachedPrefix``).
- ``Linear``: a bias linear in distance through the flash kernel with no mask (``linear_bias.py``).
- ``Flex``: FlexAttention with the bias as an elementwise ``score_mod`` or a distance-table lookup.
- ``Explicit``: explicit fp32 scores with the encoding's score modifier (CoPE), whole or by blocks.
- ``RelativeBlockwise``: a term of the query and the distance (Transformer-XL) as a mask per query
  block read through the relative shift, into the flash kernel (``relative.py``).
- ``DecayedBlockwise``: a q/k decay (xPos) re-centred per query block; ``WindowCentred``: the decay
  centred on the window, then another path.
- ``KeyBiasBlockwise``: a bias per key from the layer input (FoX), query blocks each re-centred on
  their first query, the bias as extra q/k channels through the kernels (with another bias: a mask
  per block) (``blocks.key_bias_blockwise``); the eager reference takes it too.
- ``Remapped``: an inference-time remap (Self-Extend, ReRoPE): two rotations merged by distance,
  by query blocks (``remap.py``).
- ``StickBreakingBackend``: stick-breaking weights in place of the softmax (``stick_breaking.py``).
- ``PerLayer``: a per-layer schedule's backends, one per layer, chosen by the layer's index.
- ``Eager``: the plain softmax(QKᵀ·scale + bias)V reference that tests check every path against.
"""

from __future__ import annotations

from typing import Iterator, Optional, Protocol

import torch
import torch.nn.functional as F

from posbench.encodings.scores import BiasFn, Decay, Elementwise, RelativeTerm, Remap, ScoreMod
from posbench.model import bias_grad, blocks
from posbench.model.flex import distance_bias_table, flex_attend
from posbench.model.linear_bias import linear_bias_attention
from posbench.model.masks import block_causal_bias, causal_bias, full_mask
from posbench.model.relative import relative_term_attention
from posbench.model.remap import remapped_attention
from posbench.model.stick_breaking import stick_breaking_attention, whole_window_attention


class Backend(Protocol):
    name: str  # what results record

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, layer: int
    ) -> torch.Tensor: ...


class Sdpa:
    name = "sdpa"

    def __init__(self, pos: torch.Tensor, bias_fn: Optional[BiasFn] = None, shared_table: bool = False):
        self.pos, self.bias_fn, self.shared_table = pos, bias_fn, shared_table
        self.mask: Optional[torch.Tensor] = None  # (1, H, T, T), shared by the layers of one forward

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        if self.bias_fn is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        if self.mask is None:
            self.mask = full_mask(self.bias_fn, self.pos, torch.float32, self.shared_table)
        if bias_grad.applies(q, self.mask):  # CPU: the fused kernel, causal-skipping, with the bias gradient
            return bias_grad.flash_bias_attention(q, k, v, self.mask, scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask.to(q.dtype), scale=scale)


class Eager:
    name = "eager"

    def __init__(self, pos: torch.Tensor, bias_fn: Optional[BiasFn] = None):
        self.pos, self.bias_fn = pos, bias_fn

    def __call__(self, q, k, v, scale: float, layer: int, key_bias: Optional[torch.Tensor] = None):
        idx = torch.arange(q.shape[-2], device=q.device)
        bias = None if self.bias_fn is None else self.bias_fn(self.pos, self.pos)
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, T, T)
        scores = scores + causal_bias(bias, idx, idx, torch.float32)[None]
        if key_bias is not None:  # (B, H, T): the same for every query
            scores = scores + key_bias[:, :, None, :]
        return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


class Blockwise:
    name = "blockwise"

    def __init__(self, pos: torch.Tensor, bias_fn: BiasFn, block: int, shared_table: bool):
        self.pos, self.bias_fn, self.block, self.shared_table = pos, bias_fn, block, shared_table

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        run = blocks.toeplitz_blockwise if self.shared_table else blocks.blockwise
        return run(q, k, v, self.pos, self.bias_fn, scale, self.block)


class KeyBiasBlockwise:
    name = "blockwise"

    def __init__(self, pos: torch.Tensor, bias_fn: Optional[BiasFn], block: int, mask_free: bool):
        self.pos, self.bias_fn, self.block, self.mask_free = pos, bias_fn, block, mask_free

    def __call__(self, q, k, v, scale: float, layer: int, key_bias: Optional[torch.Tensor] = None):
        return blocks.key_bias_blockwise(
            q, k, v, self.pos, self.bias_fn, key_bias, scale, self.block, self.mask_free
        )


class Remapped:
    name = "remap"

    def __init__(self, pos: torch.Tensor, remap: Remap, block: int):
        self.pos, self.remap, self.block = pos, remap, block

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        return remapped_attention(q, k, v, self.pos, self.remap, scale, self.block)


class StickBreakingBackend:
    """Stick-breaking attention, by query blocks of ``block`` rows (the whole window: named eager)."""

    def __init__(self, block: int, whole: bool):
        self.block, self.whole, self.name = block, whole, "eager" if whole else "stick_breaking"

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        if self.whole:
            return whole_window_attention(q, k, v, scale)
        return stick_breaking_attention(q, k, v, scale, self.block)


class Linear:
    name = "linear"

    def __init__(self, pos: torch.Tensor, slopes: torch.Tensor, block: int):
        self.pos, self.slopes, self.block = pos, slopes, block

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        return linear_bias_attention(q, k, v, self.pos, self.slopes, scale, self.block)


class Flex:
    name = "flex"

    def __init__(
        self,
        pos: torch.Tensor,
        elementwise: Optional[Elementwise] = None,
        distance_fn: Optional[BiasFn] = None,
    ):
        self.pos, self.elementwise, self.distance_fn = pos, elementwise, distance_fn
        self.table: Optional[torch.Tensor] = None  # (H, D), shared by the layers of one forward

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        if self.distance_fn is not None and self.table is None:
            self.table = distance_bias_table(self.distance_fn, self.pos)
        return flex_attend(q, k, v, self.pos, self.elementwise, scale, self.table)


class Explicit:
    """Explicit scores for a score modifier; ``block`` None: the whole square at once (named eager)."""

    def __init__(
        self, pos: torch.Tensor, bias_fn: Optional[BiasFn], score_mod: ScoreMod, block: Optional[int]
    ):
        self.pos, self.bias_fn, self.score_mod, self.block = pos, bias_fn, score_mod, block
        self.name = "eager" if block is None else "blockwise"

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        block = q.shape[-2] if self.block is None else self.block
        return blocks.explicit(q, k, v, self.pos, self.bias_fn, scale, block, self.score_mod, layer)


class RelativeBlockwise:
    """A term of the query and the distance (Transformer-XL) by query blocks, its mask read through
    the relative shift (``relative.py``)."""

    name = "blockwise"

    def __init__(self, term: RelativeTerm, block: int):
        self.term, self.block = term, block

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        return relative_term_attention(q, k, v, self.term, scale, self.block, layer)


class DecayedBlockwise:
    name = "blockwise"

    def __init__(
        self, pos: torch.Tensor, decay: Decay, bias_fn: Optional[BiasFn], block: int, mask_free: bool
    ):
        self.pos, self.decay, self.bias_fn, self.block, self.mask_free = pos, decay, bias_fn, block, mask_free

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        return blocks.decayed_blockwise(
            q, k, v, self.pos, self.decay.factors, self.bias_fn, scale, self.block, self.mask_free
        )


class WindowCentred:
    """The decay's factors centred on the window (finite while it is within ``decay.window``), then
    ``inner``."""

    def __init__(self, pos: torch.Tensor, decay: Decay, inner: Backend):
        self.pos, self.decay, self.inner, self.name = pos, decay, inner, inner.name

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        centre = int(self.pos.min() + self.pos.max()) // 2
        q, k = blocks.scale_qk(q, k, self.decay.factors(self.pos, centre))
        return self.inner(q, k, v, scale, layer)


class ByBlocks:
    """Evaluation of a bias built afresh for every query block (it depends on more than the distance,
    as FIRE's does): the model runs the window one block at a time through all layers, so each
    block's bias is built once for every layer (``Transformer.forward_by_blocks``)."""

    name = "blockwise"
    MIN_ROWS = 64

    def __init__(self, pos: torch.Tensor, bias_fn: BiasFn, block: int, n_heads: int):
        self.pos, self.bias_fn, self.block, self.n_heads = pos, bias_fn, block, n_heads

    def spans(self) -> Iterator[tuple[int, int]]:
        """Blocks under the blockwise budget, but of at least MIN_ROWS rows (budget permitting up to
        64 rows of (H, rows, T) fp32 bias): every block runs through all layers, so at 128K the
        8 MB budget's 4-row blocks would make the window ~16,000 small steps."""
        T = self.pos.numel()
        budget = max(blocks.BLOCK_BIAS_BYTES, 4 * self.n_heads * T * self.MIN_ROWS)
        return blocks.query_blocks(T, self.block, self.n_heads, budget)

    def for_block(self, cache: list, start: int, end: int, dtype: torch.dtype) -> CachedPrefix:
        return CachedPrefix(cache, start, block_causal_bias(self.bias_fn, self.pos, start, end, dtype))


class CachedPrefix:
    """One query block of ``ByBlocks``: each layer stores the block's keys and values in its cache
    (``cache[layer]``: (B, H, T, Dh) each) and attends the prefix so far with the block's bias."""

    name = "blockwise"

    def __init__(self, cache: list, start: int, mask: torch.Tensor):
        self.cache, self.start, self.mask = cache, start, mask  # mask (1, H, b, end)

    def __call__(self, q, k, v, scale: float, layer: int) -> torch.Tensor:
        keys, values = self.cache[layer]
        end = self.start + q.shape[-2]
        keys[:, :, self.start : end], values[:, :, self.start : end] = k, v
        return F.scaled_dot_product_attention(
            q, keys[:, :, :end], values[:, :, :end], attn_mask=self.mask, scale=scale
        )


class PerLayer:
    """A per-layer schedule: layer i runs ``layers[i]``; named by the distinct paths, in layer order."""

    def __init__(self, layers: list):
        self.layers = layers
        self.name = "/".join(dict.fromkeys(backend.name for backend in layers))

    def __call__(self, q, k, v, scale: float, layer: int, **extra) -> torch.Tensor:
        return self.layers[layer](q, k, v, scale, layer, **extra)  # extra: a FoX member's key_bias
