"""The attention diagnostics' cost per encoding: one window's forward, and the probe's own work on
top of it, by the flash-kernel statistics where they apply and by explicit fp32 logits, in one run.

Usage: python scripts/bench_diagnostics.py [--length 16384] [--encodings nope rope alibi t5]
Prints seconds for the forward alone, the probe's own work (``AttentionProbe.seconds``) as the
evaluator now runs it, and the same probe forced onto explicit logits (``statistics_by_blocks``, what
every encoding used before the kernel statistics), with the ratio of the two.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_variants import encoding_config

from posbench.common.runtime import flush_denormals
from posbench.config import ModelConfig
from posbench.model import diagnostics
from posbench.model.diagnostics import AttentionProbe
from posbench.model.transformer import Transformer


def probe_seconds(model: Transformer, tokens: torch.Tensor, length: int) -> float:
    probe = AttentionProbe(model.cfg.n_layers, length, windows=1)
    model(tokens, probe=probe)
    return probe.seconds


def main() -> None:
    flush_denormals()  # as every posbench job does first (posbench/cli.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--encodings", nargs="+", default=["nope", "rope", "alibi", "t5"])
    args = parser.parse_args()
    print(f"model=tiny, one window of {args.length}, fp32, seconds")
    print(f"{'encoding':>10} {'forward':>8} {'probe':>7} {'explicit':>9} {'x faster':>9}")
    kernel_applies = diagnostics.kernel_applies
    for name in args.encodings:
        torch.manual_seed(0)
        model = Transformer(ModelConfig(name="tiny"), encoding_config(name, args.length), 256).eval()
        tokens = torch.randint(0, 256, (1, args.length))
        with torch.no_grad():
            started = time.perf_counter()
            model(tokens)
            forward = time.perf_counter() - started
            now = probe_seconds(model, tokens, args.length)
            diagnostics.kernel_applies = lambda *a: False
            explicit = probe_seconds(model, tokens, args.length)
            diagnostics.kernel_applies = kernel_applies
        print(f"{name:>10} {forward:>8.3f} {now:>7.3f} {explicit:>9.3f} {explicit / now:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
