"""A decoder-only pre-norm Transformer whose positional encoding plugs in at fixed hooks."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from posbench.config import Mlp, ModelConfig, Norm
from posbench.encodings import EncodingConfig, build_encoding
from posbench.model.attention import AttentionContext, CausalSelfAttention
from posbench.model.backends import block_causal_bias, choose_backend, consecutive, full_mask, query_blocks


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
        self.encoding = build_encoding(encoding_cfg, cfg.d_model, cfg.n_heads, self.head_dim, cfg.init_std, cfg.n_layers)
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

    def num_parameters(self, non_embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.weight.numel() if non_embedding else total

    def backend_for(self, seq_len: int) -> str:
        """The attention path a forward of ``seq_len`` tokens takes now (device, autograd, autocast)."""
        enc = self.encoding
        device = self.embed.weight.device
        linear_ok = (enc.linear_slopes() is not None and device.type == "cpu" and not torch.is_grad_enabled()
                     and not torch.is_autocast_enabled("cpu"))
        backend = choose_backend(self.cfg.attention.value, enc.has_bias, self.cfg.n_heads, seq_len, enc.needs_scores, linear_ok)
        if enc.has_decay and seq_len > enc.decay_window and backend not in ("blockwise", "linear"):
            if self.cfg.attention.value != "auto":  # (with explicit scores, length_limit_reason refuses first)
                raise ValueError(f"encoding {enc.label!r} at {seq_len} positions needs its decay re-centred per query "
                                 f"block (past {enc.decay_window} its window-centred factors overflow fp32): use "
                                 "model.attention=auto or blockwise")
            backend = "blockwise"
        if backend == "flex" and enc.has_bias and not (enc.has_flex_bias or enc.distance_only):
            raise ValueError(f"encoding {enc.label!r} has no FlexAttention score_mod (its bias depends on more than "
                             "the distance); use model.attention=auto")
        return backend

    def forward(self, tokens: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V); ``pos`` (T,) defaults to the encoding's positions
        (0..T-1, or sampled ones for randomized positions)."""
        T = tokens.shape[1]
        reason = self.encoding.length_limit_reason(T)
        if reason is not None:  # e.g. learned positions past their table, or sampled positions past their range
            raise ValueError(reason)
        if pos is None:
            pos = self.encoding.positions(T, tokens.device)
        backend = self.backend_for(T)
        self.last_backend = backend  # what results record
        if backend == "blockwise" and self.by_blocks(pos):
            return self.forward_by_blocks(tokens, pos)
        x = self.encoding.embed_input(self.embed(tokens), pos)  # (B, T, D)
        ctx = AttentionContext(self.encoding, pos, backend, self.cfg.attention_block)
        if ctx.backend == "sdpa" and self.encoding.has_bias:
            ctx.mask = full_mask(self.encoding.score_bias, pos, x.dtype, self.encoding.distance_only)  # shared by layers
        for block in self.blocks:
            x = block(x, ctx)
        return self.lm_head(self.final_norm(x))

    def by_blocks(self, pos: torch.Tensor) -> bool:
        """Whether a blockwise forward runs one query block at a time through all layers: for a bias
        that must be built afresh for every block (it depends on more than the distance, as FIRE's
        does), so each block's bias is built once for every layer; evaluation only."""
        enc = self.encoding
        table = enc.distance_only and consecutive(pos)  # the shared distance table is cheaper still
        return enc.has_bias and not table and enc.position_local and not torch.is_grad_enabled()

    def forward_by_blocks(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The forward one query block at a time, every layer keeping its keys and values so far:
        the same function as ``forward``, with each block's (H, rows, prefix) bias built once and
        shared by the layers. Blocks follow ``query_blocks``. -> logits (B, T, V)"""
        B, T = tokens.shape
        H, Dh = self.cfg.n_heads, self.head_dim
        param = self.embed.weight
        cache = [(param.new_empty(B, H, T, Dh), param.new_empty(B, H, T, Dh)) for _ in self.blocks]
        logits = param.new_empty(B, T, self.lm_head.out_features)
        for start, end in query_blocks(T, self.cfg.attention_block, H):
            rows = pos[start:end]
            x = self.encoding.embed_input(self.embed(tokens[:, start:end]), rows)  # (B, b, D)
            mask = block_causal_bias(self.encoding.score_bias, pos, start, end, x.dtype)
            ctx = AttentionContext(self.encoding, rows, "blockwise", self.cfg.attention_block, mask, cache, start, T)
            for block in self.blocks:
                x = block(x, ctx)
            logits[:, start:end] = self.lm_head(self.final_norm(x))
        return logits
