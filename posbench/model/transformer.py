"""A decoder-only pre-norm Transformer whose positional encoding plugs in at fixed hooks."""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from posbench.encodings import EncodingConfig, build_encoding
from posbench.encodings.temperature import Temperature
from posbench.model.attention import AttentionContext, CausalSelfAttention
from posbench.model.backends import Backend, ByBlocks
from posbench.model.config import Mlp, ModelConfig, Norm
from posbench.model.diagnostics import AttentionProbe
from posbench.model.planner import Settings, plan_attention, refusal


def make_norm(kind: Norm, dim: int) -> nn.Module:
    return nn.RMSNorm(dim) if kind == Norm.rmsnorm else nn.LayerNorm(dim)


def ff_width(cfg: ModelConfig) -> int:
    if cfg.d_ff is not None:
        return cfg.d_ff
    if cfg.mlp == Mlp.swiglu:  # 2/3 of 4·d keeps the parameter count of a GELU MLP (Shazeer 2020)
        return 64 * -(-(8 * cfg.d_model // 3) // 64)
    return 4 * cfg.d_model


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = ff_width(cfg)
        self.gated = cfg.mlp == Mlp.swiglu
        self.up = nn.Linear(cfg.d_model, 2 * hidden if self.gated else hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * value)
        return self.down(F.gelu(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.attn_norm = make_norm(cfg.norm, cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.kv_heads or cfg.n_heads, layer)
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model)
        self.mlp = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), ctx))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, encoding_cfg: EncodingConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.head_dim = cfg.d_model // cfg.n_heads
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.encoding = build_encoding(
            encoding_cfg, cfg.d_model, cfg.n_heads, self.head_dim, cfg.init_std, cfg.n_layers
        )
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.final_norm = make_norm(cfg.norm, cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.init_weights()

    def init_weights(self) -> None:
        """All initialisation: N(0, init_std) for matrices, residual outputs scaled by
        1/sqrt(2·layers) (GPT-2, Radford et al. 2019 §2.3), norms at identity."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm gains/biases keep their identity init
            scaled = name.endswith(("out_proj.weight", "down.weight"))
            nn.init.normal_(p, std=std / (2 * self.cfg.n_layers) ** 0.5 if scaled else std)
        for module in self.modules():
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        self.encoding.reset_parameters()
        for module in self.modules():
            if isinstance(module, Temperature):  # SSMax's learned scale
                module.reset_parameters()

    def num_parameters(self, non_embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.weight.numel() if non_embedding else total

    def attention_plan(
        self,
        seq_len: int,
        pos: Optional[torch.Tensor] = None,
        *,
        needs_grad: bool,
        autocast: bool = False,
        whole_window: bool = False,
    ) -> Backend:
        """The attention backend a forward of ``seq_len`` tokens takes (``model/planner.py``) with or
        without autograd and autocast; its ``name`` is what results record. ``pos`` defaults to 0..T-1;
        ``whole_window``: every layer sees the whole window (never one query block through all layers)."""
        param = self.embed.weight
        pos = torch.arange(seq_len, device=param.device) if pos is None else pos
        settings = Settings(
            self.cfg.attention.value,
            self.cfg.attention_block,
            param.device.type,
            needs_grad,
            autocast,
            param.dtype,
            self.encoding.label,
            whole_window,
        )
        return plan_attention(self.encoding.scores(), pos, self.cfg.n_heads, settings)

    def length_limit_reason(self, seq_len: int) -> Optional[str]:
        """Why this model cannot take ``seq_len`` tokens (no attention path can, or its encoding
        cannot), or None."""
        return refusal(
            self.encoding.scores(), seq_len, self.encoding.label
        ) or self.encoding.length_limit_reason(seq_len)

    def forward(
        self,
        tokens: torch.Tensor,
        pos: Optional[torch.Tensor] = None,
        probe: Optional[AttentionProbe] = None,
        *,
        hidden: bool = False,
        activation_checkpointing: bool = False,
    ) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V), or with ``hidden`` the final hidden states (B, T, D) after
        the last norm, for a loss that applies ``lm_head`` itself (``loss.py``). ``pos`` (T,) defaults to
        the encoding's positions (0..T-1, or sampled ones for randomized positions); a ``probe`` collects
        every layer's attention entropy and sink weight (``diagnostics.py``); ``activation_checkpointing``
        keeps only each block's input for the backward and recomputes the rest (``checkpointed_blocks``)."""
        T = tokens.shape[1]
        reason = self.length_limit_reason(T)
        if (
            reason is not None
        ):  # e.g. learned positions past their table, or sampled positions past their range
            raise ValueError(reason)
        if pos is None:
            pos = self.encoding.positions(T, tokens.device)
        needs_grad, autocast = torch.is_grad_enabled(), torch.is_autocast_enabled(tokens.device.type)
        plan = partial(self.attention_plan, T, pos, needs_grad=needs_grad, autocast=autocast)
        backend = plan(whole_window=probe is not None)  # the probe sees each layer's whole window
        if isinstance(backend, ByBlocks):
            return self.forward_by_blocks(tokens, backend, hidden)
        if probe is not None:
            probe.begin(self.encoding.scores(), pos, self.cfg.n_layers)
        x = self.encoding.embed_input(self.embed(tokens), pos)  # (B, T, D)
        if activation_checkpointing and needs_grad and probe is None:
            x = self.checkpointed_blocks(x, pos, plan)
        else:
            ctx = AttentionContext(self.encoding, pos, backend, probe)
            for block in self.blocks:
                x = block(x, ctx)
        x = self.final_norm(x)
        return x if hidden else self.lm_head(x)

    def checkpointed_blocks(
        self, x: torch.Tensor, pos: torch.Tensor, plan: Callable[[], Backend]
    ) -> torch.Tensor:
        """The blocks with activation checkpointing: each keeps only its input and recomputes its
        forward in the backward (dropout's RNG state restored). Each run of a block, the recomputation
        too, gets a fresh backend from ``plan``: a backend caches what its first call builds (SDPA's
        mask of a learned bias), and a cache built in one block's first run would be missing from the
        recomputation that its gradient needs."""

        def run(block: Block, x: torch.Tensor) -> torch.Tensor:
            return block(x, AttentionContext(self.encoding, pos, plan()))

        for block in self.blocks:
            x = checkpoint(run, block, x, use_reentrant=False)
        return x

    def forward_by_blocks(self, tokens: torch.Tensor, plan: ByBlocks, hidden: bool = False) -> torch.Tensor:
        """The forward one query block at a time, every layer keeping its keys and values so far:
        the same function as ``forward``, with each block's (H, rows, prefix) bias built once and
        shared by the layers. -> logits (B, T, V), or the final hidden states (B, T, D)"""
        B, T = tokens.shape
        H, Dh = self.cfg.n_heads, self.head_dim
        param = self.embed.weight
        cache = [(param.new_empty(B, H, T, Dh), param.new_empty(B, H, T, Dh)) for _ in self.blocks]
        out = param.new_empty(B, T, self.cfg.d_model if hidden else self.lm_head.out_features)
        for start, end in plan.spans():
            rows = plan.pos[start:end]
            x = self.encoding.embed_input(self.embed(tokens[:, start:end]), rows)  # (B, b, D)
            ctx = AttentionContext(self.encoding, rows, plan.for_block(cache, start, end, x.dtype))
            for block in self.blocks:
                x = block(x, ctx)
            x = self.final_norm(x)
            out[:, start:end] = x if hidden else self.lm_head(x)
        return out
