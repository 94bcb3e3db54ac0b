"""Training throughput per encoding: tokens/s and model FLOP utilisation against this machine's
matmul peak, measured in the same run (fp32, and bf16 where the CPU or GPU has native bf16).

Usage: python scripts/bench_train.py [--encodings nope rope alibi] [--rounds 6] [--batch 4] [--seq-len 2048]
Encodings take turns, one step each per round, and each reports its median step; bf16 rows also
print their speed-up over fp32 (x fp32). The last row, plain-gpt, is a GPT of the same size written
with PyTorch alone: what this machine lets a small model reach, for scale.
FLOPs per token follow Kaplan et al. 2020 / the PaLM appendix: 6·N + 6·L·T·d, with N the
parameters used in matmuls (blocks and the output head) and the attention term halved for
causality.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_variants import encoding_config
from bench_variants import names as encoding_names
from torch import nn

from posbench.common.runtime import autocast, cpu_has_native_bf16, flush_denormals
from posbench.config import ModelConfig, Precision
from posbench.model.transformer import Transformer


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a square matmul."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def flops_per_token(model: nn.Module, n_layers: int, d_model: int, seq_len: int) -> float:
    """6·N + 6·L·T·d, N counting the weights of every matmul (nn.Linear) outside the encoding."""
    matmul_params = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not n.startswith("encoding")
    )
    return 6 * matmul_params + 6 * n_layers * seq_len * d_model


class PlainGpt(nn.Module):
    """The reference row: a GPT written with nothing but PyTorch (learned absolute positions,
    fused qkv, causal SDPA, pre-norm GELU blocks, tied head) at model=tiny's sizes, to show what
    this machine lets any small PyTorch model reach."""

    def __init__(self, cfg: ModelConfig, vocab: int, seq_len: int):
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.n_heads
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                dict(
                    norm1=nn.LayerNorm(d),
                    qkv=nn.Linear(d, 3 * d, bias=False),
                    out=nn.Linear(d, d, bias=False),
                    norm2=nn.LayerNorm(d),
                    up=nn.Linear(d, 4 * d, bias=False),
                    down=nn.Linear(4 * d, d, bias=False),
                )
            )
            for _ in range(cfg.n_layers)
        )
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        x = self.embed(tokens) + self.pos(torch.arange(T, device=tokens.device))
        for layer in self.layers:
            q, k, v = layer["qkv"](layer["norm1"](x)).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + layer["out"](y.transpose(1, 2).reshape(B, T, -1))
            x = x + layer["down"](F.gelu(layer["up"](layer["norm2"](x))))
        return self.head(self.norm(x))


PLAIN = "plain-gpt"


class Trainee:
    """One model (an encoding's, or the plain GPT), its optimiser and batch, stepped on demand."""

    def __init__(self, name: str, precision: Precision, device: torch.device, batch: int, seq_len: int):
        torch.manual_seed(0)
        self.name, self.precision, self.device = name, precision, device
        cfg = ModelConfig(name="tiny")
        if name == PLAIN:
            self.model = PlainGpt(cfg, 256, seq_len).to(device)
        else:
            self.model = Transformer(cfg, encoding_config(name, seq_len), 256).to(device)
        self.flops_per_token = flops_per_token(self.model, cfg.n_layers, cfg.d_model, seq_len)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.tokens = torch.randint(0, 256, (batch, seq_len + 1), device=device)
        self.seconds: list[float] = []

    def step(self) -> None:
        start = time.perf_counter()
        with autocast(self.device, self.precision):
            logits = self.model(self.tokens[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), self.tokens[:, 1:].flatten()).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - start)

    def tokens_per_second(self) -> float:
        return self.tokens[:, :-1].numel() / statistics.median(self.seconds[1:])  # the first step warms up


def measure(
    names: list[str], precision: Precision, device: torch.device, batch: int, seq_len: int, rounds: int
) -> tuple[list[Trainee], float]:
    """Steps every encoding once per round, round after round, with a matmul-peak sample per
    round: a machine that speeds up or slows down during the run moves every figure alike.
    -> the trainees (median step times), the peak (the best round's GFLOP/s)."""
    trainees = [Trainee(name, precision, device, batch, seq_len) for name in names]
    dtype = torch.float32 if precision == Precision.fp32 else torch.bfloat16
    peaks = []
    for _ in range(rounds + 1):
        peaks.append(matmul_peak(dtype, device))
        for trainee in trainees:
            trainee.step()
    return trainees, max(peaks)


def main() -> None:
    flush_denormals()  # as every posbench job does first (posbench/cli.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encodings", nargs="+", default=encoding_names(training=True))
    parser.add_argument(
        "--rounds", type=int, default=6, help="timed steps per encoding (median), after one warm-up"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = [Precision.fp32]
    if device.type == "cuda" or cpu_has_native_bf16():
        precisions.append(Precision.bf16)
    else:
        print(
            "bf16: skipped, this CPU has no native bf16 (avx512_bf16/amx_bf16); "
            "its bf16 matmuls are ~100x slower"
        )
    names = ["nope"] + [e for e in args.encodings if e != "nope"] + [PLAIN]
    fp32_rates = {}
    for precision in precisions:
        trainees, peak = measure(names, precision, device, args.batch, args.seq_len, args.rounds)
        print(
            f"\n{precision.value}: matmul peak {peak:,.0f} GFLOP/s on {device}; model=tiny, batch "
            f"{args.batch} x "
            f"{args.seq_len}; median of {args.rounds} steps, encodings interleaved"
        )
        print(
            f"{'encoding':>14} {'tokens/s':>10} {'x nope':>7} {'MFU':>6} {'spread':>7}"
            + ("  x fp32" if fp32_rates else "")
        )
        base = trainees[0].tokens_per_second()
        for trainee in trainees:
            rate = trainee.tokens_per_second()
            mfu = rate * trainee.flops_per_token / (peak * 1e9)
            timed = trainee.seconds[1:]
            spread = (max(timed) - min(timed)) / statistics.median(
                timed
            )  # how noisy this encoding's steps were
            line = f"{trainee.name:>14} {rate:>10,.0f} {rate / base:>7.2f} {mfu:>6.1%} {spread:>7.0%}"
            if precision == Precision.fp32:
                fp32_rates[trainee.name] = rate
            else:
                line += f"  {rate / fp32_rates[trainee.name]:>6.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
