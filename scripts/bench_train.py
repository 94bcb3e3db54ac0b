"""Training throughput per encoding: tokens/s and model FLOP utilisation against this machine's
matmul peak, measured in the same run (fp32, and bf16 where the CPU or GPU has native bf16).

Usage: python scripts/bench_train.py [--encodings nope rope alibi] [--steps 4] [--batch 4] [--seq-len 2048]
FLOPs per token follow Kaplan et al. 2020 / the PaLM appendix: 6·N + 6·L·T·d, with N the
parameters used in matmuls (blocks and the output head) and the attention term halved for
causality.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from posbench.config import ModelConfig, Precision
from posbench.encodings import ENCODINGS
from posbench.model.transformer import Transformer
from posbench.runtime import autocast, cpu_has_native_bf16


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


def flops_per_token(model: Transformer, seq_len: int) -> float:
    cfg = model.cfg
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("embed", "encoding.")))
    matmul_params += 0 if not cfg.tie_embeddings else model.lm_head.weight.numel()
    return 6 * matmul_params + 6 * cfg.n_layers * seq_len * cfg.d_model


def tokens_per_second(encoding: str, precision: Precision, device: torch.device, batch: int, seq_len: int, steps: int) -> tuple[float, Transformer]:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(name="tiny"), ENCODINGS[encoding][0](**({"max_positions": seq_len} if encoding == "learned" else {})), 256).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 256, (batch, seq_len + 1), device=device)
    timings = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        with autocast(device, precision):
            logits = model(tokens[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return batch * seq_len / min(timings[1:]), model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encodings", nargs="+", default=sorted(ENCODINGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = [Precision.fp32]
    if device.type == "cuda" or cpu_has_native_bf16():
        precisions.append(Precision.bf16)
    else:
        print("bf16: skipped, this CPU has no native bf16 (avx512_bf16/amx_bf16); its bf16 matmuls are ~100x slower")
    names = ["nope"] + [e for e in args.encodings if e != "nope"]
    for precision in precisions:
        peak = matmul_peak(torch.float32 if precision == Precision.fp32 else torch.bfloat16, device)
        print(f"\n{precision.value}: matmul peak {peak:,.0f} GFLOP/s on {device}; model=tiny, batch {args.batch} x {args.seq_len}")
        print(f"{'encoding':>14} {'tokens/s':>10} {'x nope':>7} {'MFU':>6}")
        base = None
        for name in names:
            rate, model = tokens_per_second(name, precision, device, args.batch, args.seq_len, args.steps)
            base = base or rate
            mfu = rate * flops_per_token(model, args.seq_len) / (peak * 1e9)
            print(f"{name:>14} {rate:>10,.0f} {rate / base:>7.2f} {mfu:>6.1%}", flush=True)


if __name__ == "__main__":
    main()
