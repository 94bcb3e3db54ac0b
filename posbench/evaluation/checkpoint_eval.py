"""``posbench eval``: evaluate a saved checkpoint at ``eval.lengths`` without retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posbench.config import to_run_config
from posbench.data import load_corpus
from posbench.evaluation.run import evaluate_and_report, run_metadata
from posbench.model.transformer import Transformer
from posbench.runtime import resolve_device
from posbench.tracking import build_tracker
from posbench.training.checkpoint import load_checkpoint


def checkpoint_run_config(saved: dict, eval_cfg: dict, overrides: dict) -> Any:
    """The checkpoint's config with this command's eval group and encoding overrides on top."""
    merged = OmegaConf.merge(OmegaConf.create(saved), {"eval": eval_cfg}, overrides)
    return to_run_config(OmegaConf.to_container(merged, resolve=True))


def evaluate_checkpoint(cfg: DictConfig, out_dir: str | Path) -> dict:
    ckpt = load_checkpoint(cfg.checkpoint)
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True, enum_to_str=True)
    overrides = OmegaConf.to_container(cfg.overrides, resolve=True)
    run = checkpoint_run_config(ckpt["config"], eval_cfg, overrides)
    device = resolve_device(run.train.device)
    corpus = load_corpus(run.data)
    model = Transformer(run.model, run.encoding, ckpt["vocab_size"]).to(device)
    model.load_state_dict(ckpt["model"])
    out_dir = Path(out_dir)
    OmegaConf.save(OmegaConf.create(eval_cfg), out_dir / "eval_config.yaml")
    name = f"{model.encoding.label}-L{run.train.seq_len}-s{run.train.seed}-eval"
    tracker = build_tracker(run.logger, str(out_dir), {"checkpoint": str(cfg.checkpoint), **ckpt["config"]}, name,
                            run.logger.group or run.experiment_name, job_type="eval")
    meta = run_metadata(run, model, corpus.info, {"run_name": name, "checkpoint": str(cfg.checkpoint),
                                                  "step": ckpt["step"], "tokens_seen": ckpt["tokens_seen"]})
    try:
        return evaluate_and_report(model, corpus.val, corpus.separator_id, run, out_dir, tracker, device, meta)
    finally:
        tracker.close()
