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
from posbench.pretrained.loading import load_config, load_model, model_record
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


def model_label(source: str, kind: str) -> str:
    """``Llama-3.2-1B+yarn``: the model's folder or repo name and the scaling kind."""
    name = Path(source.rstrip("/")).name
    return name if kind == "none" else f"{name}+{kind}"


HF_KEYS = ("hf", "hf_revision", "checkpoint", "eval", "passkey", "data", "logger", "device", "run_root")


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
    source, revision = str(cfg.hf), cfg.get("hf_revision")
    eval_cfg = typed(EvalConfig, plain["eval"])
    eval_cfg = dataclasses.replace(eval_cfg, diagnostics_windows=0)  # they read posbench's attention
    passkey = typed(PasskeyConfig, plain.get("passkey") or {})
    scaling = chosen_scaling(load_config(source, revision), *requested_scaling(plain, command_line))
    tokenizer = PretrainedTokenizer.load(source, revision).tok
    for tokens in passkey.lengths:  # a passkey length the prompt cannot fit is refused before any work
        filler_for(tokenizer, tokens)
    device = resolve_device(str(cfg.device))
    precision = Precision.bf16 if device.type == "cuda" else Precision.fp32
    data = corpus_config(plain, source, revision)
    corpus = load_corpus(data)  # before the weights: a data error costs no download
    hf_model = load_model(
        source, revision, device, torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    replace_rotary(hf_model, scaling)
    meta = metadata(source, revision, hf_model, scaling, data, corpus, precision, eval_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = typed(LoggerConfig, plain.get("logger") or {"name": "jsonl"})
    tracker = build_tracker(logger, str(out_dir), meta["config"], meta["run_name"], "hf", job_type="eval")
    try:
        target = ReportTarget(out_dir, tracker, device, meta)
        model = PretrainedLM(hf_model)
        document = evaluate_and_report(model, corpus.val, corpus.separator_id, eval_cfg, precision, target)
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


def typed(schema: type, values: dict) -> Any:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))


def metadata(
    source, revision, hf_model, scaling, data, corpus, precision: Precision, eval_cfg: EvalConfig
) -> dict:
    """results.json's record of the model (name, revision, commit), its scaling, data and settings."""
    record = model_record(source, revision, hf_model)
    label = model_label(source, scaling.kind)
    train_len = scaling.original_max_position or record["max_position_embeddings"]
    config = {
        "encoding": {"name": "hf", "scaling": dataclasses.asdict(scaling)},
        "model": {"name": source, "revision": revision},
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
