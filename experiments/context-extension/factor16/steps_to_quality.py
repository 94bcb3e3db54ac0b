"""The steps-to-quality curve of the factor-16 children: validation perplexity at 1024, 4096 and 16K
after 25, 50, 75 and 100 fine-tuning steps (each child's ``metrics.jsonl``: ``val/loss`` is at the
child's own training length, 1024 or 256; ``val/loss@N`` at N; 32,768 tokens each), mean ± std over
the seeds found.

    python experiments/context-extension/factor16/steps_to_quality.py > \\
        experiments/context-extension/factor16/steps_to_quality.md
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from posbench.reports.tables import format_values

HERE = Path(__file__).resolve().parent
LENGTHS = (1024, 4096, 16384)


def label(results: dict) -> str:
    kind = results["config"]["encoding"].get("scaling", {}).get("kind", "none")
    if results["config"]["encoding"].get("pose_target"):
        return "PoSE at 256, target 4096"
    if results["train_seq_len"] == 256:
        return "control: trained on at 256, no scaling"
    return f"fine-tuned at 1024, {kind}"


def curve(run: Path) -> dict[int, dict[int, float]]:
    """step -> length -> perplexity, from the run's validation records."""
    train_len = json.loads((run / "results.json").read_text())["train_seq_len"]
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val/loss" not in record:
            continue
        by_length = {train_len: record["val/loss"]}
        by_length.update({n: record[f"val/loss@{n}"] for n in LENGTHS if f"val/loss@{n}" in record})
        out[record["step"]] = {n: math.exp(v) for n, v in by_length.items() if n in LENGTHS}
    return out


def main() -> None:
    table: dict[str, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[str, set[int]] = defaultdict(set)
    for results_file in sorted(HERE.glob("*/results.json")):
        results = json.loads(results_file.read_text())
        name = label(results)
        seeds[name].add(results["config"]["train"]["seed"])
        for step, by_length in curve(results_file.parent).items():
            for length, ppl in by_length.items():
                table[name][(step, length)].append(ppl)
    steps = sorted({step for rows in table.values() for step, _ in rows})
    print("Validation perplexity (32,768 tokens per length) after each number of fine-tuning steps,")
    print("mean ± std over the seeds in the last column.")
    for length in LENGTHS:
        print(f"\n### At {length} tokens\n")
        print("| child | " + " | ".join(f"step {s}" for s in steps) + " | seeds |")
        print("|---|" + "---|" * (len(steps) + 1))
        for name in sorted(table):
            cells = [format_values(table[name].get((s, length), [])) for s in steps]
            print(f"| {name} | " + " | ".join(cells) + f" | {', '.join(map(str, sorted(seeds[name])))} |")


if __name__ == "__main__":
    main()
