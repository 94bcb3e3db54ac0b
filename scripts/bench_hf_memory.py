"""Memory of ``posbench eval hf=`` scoring one window, on randomly initialised Llama-shaped models.

Each (shape, layers, length) runs in a fresh process: the model is built from its config (no download),
the peak resident memory is reset once the weights are in place, and one window of random tokens is
scored the way the evaluator scores it (``score_windows`` through ``PretrainedLM``: the decoder's final
hidden states, then the loss ``eval.loss_chunk`` tokens' logits at a time). ``forward MB`` is the growth
of peak RSS over the weights; ``per token`` is the slope of that growth between two lengths, so the
loss chunk's fixed share drops out. Without gradients each layer's activations are freed before the
next, so the growth does not depend on depth: the script measures that too (two depths, one length).

Usage:
    python scripts/bench_hf_memory.py                        # the shapes below at their default lengths
    python scripts/bench_hf_memory.py --shapes small-32k --lengths 4096 16384

The estimate beside each measured shape is a paper one for the whole model in bf16 on a GPU: weights
(2 bytes per parameter) + the loss chunk's fixed share + per-token bytes x T, with the per-token bytes
measured in fp32 here and halved for bf16 activations; it assumes attention memory linear in T (SDPA's
flash or memory-efficient kernels, the causal flag) as on this CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

# name -> (hidden, intermediate, heads, kv heads, vocabulary, full depth); widths of the published configs
SHAPES = {
    "llama-3.2-1b": (2048, 8192, 32, 8, 128256, 16),
    "llama-3-8b": (4096, 14336, 32, 8, 128256, 32),
    "small-32k": (1024, 2816, 16, 16, 32000, 12),  # a 32K-vocabulary model measured whole
    "tiny": (64, 128, 4, 2, 1000, 2),  # the script's own test
}
TARGETS = {"llama-3.2-1b": 131072, "llama-3-8b": 65536, "tiny": 1024}  # the length each estimate is for


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts afresh at the current RSS


def peak_mb() -> float:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def measure_one(shape: str, layers: int, length: int, loss_chunk: int) -> dict:
    import numpy as np
    import torch
    import transformers

    from posbench.evaluation.evaluator import score_windows
    from posbench.evaluation.protocol import Window
    from posbench.pretrained.adapter import PretrainedLM

    torch.set_num_threads(2)
    hidden, inter, heads, kv, vocab, _ = SHAPES[shape]
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=length,
        attn_implementation="sdpa",
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").eval()  # uninitialised weights: memory, not quality
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    parameters = sum(p.numel() for p in model.parameters())
    stream = np.random.default_rng(0).integers(0, vocab, size=length + 1)
    before = rss_mb()
    reset_peak()
    score_windows(
        PretrainedLM(model), stream, length, [Window(0, 0)], torch.device("cpu"), loss_chunk=loss_chunk
    )
    return {
        "shape": shape,
        "layers": layers,
        "length": length,
        "parameters": parameters,
        "weights_mb": parameters * 4 / 2**20,
        "rss_before_mb": before,
        "forward_mb": peak_mb() - before,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(shape: str, layers: int, length: int, loss_chunk: int) -> dict:
    cmd = [sys.executable, __file__, "--child", shape, str(layers), str(length), str(loss_chunk)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {
            "shape": shape,
            "layers": layers,
            "length": length,
            "error": done.stderr.strip().splitlines()[-1],
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def full_parameters(shape: str) -> int:
    hidden, inter, heads, kv, vocab, depth = SHAPES[shape]
    kv_width = hidden // heads * kv
    per_layer = hidden * (2 * hidden + 2 * kv_width) + 3 * hidden * inter + 2 * hidden
    return 2 * vocab * hidden + depth * per_layer + hidden  # untied embeddings and head


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", nargs="+", default=["llama-3.2-1b", "llama-3-8b", "small-32k"], choices=list(SHAPES)
    )
    parser.add_argument(
        "--lengths", nargs=2, type=int, default=[4096, 8192], help="the two lengths of the slope"
    )
    parser.add_argument("--layers", type=int, default=2, help="depth of the layered shapes (not small-32k)")
    parser.add_argument("--loss-chunk", type=int, default=4096)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shape, layers, length, chunk = args.child
        print(json.dumps(measure_one(shape, int(layers), int(length), int(chunk))))
        return
    print(f"{'shape':>14} {'layers':>6} {'length':>7} {'weights MB':>10} {'forward MB':>10} {'peak MB':>8}")
    for shape in args.shapes:
        layers = SHAPES[shape][5] if shape == "small-32k" else args.layers
        lengths = [16384] if shape == "small-32k" else args.lengths
        rows = [run_child(shape, layers, n, args.loss_chunk) for n in lengths]
        if shape != "small-32k":
            rows.append(run_child(shape, layers * 2, lengths[0], args.loss_chunk))  # depth check
        for r in rows:
            if "error" in r:
                print(f"{shape:>14} {r['layers']:>6} {r['length']:>7} error: {r['error']}")
                continue
            sizes = f"{r['weights_mb']:>10.0f} {r['forward_mb']:>10.0f} {r['peak_mb']:>8.0f}"
            print(f"{shape:>14} {r['layers']:>6} {r['length']:>7} {sizes}")
        if any("error" in r for r in rows):
            continue
        if shape == "small-32k":
            r = rows[0]
            print(f"  whole process peak / fp32 weights at 16K: {r['peak_mb'] / r['weights_mb']:.2f}x")
            continue
        (a, b, deeper) = rows
        slope = (b["forward_mb"] - a["forward_mb"]) / (b["length"] - a["length"])  # MB per token, fp32
        fixed = a["forward_mb"] - slope * a["length"]
        target = TARGETS[shape]
        weights_bf16 = full_parameters(shape) * 2 / 2**30
        estimate = weights_bf16 + (fixed + slope / 2 * target) / 1024
        print(
            f"  per token {slope * 1024:.1f} KB (fp32); fixed {fixed:.0f} MB; depth {deeper['layers']} vs "
            f"{a['layers']} at {a['length']}: {deeper['forward_mb']:.0f} vs {a['forward_mb']:.0f} MB"
        )
        print(
            f"  estimate, whole model in bf16 at {target}: {weights_bf16:.1f} GB weights + "
            f"{(fixed + slope / 2 * target) / 1024:.1f} GB = {estimate:.1f} GB"
        )


if __name__ == "__main__":
    main()
