"""Peak memory of one training step: plain, activation checkpointing, the chunked loss, both; ratios to plain.

Each (vocabulary, configuration) runs in a fresh process, so its peak resident memory is its own: the
trainer's own step (``train_step`` through ``NextTokenLoss``, then AdamW's update) on one batch.
Usage:
    python scripts/bench_memory.py                          # model=tiny, 8K, batch 1, vocab 256 and 32K
    python scripts/bench_memory.py --seq-len 16384 --vocabs 32768 --encoding t5 --loss-chunk 2048
``step MB`` is the growth of peak RSS over the steps (what a step needs beyond the model and the batch,
AdamW's state included); ``peak MB`` is the process's whole peak; ``time s`` is the last step's (the first
carries one-time set-up), ``loss`` the first step's. Times are of one step on a possibly shared machine.
With glibc's default allocator RSS includes heap kept after frees, more so for the many smaller buffers
of a recomputed block; run with MALLOC_MMAP_THRESHOLD_=1048576 (children inherit it) to see what the
step itself needs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGURATIONS = {  # name -> (train.activation_checkpointing, use the chunked loss)
    "plain": (False, False),
    "checkpointing": (True, False),
    "chunked": (False, True),
    "both": (True, True),
}


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def reset_peak() -> None:
    """Start the peak RSS (VmHWM) afresh at the current RSS (Linux's clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_since_reset_mb() -> float:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


class OneBatch:
    """The ``Batches`` the trainer reads, holding one batch."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def next(self):
        return self.x, self.y


def measure_one(args: argparse.Namespace, vocab: int, configuration: str) -> dict:
    import torch
    from bench_variants import encoding_config

    from posbench.config import ModelConfig, TrainConfig
    from posbench.model.loss import NextTokenLoss
    from posbench.model.transformer import Transformer
    from posbench.training.optim import build_optimizer
    from posbench.training.trainer import train_step

    checkpointing, chunked = CONFIGURATIONS[configuration]
    cfg = TrainConfig(
        seq_len=args.seq_len,
        batch_size=args.batch,
        activation_checkpointing=checkpointing,
        loss_chunk=args.loss_chunk if chunked else 0,
    )
    torch.manual_seed(0)
    model = Transformer(ModelConfig(name="tiny"), encoding_config(args.encoding, args.seq_len), vocab)
    model.train()
    optimizer = build_optimizer(model, cfg)
    tokens = torch.randint(0, vocab, (args.batch, args.seq_len + 1))
    batches = OneBatch(tokens[:, :-1], tokens[:, 1:])
    objective = NextTokenLoss(model, cfg.loss_chunk, cfg.activation_checkpointing)  # as Trainer.fit has it
    reset_peak()  # from here on, the peak is the steps'
    before, losses = rss_mb(), []
    for _ in range(args.steps):  # the same peak each step; the first also allocates AdamW's state
        start = time.perf_counter()
        losses.append(train_step(objective, optimizer, batches, cfg, torch.device("cpu"), cfg.lr)[0])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
    step_mb = peak_since_reset_mb() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    backend = model.attention_plan(args.seq_len, needs_grad=True).name
    return {
        "loss": losses[0],
        "seconds": seconds,
        "step_mb": step_mb,
        "peak_mb": peak,
        "backend": backend,
    }


def run_child(args: argparse.Namespace, vocab: int, configuration: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(vocab), configuration, *passed_on(args)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def passed_on(args: argparse.Namespace) -> list[str]:
    return [
        *("--seq-len", str(args.seq_len), "--batch", str(args.batch)),
        *("--encoding", args.encoding, "--loss-chunk", str(args.loss_chunk), "--steps", str(args.steps)),
    ]


def parse() -> argparse.Namespace:
    from bench_variants import names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[256, 32768])
    parser.add_argument("--encoding", default="rope", choices=names(training=True))
    parser.add_argument("--loss-chunk", type=int, default=1024, help="train.loss_chunk of the chunked runs")
    parser.add_argument("--steps", type=int, default=2, help="steps per process; the last one is timed")
    parser.add_argument("--child", nargs=2, metavar=("VOCAB", "CONFIGURATION"))
    args = parser.parse_args()
    for name in ("seq_len", "batch", "loss_chunk", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.vocabs) < 2:
        parser.error("--vocabs must be at least 2 each")
    return args


def main() -> None:
    from posbench.common.runtime import flush_denormals

    flush_denormals()  # as every posbench job does first (posbench/cli.py)
    args = parse()
    if args.child:
        print(json.dumps(measure_one(args, int(args.child[0]), args.child[1])))
        return
    print(f"model=tiny encoding={args.encoding} seq_len={args.seq_len} batch={args.batch}", end=" ")
    print(f"loss_chunk={args.loss_chunk}")
    print(
        f"{'vocab':>6} {'configuration':>14} {'step MB':>8} {'x plain':>7} {'peak MB':>8} {'x plain':>7} "
        f"{'time s':>7} {'x plain':>7} {'loss':>8}  backend"
    )
    for vocab in args.vocabs:
        plain = None
        for name in CONFIGURATIONS:
            r = run_child(args, vocab, name)
            if "error" in r:
                print(f"{vocab:>6} {name:>14}  failed: {r['error']}")
                continue
            plain = r if name == "plain" else plain
            mb, peak, seconds = (ratio(r, plain, key) for key in ("step_mb", "peak_mb", "seconds"))
            print(
                f"{vocab:>6} {name:>14} {r['step_mb']:>8.0f} {mb} {r['peak_mb']:>8.0f} {peak} "
                f"{r['seconds']:>7.2f} {seconds} {r['loss']:>8.4f}  {r['backend']}",
                flush=True,
            )


def ratio(row: dict, plain: dict | None, key: str) -> str:
    return f"{'n/a' if plain is None else f'{row[key] / plain[key]:.2f}':>7}"


if __name__ == "__main__":
    main()
