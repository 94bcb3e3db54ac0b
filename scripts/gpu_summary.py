"""The tables of scripts/gpu_check.sh: reads OUT_DIR/results.jsonl, writes OUT_DIR/summary.md and prints it.

Usage: python scripts/gpu_summary.py OUT_DIR
Training rows carry x plain, their tokens/s over the plain PyTorch GPT's at the same torch.compile
setting (scripts/bench_train.py's reference row); memory rows, the peak of torch.cuda.max_memory_allocated
and what was allocated before the forward (the weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PLAIN = "plain-gpt"


def fmt(value, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def train_table(rows: list[dict]) -> list[str]:
    """One table per (attention, compile); x plain: tokens/s over the plain GPT's at the same compile."""
    plain = {r["compile"]: r for r in rows if r.get("encoding") == PLAIN and "tokens_per_s" in r}
    lines = []
    for attention, compiled in dict.fromkeys((r["attention"], r["compile"]) for r in rows):
        lines += [
            f"\nattention={attention}, torch.compile {'on' if compiled else 'off'}:\n",
            "| encoding | backend | tokens/s | x plain | MFU | step ms | first step s | peak MB | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        base = plain.get(compiled, {}).get("tokens_per_s")
        for r in rows:
            if (r["attention"], r["compile"]) != (attention, compiled):
                continue
            rate = r.get("tokens_per_s")
            ratio = rate / base if rate and base else None
            note = r.get("error", "" if r.get("finite", True) else "non-finite loss")
            lines.append(
                f"| {r['encoding']} | {r.get('backend', '')} | {fmt(rate)} | {fmt(ratio, '.2f')} | "
                f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('step_ms'), '.1f')} | "
                f"{fmt(r.get('first_step_s'), '.1f')} | {fmt(r.get('peak_mb'))} | {note} |"
            )
    return lines


def eval_table(rows: list[dict]) -> list[str]:
    lines = [
        "| encoding | length | seconds | peak MB | weights MB | backend | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoding']} | {r.get('length', '')} | {fmt(r.get('seconds'), '.2f')} | "
            f"{fmt(r.get('peak_mb'))} | {fmt(r.get('weights_mb'))} | {r.get('backend', '')} | "
            f"{r.get('error', '' if r.get('finite', True) else 'non-finite logits')} |"
        )
    return lines


def hf_table(rows: list[dict]) -> list[str]:
    lines = [
        "| length | windows | seconds | peak MB | weights MB | MB per token above the weights | ppl | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak, weights, length = r.get("peak_mb"), r.get("weights_mb"), r.get("length")
        per_token = (peak - weights) / length if None not in (peak, weights, length) else None
        lines.append(
            f"| {length or ''} | {r.get('windows', '')} | {fmt(r.get('seconds'), '.2f')} | {fmt(peak)} | "
            f"{fmt(weights)} | {fmt(per_token, '.3f')} | {fmt(r.get('ppl'), '.1f')} | {r.get('error', '')} |"
        )
    return lines


def summary(folder: Path) -> str:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    by_part = {
        part: [r for r in rows if r.get("part") == part] for part in ("peak", "train", "eval", "hf", "status")
    }
    lines = ["# scripts/gpu_check.sh", ""]
    lines += [
        f"- {r['device']}: bf16 matmul peak {r['bf16_matmul_gflops']:,.0f} GFLOP/s"
        for r in by_part["peak"][:1]
    ]
    lines += [f"- part {r['name']}: {r['outcome']} after {r['seconds']} s" for r in by_part["status"]]
    lines += ["", "## 1. Training steps (bf16)", *train_table(by_part["train"])]
    lines += ["", "## 2. Long evaluation (bf16, one forward, batch 1)", "", *eval_table(by_part["eval"])]
    lines += ["", "## 3. `posbench eval hf=` (random Llama-shaped model, bf16)", "", *hf_table(by_part["hf"])]
    text = "\n".join(lines) + "\n"
    (folder / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
