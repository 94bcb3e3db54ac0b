"""``posbench eval hf=NAME_OR_DIR``: a pretrained Llama-family model evaluated with posbench's protocol,
its RoPE scaling functions in place of the model's own, the corpus tokenized with the model's own
tokenizer, and the same results files, plots, W&B and ``compare`` as for posbench's models.

The model's factor and original length stand for ``encoding/scaling=KIND`` unless the command line
sets ``encoding.scaling.factor`` or ``encoding.scaling.original_max_position``. Attention diagnostics
need posbench's attention and are off. bf16 on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from posbench.common.atomic import atomic_write_text
from posbench.common.runtime import resolve_device
from posbench.config import EvalConfig, Precision
from posbench.data import load_corpus
from posbench.data.config import Tokenizer
from posbench.data.sources import CORPORA
from posbench.data.tokenizer import PretrainedTokenizer
from posbench.evaluation.report import ReportTarget, evaluate_and_report
from posbench.pretrained.adapter import PretrainedLM
from posbench.pretrained.loading import (
    HFModelConfig,
    input_device,
    load_config,
    load_model,
    model_record,
)
from posbench.pretrained.naming import model_label
from posbench.pretrained.passkey import PasskeyConfig, filler_for, passkey_grid
from posbench.pretrained.rotary import chosen_scaling, replace_rotary
from posbench.reports.plots import plot_depth_accuracy
from posbench.reports.results import results_header
from posbench.tracking import build_tracker
from posbench.tracking.config import LoggerConfig

PASSKEY_SCORER = "greedy decoding of max_new_tokens tokens; exact match of the first integer (regex \\d+)"


def requested_scaling(plain: dict, command_line: list[str]) -> tuple[Optional[dict], frozenset]:
    """``encoding.scaling`` as composed (its kind's YAML defaults; interpolations that need a
    training run dropped) and the keys of it the command line sets."""
    scaling = (plain.get("encoding") or {}).get("scaling")
    if not scaling:
        return None, frozenset()
    given = {arg.split("=")[0].lstrip("+").removeprefix("encoding.scaling.") for arg in command_line}
    kept = {k: v for k, v in scaling.items() if not (isinstance(v, str) and "${" in v)}
    return kept, frozenset(given & set(scaling))


def corpus_config(plain: dict, source: str, revision: Optional[str]) -> Any:
    """The corpus (the built-in one unless ``data=`` is given), tokenized by the model's tokenizer."""
    data = dict(plain.get("data") or {"name": "shakespeare"})
    typed = CORPORA.coerce(data)
    return dataclasses.replace(
        typed, tokenizer=Tokenizer.pretrained, pretrained_tokenizer=source, pretrained_revision=revision
    )


HF_KEYS = ("hf", "checkpoint", "eval", "passkey", "data", "logger", "device", "run_root")


def check_overrides(plain: dict) -> None:
    """Refuse what an hf= evaluation would silently ignore: options besides ``encoding/scaling``."""
    extra = sorted(k for k, v in plain.items() if k not in HF_KEYS and k != "encoding" and v is not None)
    encoding = sorted(k for k in plain.get("encoding") or {} if k != "scaling")
    if extra or encoding:
        named = ", ".join([*extra, *(f"encoding.{k}" for k in encoding)])
        raise ValueError(
            f"posbench eval hf=... takes encoding/scaling, data, eval, passkey and logger; not {named}"
        )


def evaluate_pretrained(cfg: DictConfig, out_dir: str | Path, command_line: list[str]) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=False)
    check_overrides(plain)
    hf = typed(HFModelConfig, plain["hf"])  # hf.device_map checked here, before any tokenizing
    source, revision = str(hf.name), hf.revision
    eval_cfg = typed(EvalConfig, plain["eval"])
    eval_cfg = dataclasses.replace(eval_cfg, diagnostics_windows=0)  # they read posbench's attention
    passkey = typed(PasskeyConfig, plain.get("passkey") or {})
    config = load_config(source, revision)
    requested = requested_scaling(plain, command_line)
    scaling = chosen_scaling(config, *requested)
    check_task_lengths(passkey, config, scaling, requested[0] is not None)
    tokenizer = PretrainedTokenizer.load(source, revision).tok
    bos_id = checked_bos(tokenizer, eval_cfg, source)
    for tokens in passkey.lengths:  # a passkey length the prompt cannot fit is refused before any work
        filler_for(tokenizer, tokens)
    device = resolve_device(str(cfg.device))
    dtype = hf.torch_dtype(device)
    precision = Precision.bf16 if dtype == torch.bfloat16 else Precision.fp32
    data = corpus_config(plain, source, revision)
    corpus = load_corpus(data, splits=("val",))  # before the weights: a data error costs no download
    hf_model = load_model(source, revision, device, dtype, hf.device_map)
    device = input_device(hf_model, device)
    replace_rotary(hf_model, scaling)
    label = model_label(source, scaling.kind, hf.label)
    meta = metadata(source, revision, hf_model, scaling, data, corpus, precision, eval_cfg, label, hf)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = typed(LoggerConfig, plain.get("logger") or {"name": "jsonl"})
    tracker = build_tracker(logger, str(out_dir), meta["config"], meta["run_name"], "hf", job_type="eval")
    try:
        target = ReportTarget(out_dir, tracker, device, meta)
        model = PretrainedLM(hf_model)
        document = evaluate_and_report(
            model, corpus.val, corpus.separator_id, eval_cfg, precision, target, bos_id
        )
        if passkey.lengths:
            report_passkey(
                passkey_grid(hf_model, tokenizer, passkey, device),
                passkey,
                meta["encoding"],
                out_dir,
                tracker,
            )
        return document
    finally:
        tracker.close()


def check_task_lengths(passkey: PasskeyConfig, config: Any, scaling: Any, chosen: bool) -> None:
    """A retrieval task past the model's positions with no scaling at all is refused unless the
    command line asked for that (``encoding/scaling=none``): a task answered past the limit is the
    unscaled model's failure, which is worth measuring only on purpose."""
    limit = config.max_position_embeddings
    longest = max(passkey.lengths, default=0)
    if longest > limit and scaling.kind == "none" and not chosen:
        raise ValueError(
            f"passkey.lengths reach {longest} tokens, past the model's {limit} positions, with no RoPE "
            "scaling: add encoding/scaling=KIND (e.g. yarn), or encoding/scaling=none to measure it unscaled"
        )


def checked_bos(tokenizer: Any, eval_cfg: EvalConfig, source: str) -> Optional[int]:
    """The tokenizer's BOS id, which ``eval.add_bos`` puts first in every window; refused when asked
    for and the tokenizer has none."""
    bos = tokenizer.bos_token_id
    if eval_cfg.add_bos and bos is None:
        raise ValueError(f"hf={source}: its tokenizer has no BOS token; drop eval.add_bos")
    return None if bos is None else int(bos)


def typed(schema: type, values: dict) -> Any:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))


def metadata(
    source, revision, hf_model, scaling, data, corpus, precision: Precision, eval_cfg: EvalConfig, label, hf
) -> dict:
    """results.json's record of the model (name, revision, commit), its scaling, data and settings;
    ``train_seq_len`` is its original context (the scaling's original length, else its config's)."""
    record = model_record(source, revision, hf_model)
    train_len = scaling.original_max_position or record["max_position_embeddings"]
    config = {
        "encoding": {"name": "hf", "scaling": dataclasses.asdict(scaling)},
        "model": {"name": source, "revision": revision},
        "hf": dataclasses.asdict(hf),
        "data": {
            k: v for k, v in OmegaConf.to_container(OmegaConf.structured(data)).items() if k != "cache_dir"
        },
        "train": {"seq_len": train_len, "seed": 0},
        "pretrained": record,
    }
    parameters = record["parameters"]
    embedding = hf_model.get_input_embeddings().weight.numel()
    return results_header(
        run_name=f"{label}-eval",
        encoding=label,
        train_seq_len=train_len,
        model=source,
        parameters=parameters,
        non_embedding_parameters=parameters - embedding,
        data=corpus.info,
        precision=precision.value,
        eval_config=OmegaConf.to_container(OmegaConf.structured(eval_cfg)),
        config=config,
        pretrained=record,
    )


def report_passkey(rows: list[dict], cfg: PasskeyConfig, label: str, out_dir: Path, tracker) -> None:
    """passkey.json, passkey.csv (one row per length and depth bucket), the heatmap, W&B summary."""
    document = {
        "encoding": label,
        "passkey": {**dataclasses.asdict(cfg), "scorer": PASSKEY_SCORER},
        "results": rows,
    }
    atomic_write_text(out_dir / "passkey.json", json.dumps(document, indent=2) + "\n")
    lines = ["length,filler_chars,depth_start,depth_end,accuracy,trials"]
    for row in rows:
        depth = row["by_depth"]
        for start, end, accuracy in zip(depth["start"], depth["end"], depth["accuracy"]):
            lines.append(f"{row['length']},{row['filler_chars']},{start},{end},{accuracy},{row['trials']}")
    atomic_write_text(out_dir / "passkey.csv", "\n".join(lines) + "\n")
    heatmap = {
        "encoding": label,
        "task": {"name": "passkey (YaRN's)", "unit": "tokens"},
        "results": [{**row, "length_min": row["length"]} for row in rows],
    }
    tracker.log_image("plots/passkey", str(plot_depth_accuracy(heatmap, out_dir / "passkey.png")))
    tracker.summary({f"eval/passkey@{row['length']}": row["accuracy"] for row in rows})
    print("\npasskey exact match by length:", ", ".join(f"{r['length']}: {r['accuracy']:.2f}" for r in rows))
