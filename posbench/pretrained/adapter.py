"""The evaluator's view of a pretrained model: ``model(tokens) -> logits``, the attention path's
name, the lengths it refuses (none: posbench's RoPE takes any length), as for posbench's own
``Transformer``. Attention diagnostics need posbench's attention, so they are off for these models."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import torch
from torch import nn


class PretrainedLM(nn.Module):
    def __init__(self, hf_model: Any):
        super().__init__()
        self.hf = hf_model
        self.cfg = SimpleNamespace(n_layers=hf_model.config.num_hidden_layers)
        self.backend = SimpleNamespace(name=f"hf-{hf_model.config._attn_implementation}")

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.lm_head

    def forward(
        self, tokens: torch.Tensor, pos: Optional[torch.Tensor] = None, probe=None, *, hidden: bool = False
    ) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V), or with ``hidden`` the final hidden states (B, T, D) that
        ``lm_head`` maps to them (for a loss built a chunk of tokens at a time); positions 0..T-1 (or
        ``pos``)."""
        if probe is not None:
            raise ValueError(
                "attention diagnostics read posbench's own attention: set eval.diagnostics_windows=0"
            )
        position_ids = None if pos is None else pos[None].expand(tokens.shape[0], -1)
        if hidden:  # the decoder without its head (Llama family: the head is one linear map)
            return self.hf.model(
                input_ids=tokens, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        return self.hf(input_ids=tokens, position_ids=position_ids, use_cache=False).logits

    def attention_plan(self, seq_len: int, pos=None, **settings) -> SimpleNamespace:
        return self.backend

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        return None
