"""What an encoding does to the attention scores: one value, ``Scores``, that the attention
planner (``posbench/model/planner.py``) reads to choose a path.

An encoding's ``scores()`` returns it; a hybrid adds its members' together (``combine``).
The parts:

- ``bias``: nothing, or one of three kinds of additive bias, from the most to the least
  structured; each kind unlocks the paths its structure allows:
  - ``LinearBias``: -m_h·(i - j) (ALiBi): the mask-free flash path (``model/linear_bias.py``);
  - ``DistanceBias``: a function of i - j alone (T5, KERPLE, Sandwich): one table per distance
    shared by every query block, and a table lookup in FlexAttention;
  - ``PairBias``: a function of each (query, key) pair (FIRE, whose normaliser reads i): built
    per query block.
  Each carries ``fn(q_pos, k_pos) -> (H, Tq, Tk)`` and, where it has one, ``elementwise``:
  the same bias for one (head, query, key) in ops FlexAttention can compile.
- ``decay``: per-channel factors that multiply q and divide k (xPos), with the longest window
  whose factors, centred on it, stay finite in fp32.
- ``score_mod``: logits that depend on the scores themselves (CoPE), so they must be explicit; a
  ``RelativeTerm`` (Transformer-XL: a term of the query and the distance) has its own blockwise path.
- ``position_local``: every hook treats each position on its own (no rotation that reads the
  whole window, no explicit scores), so a window may run one query block at a time through
  all layers.
- ``key_bias``: the logits add a bias per key computed from the layer's input by the encoding's
  ``key_bias(x, layer)`` (FoX's cumulative forget gates): data-dependent, so it runs on the paths
  that take it per call (``backends.KeyBiasBlockwise``, ``Eager``).
- ``remap``: an inference-time remap of a rotary encoding (Self-Extend, ReRoPE): exact rotations
  for keys within a window, remapped ones beyond, the two maps merged (``model/remap.py``); the
  encoding then leaves q and k unrotated and the path rotates them.
- ``stick_breaking``: the attention weights are stick-breaking's, not a softmax's
  (``model/stick_breaking.py``).
- ``layers``: a per-layer schedule's own ``Scores`` for each layer (``schedule.py``); the planner
  plans each layer and the attention dispatches on the layer's index.

A local attention window (sliding or chunked, ``local_window``) is a bias: 0 inside, -inf outside.

A new kind of encoding is a new value here (or a new field), read by the planner: never a flag
on the encoding class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

BiasFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (q_pos (Tq,), k_pos (Tk,)) -> (H, Tq, Tk)
# (score, head, q_pos, k_pos) -> score plus the bias, elementwise (FlexAttention's score_mod)
Elementwise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
DecayFn = Callable[[torch.Tensor, int], torch.Tensor]  # (pos (T,), centre) -> (T, Dh) float64 q factors
# (scores (B, H, Tq, Tk), q already scaled (B, H, Tq, Dh), layer) -> scores
ScoreMod = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class LinearBias:
    """-slopes_h·(i - j) for query position i and key position j."""

    slopes: torch.Tensor  # (H,)

    def fn(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        distance = (q_pos[:, None] - k_pos[None, :]).float()  # (Tq, Tk)
        return -self.slopes[:, None, None] * distance[None]

    def elementwise(self, score, head, q_pos, k_pos):
        return score - self.slopes[head] * (q_pos - k_pos).float()


@dataclass(frozen=True)
class DistanceBias:
    """A bias of q_pos - k_pos alone."""

    fn: BiasFn
    elementwise: Optional[Elementwise] = None


@dataclass(frozen=True)
class PairBias:
    """A bias of each (query, key) pair."""

    fn: BiasFn
    elementwise: Optional[Elementwise] = None


Bias = Union[LinearBias, DistanceBias, PairBias]
DISTANCE_KINDS = (LinearBias, DistanceBias)


@dataclass(frozen=True)
class Decay:
    """Factors s (T, Dh) with (q_n·s_n)·(k_m/s_m) carrying a factor of n - m alone, s = 1 at ``centre``."""

    factors: DecayFn
    window: int  # the longest window whose factors, centred on it, stay finite in fp32


@dataclass(frozen=True)
class Remap:
    """Rotations for pairs nearer than ``window`` at their own positions, beyond it at ``far``'s."""

    rotate: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x (B, H, T, Dh), pos, window length)
    far: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # q_pos, k_pos -> float64
    window: int


@dataclass(frozen=True)
class RelativeTerm:
    """A score modifier that adds (q_i + c_h)·r_{h, i−j}: a term of the query and the distance alone
    (Transformer-XL's (b) + (d)). ``queries(q, layer)``: q + c from q scaled like the logits;
    ``table(distances, layer)``: r (H, D, Dh) at the given distances (D,); calling it adds the term
    to explicit scores pair by pair (the eager path's score_mod). Its own path: ``model/relative.py``."""

    fn: ScoreMod
    queries: Callable[[torch.Tensor, int], torch.Tensor]
    table: Callable[[torch.Tensor, int], torch.Tensor]

    def __call__(self, scores: torch.Tensor, q: torch.Tensor, layer: int) -> torch.Tensor:
        return self.fn(scores, q, layer)


@dataclass(frozen=True)
class Scores:
    bias: Optional[Bias] = None
    decay: Optional[Decay] = None
    score_mod: Optional[ScoreMod] = None
    position_local: bool = True
    key_bias: bool = False  # a bias per key from the layer input (encoding.key_bias): FoX
    remap: Optional[Remap] = None  # Self-Extend, ReRoPE: two rotations merged by distance
    stick_breaking: bool = False  # stick-breaking weights in place of the softmax (Tan et al. 2025)
    layers: Optional[tuple[Scores, ...]] = None  # a per-layer schedule: layer i's scores

    @property
    def distance_only(self) -> bool:
        """The bias depends on q_pos - k_pos alone (shared tables apply)."""
        return isinstance(self.bias, DISTANCE_KINDS)


def add_biases(first: Optional[Bias], second: Optional[Bias]) -> Optional[Bias]:
    """The sum of two biases, of the least structured of their kinds (a sum of a linear bias and
    another is a bias of the distance, no longer linear); elementwise when both parts are."""
    if first is None or second is None:
        return first if second is None else second
    kind = DistanceBias if all(isinstance(b, DISTANCE_KINDS) for b in (first, second)) else PairBias

    def fn(q_pos, k_pos):
        return first.fn(q_pos, k_pos) + second.fn(q_pos, k_pos)

    elementwise = None
    if first.elementwise is not None and second.elementwise is not None:

        def elementwise(score, head, q_pos, k_pos):
            return second.elementwise(first.elementwise(score, head, q_pos, k_pos), head, q_pos, k_pos)

    return kind(fn, elementwise)


def chain_score_mods(first: Optional[ScoreMod], second: Optional[ScoreMod]) -> Optional[ScoreMod]:
    if first is None or second is None:
        return first if second is None else second
    return lambda scores, q, layer: second(first(scores, q, layer), q, layer)


def combine(parts: list[Scores]) -> Scores:
    """Several encodings' effects on the scores, in order: biases add, score modifiers chain, one
    decay at most (a hybrid holds one rotary member), one key bias at most, position-local only
    when every part is."""
    decays = [part.decay for part in parts if part.decay is not None]
    if len(decays) > 1:
        raise ValueError("two encodings decay q and k: keep one rotary member")
    if sum(part.key_bias for part in parts) > 1:
        raise ValueError("two encodings add a bias per key from the input: keep one")
    bias, score_mod = None, None
    for part in parts:
        bias, score_mod = add_biases(bias, part.bias), chain_score_mods(score_mod, part.score_mod)
    return Scores(
        bias,
        decays[0] if decays else None,
        score_mod,
        all(part.position_local for part in parts),
        any(part.key_bias for part in parts),
        next((part.remap for part in parts if part.remap is not None), None),  # one rotary member
        any(part.stick_breaking for part in parts),
    )


def local_window(kind: str, size: int, n_heads: int) -> Bias:
    """A local attention window as a bias, 0 where a query may attend a key and -inf elsewhere:
    ``sliding``: the last ``size`` positions (distance < size; Beltagy et al. 2020, Longformer §3.1);
    ``chunked``: keys in the query's own chunk of ``size`` positions (floor(i/size) = floor(j/size);
    Llama 4's chunked attention, transformers' ``chunked_overlay``)."""
    if kind == "sliding":

        def inside(q_pos, k_pos):
            return q_pos - k_pos < size

        def fn(q_pos, k_pos):
            return outside_to_inf(inside(q_pos[:, None], k_pos[None, :])).expand(n_heads, -1, -1)

        return DistanceBias(
            fn, lambda score, head, q_pos, k_pos: torch.where(inside(q_pos, k_pos), score, -float("inf"))
        )

    def same_chunk(q_pos, k_pos):
        return torch.div(q_pos, size, rounding_mode="floor") == torch.div(k_pos, size, rounding_mode="floor")

    def chunk_fn(q_pos, k_pos):
        return outside_to_inf(same_chunk(q_pos[:, None], k_pos[None, :])).expand(n_heads, -1, -1)

    return PairBias(
        chunk_fn,
        lambda score, head, q_pos, k_pos: torch.where(same_chunk(q_pos, k_pos), score, -float("inf")),
    )


def outside_to_inf(inside: torch.Tensor) -> torch.Tensor:
    """0 where ``inside``, -inf elsewhere, fp32. (Tq, Tk) -> (1, Tq, Tk)"""
    return torch.zeros(inside.shape, device=inside.device).masked_fill(~inside, -float("inf"))[None]
