"""`posbench eval` with stick-breaking's blocks counted: the share of the causal (query, key)
pairs whose chunks the blocks visit before their early stop.

Usage (from the repository root):
    python experiments/benchmarks-2026-12-04-flush/stick_breaking_trained/count_visited.py \
        checkpoint=PATH "eval.lengths=[16384]" hydra.run.dir=OUT
"""

import sys
import time

from posbench.model import stick_breaking

seen = {"visited": 0, "triangle": 0}
uncounted = stick_breaking.block_forward


def counted(q, k, v, scale, start, width, out):
    total, visited = uncounted(q, k, v, scale, start, width, out)
    rows = q.shape[-2]
    seen["visited"] += rows * (start + rows - visited[-1][0])  # keys from the farthest chunk on
    seen["triangle"] += rows * (start + rows)
    return total, visited


stick_breaking.block_forward = counted
from posbench.__main__ import main  # noqa: E402

started = time.perf_counter()
try:
    main(["eval", *sys.argv[1:]])
finally:
    share = seen["visited"] / max(1, seen["triangle"])
    print(f"visited {share:.3f} of the causal prefix keys; {time.perf_counter() - started:.1f} s", flush=True)
