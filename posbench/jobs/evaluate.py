"""``posbench eval``: load a checkpoint, apply the overrides, evaluate at ``eval.lengths`` (no retraining).

The run config is the checkpoint's own, with three things laid over it: this command's eval
group, its device, and the inference-time overrides it names (see configs/eval.yaml). Only
settings that leave the trained weights' meaning intact may be overridden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from posbench.common.options import Role
from posbench.common.runtime import check_precision, machine_description, resolve_device
from posbench.config import RunConfig, group_roles, group_schemas, to_plain_dict, to_run_config
from posbench.evaluation.report import ReportTarget, run_metadata
from posbench.jobs.workload import Workload, workload_of
from posbench.model.transformer import Transformer
from posbench.runs.checkpoint import RUN_ENTRIES, load_checkpoint
from posbench.runs.identity import RunIdentity
from posbench.tracking import Tracker, build_tracker
from posbench.training.resume import RUN_FILES

EVAL_KEYS = (
    "checkpoint",
    "hf",
    "passkey",
    "eval",
    "device",
    "run_root",
)  # the rest: overrides
# the groups whose keys' roles (common/options.py) may let an evaluation override them
OVERRIDABLE = ("encoding", "model", "train", "logger", "task")
EVAL_CONFIG_YAML = "eval_config.yaml"


def refused_keys(group: str, values: dict) -> list[str]:
    """The keys of ``values`` an evaluation may not change; a key no schema of the group knows is left
    to the schema's own message (where the group's schemas take any option at evaluation)."""
    roles, schemas = group_roles(group), group_schemas()[group]
    unknown_ok = all(getattr(s, "OPTION_ROLE", Role()).at_eval for s in schemas)
    return sorted(k for k in values if not (roles[k].at_eval if k in roles else unknown_ok))


def allowed_overrides(group: str) -> str:
    """What an evaluation may override in ``group``, for a message."""
    roles = group_roles(group)
    refused = [k for k, role in roles.items() if not role.at_eval]
    if not refused:
        return f"any {group} option"
    if len(refused) < len(roles) / 2:
        return f"any {group} option but {', '.join(f'{group}.{k}' for k in sorted(refused))}"
    return ", ".join(f"{group}.{k}" for k, role in roles.items() if role.at_eval)


def eval_overrides(plain: dict[str, Any]) -> dict[str, dict]:
    """The overrides in a composed eval config, refused unless every key is inference-time."""
    overrides = {k: v for k, v in plain.items() if k not in EVAL_KEYS}
    for group, values in overrides.items():
        if group not in OVERRIDABLE or not isinstance(values, dict):
            raise ValueError(
                f"posbench eval cannot override {group!r}; it may override "
                f"{', '.join(OVERRIDABLE)} (e.g. +encoding.base=20000)"
            )
        bad = refused_keys(group, values)
        if bad:
            can = allowed_overrides(group)
            raise ValueError(
                f"posbench eval cannot override {', '.join(f'{group}.{k}' for k in bad)}: it would change "
                f"what the trained weights mean; it may override {can}"
            )
    return overrides


def checkpoint_run_config(saved: dict, eval_cfg: dict, overrides: dict, device: str) -> RunConfig:
    """The checkpoint's config with the overrides, this command's eval group and its device on top."""
    merged = OmegaConf.merge(
        OmegaConf.create(saved), overrides, {"eval": eval_cfg, "train": {"device": device}}
    )
    try:
        return to_run_config(OmegaConf.to_container(merged, resolve=True))
    except (ConfigKeyError, ValidationError, ValueError) as exc:  # a key or value its schemas lack
        message = str(exc).splitlines()[0]
        if isinstance(exc, (ConfigKeyError, ValidationError)):
            message += f" (at {exc.full_key})"
        if message.startswith("encoding.") or str(getattr(exc, "full_key", "")).startswith("encoding"):
            options = ", ".join(k for k in saved["encoding"] if k != "name") or "none"
            message += f"; the checkpoint's {saved['encoding']['name']} encoding has options: {options}"
        raise ValueError(message) from None


def load_model(run: RunConfig, ckpt: dict, work: Workload, device) -> Transformer:
    if ckpt.get("corpus_fingerprint") not in (None, work.fingerprint):
        raise ValueError(
            f"the checkpoint was trained on data {ckpt['corpus_fingerprint']}, but its config now "
            f"gives {work.fingerprint}: the tokens would not mean what they meant in training"
        )
    model = Transformer(run.model, run.encoding, ckpt["vocab_size"]).to(device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(
            f"the checkpoint's weights do not fit the model these overrides build; only inference-time "
            f"options may change ({' '.join(str(exc).split()[:40])})"
        ) from None
    return model


def check_eval_folder(out_dir: Path) -> None:
    """An evaluation writes into a folder of its own: never one holding a training run or another
    evaluation (their results.json and metrics.jsonl would be replaced or mixed)."""
    held = [name for name in (*RUN_FILES, EVAL_CONFIG_YAML) if (out_dir / name).exists()]
    if held:
        what = "another evaluation" if EVAL_CONFIG_YAML in held else "a training run"
        raise ValueError(
            f"{out_dir} holds {what} ({', '.join(held)}); an evaluation writes into a new folder of its "
            "own: leave hydra.run.dir unset, or point it at an empty folder"
        )


def save_eval_config(out_dir: Path, checkpoint: str, overrides: dict, run: RunConfig) -> None:
    """The resolved config this evaluation ran with, beside its results."""
    resolved = {"checkpoint": checkpoint, "overrides": overrides, **to_plain_dict(run)}
    OmegaConf.save(OmegaConf.create(resolved), out_dir / EVAL_CONFIG_YAML)


def eval_tracker(
    run: RunConfig, identity: RunIdentity, out_dir: Path, checkpoint: str, overrides: dict
) -> tuple[Tracker, str]:
    """The evaluation's tracker and run name, from ``identity``: the evaluated config's (the
    checkpoint's, overrides included)."""
    name = f"{identity.name}-eval"
    config = {
        "checkpoint": checkpoint,
        "overrides": overrides,
        **to_plain_dict(run),
        "identity": identity.to_dict(),
    }
    group = run.logger.group or run.experiment_name
    return build_tracker(run.logger, str(out_dir), config, name, group, job_type="eval"), name


def evaluate_checkpoint(cfg: DictConfig, out_dir: str | Path) -> dict:
    # Unresolved: an override's "${train.seq_len}" (e.g. a RoPE scaling's original length)
    # must mean the checkpoint's training length, which only the merged config knows.
    plain = OmegaConf.to_container(cfg, resolve=False)
    checkpoint, overrides = str(cfg.checkpoint), eval_overrides(plain)
    pretrained_only = sorted(f"hf.{k}" for k, v in (plain.get("hf") or {}).items() if v not in (None, "auto"))
    if (plain.get("passkey") or {}).get("lengths"):
        pretrained_only.insert(0, "passkey.lengths")
    if pretrained_only:
        raise ValueError(
            f"{', '.join(pretrained_only)} apply to hf= evaluations, not to a checkpoint's: drop them"
        )
    ckpt = load_checkpoint(checkpoint, require=RUN_ENTRIES)
    run = checkpoint_run_config(ckpt["config"], plain["eval"], overrides, str(cfg.device))
    device = resolve_device(run.train.device)
    check_precision(device, run.train.precision)
    work = workload_of(run)
    model = load_model(run, ckpt, work, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_eval_config(out_dir, checkpoint, overrides, run)
    identity = RunIdentity.of(run)
    tracker, name = eval_tracker(run, identity, out_dir, checkpoint, overrides)
    provenance = {"run_name": name, "checkpoint": checkpoint, "overrides": overrides}
    meta = run_metadata(
        run,
        identity,
        model,
        work.info,
        {
            **provenance,
            "step": ckpt["step"],
            "tokens_seen": ckpt["tokens_seen"],
            "machine": machine_description(device),
        },
    )
    try:
        return work.report(model, ReportTarget(out_dir, tracker, device, meta))
    finally:
        tracker.close()
