"""The measurements of scripts/gpu_check.sh. Each subcommand runs one part on CUDA (or at toy sizes on
the CPU, for a dry run) and appends one JSON line per row to --out as soon as the row is done, so a
part stopped at its time limit keeps the rows it reached. scripts/gpu_summary.py makes the tables.

  train    bf16 training steps per encoding: tokens/s, MFU against the bf16 matmul peak measured here
  eval     one bf16 forward per encoding and length: seconds and peak CUDA memory
  hf-model a random Llama-shaped model, a byte-level BPE tokenizer and a text corpus, saved to a folder
  hf-eval  `python -m posbench eval hf=...`, each length's peak CUDA memory recorded
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 256  # byte-level, as scripts/bench_train.py
PLAIN = "plain-gpt"  # bench_train.py's reference row
WARMUP = 2  # untimed steps (the first compiles under torch.compile)


def emit(out: Path, row: dict) -> None:
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mb(device):
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def reset_peak(device) -> Optional[float]:
    """Clears the peak; -> the memory allocated now (MB), the baseline the peak is read against (None
    on the CPU)."""
    import torch

    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def model_config(name: str, attention: str):
    """configs/model/NAME.yaml's shape; ``smoke``: the debug=smoke model (seconds on a CPU)."""
    from omegaconf import OmegaConf

    from posbench.config import Attention, ModelConfig

    base = "tiny" if name == "smoke" else name
    values = {
        k: v for k, v in OmegaConf.load(ROOT / "configs/model" / f"{base}.yaml").items() if k != "defaults"
    }
    if name == "smoke":
        values.update(OmegaConf.load(ROOT / "configs/debug/smoke.yaml").model)
    return ModelConfig(**values, attention=Attention(attention))


def raise_recompile_limit() -> None:
    """Each encoding's score_mod is a new FlexAttention graph; the default limit (8) would send the later
    ones to eager FlexAttention, which materialises the scores."""
    import torch._dynamo

    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)


def train_row(name: str, args, device, peak: float) -> dict:
    import torch
    import torch.nn.functional as F
    from bench_train import PlainGpt, flops_per_token
    from bench_variants import encoding_config

    from posbench.common.runtime import Precision, autocast
    from posbench.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = model_config(args.model, args.attention)
    row = dict(part="train", encoding=name, attention=args.attention, compile=bool(args.compile))
    row.update(model=args.model, batch=args.batch, seq_len=args.seq_len, precision="bf16")
    if name == PLAIN:
        model = PlainGpt(cfg, VOCAB, args.seq_len).to(device)
    else:
        model = Transformer(cfg, encoding_config(name, args.seq_len), VOCAB).to(device)
        row["backend"] = model.attention_plan(args.seq_len, needs_grad=True, autocast=True).name
    runner = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, VOCAB, (args.batch, args.seq_len + 1), device=device)
    seconds, losses = [], []
    reset_peak(device)
    for _ in range(WARMUP + args.steps):
        start = time.perf_counter()
        with autocast(device, Precision.bf16):
            logits = runner(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        sync(device)
        seconds.append(time.perf_counter() - start)
    step = statistics.median(seconds[WARMUP:])
    rate = tokens[:, :-1].numel() / step
    flops = flops_per_token(model, cfg.n_layers, cfg.d_model, args.seq_len)
    row.update(
        tokens_per_s=rate, step_ms=step * 1e3, first_step_s=seconds[0], mfu=rate * flops / (peak * 1e9)
    )
    row.update(peak_mb=peak_mb(device), finite=all(math.isfinite(x) for x in losses))
    return row


def train(args) -> None:
    import torch
    from bench_train import matmul_peak

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise_recompile_limit()
    peak = matmul_peak(torch.bfloat16, device, size=8192 if device.type == "cuda" else 512)
    emit(args.out, dict(part="peak", device=device_name(device), bf16_matmul_gflops=peak))
    for name in args.encodings:
        try:
            emit(args.out, train_row(name, args, device, peak))
        except Exception as exc:  # a refusal or an error is a finding: record it, go on
            emit(
                args.out,
                dict(
                    part="train",
                    encoding=name,
                    attention=args.attention,
                    compile=bool(args.compile),
                    error=one_line(exc),
                ),
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()


def eval_rows(name: str, args, device):
    import torch
    from bench_variants import encoding_config

    from posbench.common.runtime import Precision, autocast
    from posbench.model.transformer import Transformer

    torch.manual_seed(0)
    enc = encoding_config(name, max(args.lengths))
    model = Transformer(model_config(args.model, "auto"), enc, VOCAB).to(device).eval()
    with torch.no_grad(), autocast(device, Precision.bf16):
        model(torch.randint(0, VOCAB, (1, 1024), device=device))  # warm-up: kernels, cuBLAS handles
    for length in args.lengths:
        row = dict(part="eval", encoding=name, length=length, model=args.model, precision="bf16")
        reason = model.length_limit_reason(length)
        if reason is not None:
            yield {**row, "error": f"n/a: {reason}"}
            continue
        tokens = torch.randint(0, VOCAB, (1, length), device=device)
        try:
            base = reset_peak(device)
            start = time.perf_counter()
            with torch.no_grad(), autocast(device, Precision.bf16):
                finite = bool(torch.isfinite(model(tokens)).all())
            sync(device)
            row.update(seconds=time.perf_counter() - start, finite=finite, peak_mb=peak_mb(device))
            row.update(
                weights_mb=base, backend=model.attention_plan(length, needs_grad=False, autocast=True).name
            )
        except torch.OutOfMemoryError as exc:
            row["error"] = one_line(exc)
        yield row


def evaluate(args) -> None:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name in args.encodings:
        try:
            for row in eval_rows(name, args, device):
                emit(args.out, row)
        except Exception as exc:
            emit(args.out, dict(part="eval", encoding=name, error=one_line(exc)))


# Llama-3.2-1B's published shape (its config.json), and a toy one for the dry run
LLAMA_SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "toy": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        tie_word_embeddings=True,
    ),
}
TOKENIZER_TEXT = " ".join(f"The pass key is {n}. The grass is green, the sky is blue." for n in range(400))


def hf_model(args) -> None:
    """A random Llama of ``--shape`` and a 300-entry byte-level BPE tokenizer in ``folder``, and
    train.txt / val.txt whose validation stream holds at least ``--val-tokens`` tokens."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = Path(args.folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        [TOKENIZER_TEXT] * 4,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=alphabet),
    )
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    cfg = transformers.LlamaConfig(
        **LLAMA_SHAPES[args.shape],
        max_position_embeddings=8192,
        attn_implementation="sdpa",
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    (folder / "train.txt").write_text(corpus_text("train", 2000))
    lines = 2000
    while len(tok.encode(corpus_text("val", lines)).ids) < args.val_tokens:
        lines *= 2
    (folder / "val.txt").write_text(corpus_text("val", lines))
    print(f"saved {args.shape} ({model.num_parameters():,} parameters), {lines} lines of text: {folder}")


def corpus_text(split: str, lines: int) -> str:
    return " ".join(f"Line {n} of the {split} text, where the grass is green." for n in range(lines))


def hf_eval(args) -> None:
    """posbench's own CLI, with evaluator.evaluate_length wrapped to read each length's peak memory."""
    import torch

    import posbench.evaluation.evaluator as evaluator
    from posbench.__main__ import main

    original = evaluator.evaluate_length

    def measured(model, stream, length, cfg, device, *rest, **kwargs):
        row = dict(part="hf", length=length, weights_mb=reset_peak(device))
        start = time.perf_counter()
        try:
            result = original(model, stream, length, cfg, device, *rest, **kwargs)
        except torch.OutOfMemoryError as exc:
            emit(args.out, {**row, "error": one_line(exc), "peak_mb": peak_mb(device)})
            raise
        row.update(seconds=time.perf_counter() - start, peak_mb=peak_mb(device), status=result.status)
        emit(args.out, {**row, "windows": result.windows, "ppl": result.ppl, "backend": result.backend})
        return result

    evaluator.evaluate_length = measured
    try:
        main(["eval", *(a for a in args.overrides if a != "--")])
    except SystemExit as exc:
        if exc.code not in (None, 0):
            emit(args.out, dict(part="hf", error=f"posbench eval exited with {exc.code}"))
            raise


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--attention", default="sdpa")
    p.add_argument("--compile", type=int, default=0)
    p.add_argument("--model", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median), after two untimed ones")
    p.add_argument("--encodings", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("eval")
    p.add_argument("--lengths", type=int, nargs="+", default=[65536, 131072])
    p.add_argument("--encodings", nargs="+", required=True)
    p.add_argument("--model", default="tiny")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("hf-model")
    p.add_argument("folder")
    p.add_argument("--shape", choices=sorted(LLAMA_SHAPES), default="llama-3.2-1b")
    p.add_argument("--val-tokens", type=int, default=140000)
    p = sub.add_parser("hf-eval")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="posbench eval's overrides")
    args = parser.parse_args()
    commands = {
        "train": train,
        "eval": evaluate,
        "hf-model": hf_model,
        "hf-eval": hf_eval,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
