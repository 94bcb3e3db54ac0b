"""A Llama-family model's rotary embedding replaced by posbench's: the same cos/sin layout as
transformers' ``LlamaRotaryEmbedding`` (angles repeated over both halves, times the attention
factor), the frequencies from ``rope_scaling.rope_frequencies`` for the chosen kind, computed
afresh for every call from its positions (a dynamic kind reads the call's length).

The model's own scaling (``config.rope_parameters``) maps to posbench's kinds: default -> none,
linear, dynamic -> dynamic_ntk, yarn, llama3, longrope; ``encoding/scaling=KIND`` replaces it,
taking the factor and the original length from the model's config unless they are given.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from posbench.encodings.rope_scaling import SCALINGS, ScalingConfig

HF_KINDS = {
    "default": "none",
    "linear": "linear",
    "dynamic": "dynamic_ntk",
    "yarn": "yarn",
    "llama3": "llama3",
    "longrope": "longrope",
}
# posbench's names of HF's per-kind parameters (the rest are the same names)
HF_PARAMS = {"original_max_position_embeddings": "original_max_position"}


def rope_parameters(config: Any) -> dict:
    """The model's RoPE parameters (transformers >= 5 ``rope_parameters``, older ``rope_scaling``)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def kind_fields(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(SCALINGS.schema(kind))}  # an unknown kind: one line


def model_scaling(config: Any) -> ScalingConfig:
    """The model's own RoPE scaling as posbench's config of the matching kind."""
    params = rope_parameters(config)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in HF_KINDS:
        raise ValueError(
            f"the model's rope_type {rope_type!r} has no posbench kind; supported: {', '.join(HF_KINDS)}"
        )
    kind = HF_KINDS[rope_type]
    unsupported = sorted(k for k in ("mscale", "mscale_all_dim") if params.get(k))
    if unsupported:
        raise ValueError(
            f"the model's {rope_type} scaling sets {', '.join(unsupported)}; posbench's {kind} lacks it"
        )
    fields = kind_fields(kind)
    own = {HF_PARAMS.get(key, key): value for key, value in params.items()}
    own = {key: value for key, value in own.items() if key in fields and value is not None}
    own.setdefault("original_max_position", config.max_position_embeddings)
    if kind in ("longrope", "yarn") and "factor" not in own:  # transformers: max / original
        own["factor"] = config.max_position_embeddings / own["original_max_position"]
    return SCALINGS.coerce({**own, "kind": kind})


def chosen_scaling(config: Any, requested: dict | None, given: frozenset = frozenset()) -> ScalingConfig:
    """``requested`` (an ``encoding.scaling`` mapping, its kind's YAML defaults included) over the
    model's own scaling: the model's original length, and its factor when it has one, stand for
    every key the command line did not set (``given``)."""
    own = model_scaling(config)
    if not requested:
        return own
    fields = kind_fields(requested.get("kind", own.kind))
    lent = ("original_max_position",) if own.kind == "none" else ("original_max_position", "factor")
    inherited = {key: getattr(own, key) for key in lent if key in fields and key not in given}
    return SCALINGS.coerce({**requested, **inherited})


class PosbenchRotary(nn.Module):
    """Drop-in for a Llama-family model's ``rotary_emb``: forward(x, position_ids) -> (cos, sin),
    each (B, T, head_dim) in x's dtype."""

    def __init__(self, head_dim: int, base: float, scaling: ScalingConfig):
        super().__init__()
        self.head_dim, self.base, self.scaling = head_dim, base, scaling

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq_len = int(position_ids.max()) + 1  # the window's length, as posbench's Rope reads it
        inv_freq, attention_factor = self.scaling.frequencies(self.head_dim, self.base, seq_len)
        angles = position_ids.to(torch.float64)[..., None] * inv_freq.to(x.device)  # (B, T, Dh/2)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = attention_factor * angles.cos(), attention_factor * angles.sin()
        return cos.to(x.dtype), sin.to(x.dtype)


def replace_rotary(model: nn.Module, scaling: ScalingConfig) -> PosbenchRotary:
    """Put posbench's rotary embedding into a Llama-family model (``model.model.rotary_emb``)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rotary = PosbenchRotary(head_dim, float(rope_parameters(config)["rope_theta"]), scaling)
    model.model.rotary_emb = rotary
    return rotary
