"""The attention planner: the one place that decides which attention path runs where.

``plan_attention(scores, pos, n_heads, settings)`` turns an encoding's ``Scores`` (what it does to
the logits), the forward's positions and ``Settings`` (the requested path, the device, dtype,
whether gradients or autocast are on) into a backend from ``backends.py``, whose ``name`` results
record. ``refusal`` says which lengths no path can take. The rules:

- explicit scores (a score modifier, CoPE) run whole (``eager``) while the (H, T, T) square is
  small and by query blocks above that, whatever path was requested, since no kernel takes them;
  a term of the query and the distance alone (Transformer-XL's ``RelativeTerm``) runs by query
  blocks at every length (``RelativeBlockwise``), whole only on request (``eager``);
- ``auto``: causal SDPA without a bias; with one, the full mask while it is at most
  MASK_BYTES_LIMIT, above that query blocks, or the mask-free ``linear`` path for a linear bias
  where the flash kernel may run without a mask (``mask_free_ok``: CPU, fp32, no autograd: its
  log-sum-exp output has no gradient);
- a requested path runs where it can: ``linear`` needs a linear bias (else blocks), ``blockwise``
  and ``linear`` need a bias (else causal SDPA, already memory-linear), ``flex`` needs a bias with
  an elementwise form or of the distance alone, and a backward on CPU, which it does not have;
- a q/k decay (xPos) is re-centred per query block on block paths and on any path ``auto`` takes
  past the window its centred factors hold, with blocks at most half that window; elsewhere it is
  centred on the window, and a requested whole-window path past it is refused;
- a bias of the distance alone over consecutive positions is laid out from one table per distance
  (the full mask, or every query block's view of it);
- evaluation of any other bias with position-local hooks runs by query blocks through all layers;
- a bias per key from the layer input (FoX) runs by query blocks, each re-centred on its first
  query (``KeyBiasBlockwise``), or on the eager reference when asked for; no other path takes it;
- an inference-time remap (Self-Extend, ReRoPE) runs on its own path (``Remapped``), whatever was
  requested; it is refused with gradients (a remap is for evaluating a trained model) and with a
  bias, a decay, a score modifier or a key bias;
- stick-breaking attention runs on its own path (``StickBreakingBackend``), whole on request
  (``eager``), else by query blocks; it takes no bias, decay, score modifier, key bias or remap;
- a per-layer schedule (``Scores.layers``) plans each layer's scores by these rules, except that no
  layer runs the window by query blocks through all layers (the others see it whole); the attention
  then dispatches on the layer's index (``backends.PerLayer``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from posbench.encodings.scores import DistanceBias, LinearBias, PairBias, RelativeTerm, Scores
from posbench.model import backends
from posbench.model.backends import Backend
from posbench.model.config import Attention
from posbench.model.masks import consecutive

BACKENDS = tuple(kind.value for kind in Attention if kind != Attention.auto)
MASK_BYTES_LIMIT = 256 * 2**20  # a full (H, T, T) fp32 mask above this goes by blocks


@dataclass(frozen=True)
class Settings:
    requested: str = "auto"  # model.attention
    block: int = 1024  # model.attention_block: query rows per block
    device_type: str = "cpu"
    needs_grad: bool = False
    autocast: bool = False
    dtype: torch.dtype = torch.float32  # the model's parameters
    label: str = "this encoding"  # named in refusals
    whole_window: bool = False  # every layer sees the whole window (a per-layer schedule's layers)


def refusal(scores: Scores, seq_len: int, label: str = "this encoding") -> Optional[str]:
    """Why no path can take ``seq_len`` positions of these scores, or None."""
    if scores.layers is not None:
        return next(filter(None, (refusal(layer, seq_len, label) for layer in scores.layers)), None)
    others = (scores.bias, scores.decay, scores.score_mod, scores.remap)
    if scores.stick_breaking and (scores.key_bias or any(part is not None for part in others)):
        return f"{label}: stick-breaking attention takes no positional bias, decay, score modifier or remap"
    if scores.remap is not None and (
        scores.bias is not None or scores.decay is not None or scores.score_mod is not None or scores.key_bias
    ):
        return (
            f"{label}: an inference-time remap takes a rotary encoding alone (no bias, decay, score modifier)"
        )
    if scores.key_bias and (scores.decay is not None or scores.score_mod is not None):
        return f"{label}: a bias per key (FoX) with a q/k decay or a score modifier has no attention path"
    if scores.decay is not None and scores.score_mod is not None and seq_len > scores.decay.window:
        return (
            f"{label} past {scores.decay.window} positions: the decay must be re-centred per query block, "
            "which explicit scores do not allow; evaluate shorter windows"
        )
    return None


def plan_attention(scores: Scores, pos: torch.Tensor, n_heads: int, settings: Settings) -> Backend:
    """The backend for one forward over positions ``pos`` (T,)."""
    reason = refusal(scores, pos.numel(), settings.label)
    if reason is not None:
        raise ValueError(reason)
    if scores.layers is not None:
        return plan_layers(scores.layers, pos, n_heads, replace(settings, whole_window=True))
    if scores.stick_breaking:
        whole = settings.requested == "eager"
        return backends.StickBreakingBackend(pos.numel() if whole else settings.block, whole)
    if scores.remap is not None:
        if settings.needs_grad:
            raise ValueError(
                f"{settings.label} is an inference-time remap of a trained model: train without "
                "encoding/remap and evaluate with it (posbench eval checkpoint=... encoding/remap=KIND)"
            )
        return backends.Remapped(pos, scores.remap, settings.block)
    if scores.key_bias:
        bias_fn = None if scores.bias is None else scores.bias.fn
        if settings.requested == "eager":
            return backends.Eager(pos, bias_fn)
        return backends.KeyBiasBlockwise(pos, bias_fn, settings.block, mask_free_ok(settings))
    path = choose_path(scores, pos.numel(), n_heads, settings)
    check_path(scores, pos.numel(), settings, path)
    if scores.decay is None:
        return backend_for(scores, pos, n_heads, settings, path, settings.block)
    block = max(1, min(settings.block, scores.decay.window // 2))  # factors at most e^40 apart in a block
    if path in ("blockwise", "linear") and scores.score_mod is None:
        bias_fn = None if scores.bias is None else scores.bias.fn
        return backends.DecayedBlockwise(pos, scores.decay, bias_fn, block, mask_free_ok(settings))
    return backends.WindowCentred(pos, scores.decay, backend_for(scores, pos, n_heads, settings, path, block))


def plan_layers(layers: tuple[Scores, ...], pos: torch.Tensor, n_heads: int, settings: Settings) -> Backend:
    """One backend per layer, planned once for the layers that share their scores."""
    planned: dict[int, Backend] = {}
    for scores in layers:
        if id(scores) not in planned:
            planned[id(scores)] = plan_attention(scores, pos, n_heads, settings)
    return backends.PerLayer([planned[id(scores)] for scores in layers])


def choose_path(scores: Scores, seq_len: int, n_heads: int, settings: Settings) -> str:
    """The path's name, from the rules above."""
    requested, bias = settings.requested, scores.bias
    fits = n_heads * seq_len * seq_len * 4 <= MASK_BYTES_LIMIT
    if scores.score_mod is not None:
        own_path = isinstance(scores.score_mod, RelativeTerm) and bias is None  # at every length
        whole = requested == "eager" or (requested != "blockwise" and fits and not own_path)
        return "eager" if whole else "blockwise"
    linear_ok = isinstance(bias, LinearBias) and mask_free_ok(settings)
    if requested == "auto":
        path = "sdpa" if bias is None or fits else "linear" if linear_ok else "blockwise"
    else:
        path = "blockwise" if requested == "linear" and not linear_ok else requested
    if scores.decay is not None:
        recentre = (
            seq_len > scores.decay.window and requested == "auto" and path not in ("blockwise", "linear")
        )
        return "blockwise" if recentre else path
    return (
        "sdpa" if path in ("blockwise", "linear") and bias is None else path
    )  # the causal flag is memory-linear


def check_path(scores: Scores, seq_len: int, settings: Settings, path: str) -> None:
    """Refuse a requested path that cannot run these scores, with the fix."""
    if settings.requested not in ("auto", *BACKENDS):
        raise ValueError(
            f"model.attention={settings.requested!r} is not available; choose auto or one of "
            f"{', '.join(BACKENDS)}"
        )
    decay = scores.decay
    if (
        decay is not None
        and seq_len > decay.window
        and path not in ("blockwise", "linear")
        and scores.score_mod is None
    ):
        raise ValueError(
            f"encoding {settings.label!r} at {seq_len} positions needs its decay re-centred per query "
            f"block (past {decay.window} its window-centred factors overflow fp32): use "
            "model.attention=auto or blockwise"
        )
    if path != "flex":
        return
    if isinstance(scores.bias, PairBias) and scores.bias.elementwise is None:
        raise ValueError(
            f"encoding {settings.label!r} has no FlexAttention score_mod (its bias depends on more than "
            "the distance); use model.attention=auto"
        )
    if settings.device_type == "cpu" and settings.needs_grad:
        raise ValueError(
            "model.attention=flex on CPU is forward-only (FlexAttention has no CPU backward); "
            "use model.attention=auto for training"
        )


def mask_free_ok(settings: Settings) -> bool:
    """Whether the flash kernel may run with no mask, partial softmaxes merged by their log-sum-exps
    (``linear_bias.py``): on CPU, in fp32, without autograd."""
    fp32 = settings.dtype == torch.float32 and not settings.autocast
    return settings.device_type == "cpu" and fp32 and not settings.needs_grad


def backend_for(
    scores: Scores, pos: torch.Tensor, n_heads: int, settings: Settings, path: str, block: int
) -> Backend:
    """The backend of ``path`` for these scores, a decay aside."""
    bias = scores.bias
    bias_fn = None if bias is None else bias.fn
    shared_table = scores.distance_only and consecutive(pos)
    if isinstance(scores.score_mod, RelativeTerm) and bias is None and path == "blockwise":
        return backends.RelativeBlockwise(scores.score_mod, block)
    if scores.score_mod is not None:
        return backends.Explicit(pos, bias_fn, scores.score_mod, block if path == "blockwise" else None)
    if path == "eager":
        return backends.Eager(pos, bias_fn)
    if path == "linear":
        return backends.Linear(pos, bias.slopes, block)
    if path == "flex":
        elementwise = getattr(bias, "elementwise", None)
        distance_fn = bias.fn if elementwise is None and isinstance(bias, DistanceBias) else None
        return backends.Flex(pos, elementwise, distance_fn)
    if path == "blockwise" and bias is not None:
        if (
            not shared_table
            and scores.position_local
            and not settings.needs_grad
            and not settings.whole_window
        ):
            return backends.ByBlocks(pos, bias_fn, block, n_heads)
        return backends.Blockwise(pos, bias_fn, block, shared_table)
    return backends.Sdpa(pos, bias_fn, shared_table)
