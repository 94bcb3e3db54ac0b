"""Long-evaluation cost per encoding: forward time and peak memory at each length, as ratios to `nope`.

Each (encoding, length) runs in a fresh process so its peak resident memory is its own.
Usage:
    python scripts/bench_eval.py                           # model=tiny, 16K, every encoding
    python scripts/bench_eval.py --lengths 16384 65536 --encodings nope alibi t5
Memory is the growth of peak RSS during the forward; total peak RSS is printed too. With glibc's
default allocator RSS includes heap kept after frees; run with MALLOC_MMAP_THRESHOLD_=1048576
(children inherit it) to see what the forward itself needs (times are then not comparable). A
length the encoding refuses (the evaluator's n/a) and a forward with non-finite logits are
reported instead of timed. With --out FILE.jsonl every row is appended to FILE as it is measured,
and rows already there (same encoding, length, attention and repeats) are read back instead of
measured again: a long run (128K rows) resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure_one(encoding: str, length: int, attention: str, repeats: int) -> dict:
    import torch
    from bench_variants import encoding_config

    from posbench.config import Attention, ModelConfig
    from posbench.model.transformer import Transformer

    torch.manual_seed(0)
    enc_cfg = encoding_config(encoding, length)
    model = Transformer(ModelConfig(name="tiny", attention=Attention(attention)), enc_cfg, 256).eval()
    reason = model.length_limit_reason(length)
    if reason is not None:  # what the evaluator reports as n/a
        return {"encoding": encoding, "length": length, "error": f"n/a: {reason}"}
    tokens = torch.randint(0, 256, (1, length))
    before = rss_mb()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            logits = model(tokens)
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if not torch.isfinite(logits).all():
        return {"encoding": encoding, "length": length, "error": "non-finite logits"}
    return {
        "encoding": encoding,
        "length": length,
        "seconds": min(times),
        "forward_mb": max(peak - before, 1.0),
        "peak_mb": peak,
        "backend": model.attention_plan(length, needs_grad=False).name,
    }


def run_child(encoding: str, length: int, attention: str, repeats: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        encoding,
        str(length),
        "--attention",
        attention,
        "--repeats",
        str(repeats),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"encoding": encoding, "length": length, "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def stored_rows(path: Optional[Path]) -> dict:
    """Rows already measured into ``path``, by (encoding, length, attention, repeats)."""
    if path is None or not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["encoding"], r["length"], r["attention"], r["repeats"]): r for r in rows}


def measured(name: str, length: int, args, stored: dict) -> dict:
    """The row of (name, length): from --out when it is there, else measured and appended to it."""
    key = (name, length, args.attention, args.repeats)
    if key in stored:
        return stored[key]
    row = {**run_child(name, length, args.attention, args.repeats), "attention": args.attention}
    row["repeats"] = args.repeats
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:  # one whole line per row: a stop loses at most the row under way
            f.write(json.dumps(row) + "\n")
    return row


def main() -> None:
    from posbench.common.runtime import flush_denormals

    flush_denormals()  # as every posbench job does first (posbench/cli.py)
    from bench_variants import names as encoding_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384])
    parser.add_argument("--encodings", nargs="+", default=encoding_names())
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("ENCODING", "LENGTH"))
    parser.add_argument("--out", type=Path, help="append each row to this JSONL file; resume from it")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child[0], int(args.child[1]), args.attention, args.repeats)))
        return
    names = ["nope"] + [e for e in args.encodings if e != "nope"]
    print(
        f"{'encoding':>14} {'length':>7} {'time s':>8} {'x nope':>7} {'fwd MB':>8} {'x nope':>7} "
        f"{'peak MB':>8}  backend"
    )
    stored = stored_rows(args.out)
    for length in args.lengths:
        base = None
        for name in names:
            r = measured(name, length, args, stored)
            if "error" in r:
                print(f"{name:>14} {length:>7}  failed: {r['error']}")
                continue
            base = base or r
            print(
                f"{name:>14} {length:>7} {r['seconds']:>8.2f} {r['seconds'] / base['seconds']:>7.2f} "
                f"{r['forward_mb']:>8.0f} {r['forward_mb'] / base['forward_mb']:>7.2f} {r['peak_mb']:>8.0f}  "
                f"{r['backend']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
