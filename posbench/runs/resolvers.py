"""posbench's OmegaConf resolvers: the values a config takes from outside itself, computed when it is
composed.

- ``${posbench_run_folder:}`` (``configs/train.yaml``'s ``hydra.run.dir`` and ``sweep.subdir``): the
  run identity's folder name of the config being composed (Hydra fixes the output folder before the
  job runs);
- ``${posbench_checkpoint_folder:PATH}``, ``${posbench_eval_folder:...}`` (``configs/eval.yaml``): the
  identity of the checkpoint's run, or ``hf-<model>``;
- ``${posbench_lengths:MIN,MAX[,STEP]}`` (``configs/eval/yarn.yaml``): evaluation lengths from MIN to
  MAX, doubling or STEP apart (the YaRN repository's ``--min-tokens``/``--max-tokens``/``--tokens-step``);
- ``${posbench_parent:PATH}``, ``${posbench_trained_length:...}`` (``configs/train.yaml``,
  ``configs/encoding/scaling/*.yaml``): ``train.init_from``'s parent record (``runs/lineage.py``).

The app registers them where it starts (``cli.py``); Hydra's ``RegisterResolvers`` callback
(``runs/callbacks.py``) registers them again in joblib workers.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from posbench.config import to_run_config
from posbench.pretrained.naming import model_label
from posbench.runs.checkpoint import saved_config
from posbench.runs.identity import RunIdentity
from posbench.runs.lineage import parent_record, trained_length

RUN_RESOLVER, CHECKPOINT_RESOLVER = "posbench_run_folder", "posbench_checkpoint_folder"
PARENT_RESOLVER, TRAINED_LENGTH_RESOLVER = "posbench_parent", "posbench_trained_length"
LENGTHS_RESOLVER = "posbench_lengths"
EVAL_RESOLVER = "posbench_eval_folder"  # configs/eval.yaml: a checkpoint's identity, or hf-<model>
UNREADABLE = "checkpoint"  # the job itself then says, in one line, what is wrong with the file
INVALID = "invalid-config"  # likewise for a config that does not validate


def run_folder(*, _root_: DictConfig) -> str:
    """The identity's folder name of the composed config this resolver is part of."""
    try:
        plain = {key: _root_[key] for key in _root_ if key != "hydra"}  # hydra's own keys hold this resolver
        return RunIdentity.of(to_run_config(OmegaConf.create(plain))).folder
    except Exception:
        return INVALID


def checkpoint_folder(path: str) -> str:
    config = saved_config(path)
    try:
        return RunIdentity.from_config(config).folder if config else UNREADABLE
    except (KeyError, TypeError, ValueError):
        return UNREADABLE


def eval_folder(checkpoint, hf=None, label=None, kind=None) -> str:
    """``posbench eval``'s folder name: the checkpoint's run identity, or ``hf-<label>``, the label
    of ``hf.name`` (``hf.label``, or the model's name and its scaling kind)."""
    if hf is not None:
        return "hf-" + "".join(c if c.isalnum() or c in "-_.+" else "_" for c in model_label(hf, kind, label))
    return checkpoint_folder(checkpoint) if checkpoint is not None else UNREADABLE


def length_range(low: int, high: int, step: int | None = None) -> list[int]:
    """MIN, 2·MIN, 4·MIN, ... up to MAX; or MIN, MIN+STEP, ... up to MAX (both ends included)."""
    low, high = int(low), int(high)
    if low < 1 or high < low or (step is not None and int(step) < 1):
        raise ValueError(
            f"posbench_lengths:{low},{high}{'' if step is None else f',{step}'} needs 1 <= MIN <= MAX "
            "and STEP >= 1"
        )
    if step is not None:
        return list(range(low, high + 1, int(step)))
    lengths = [low]
    while lengths[-1] * 2 <= high:
        lengths.append(lengths[-1] * 2)
    return lengths


def register_resolvers() -> None:
    OmegaConf.register_new_resolver(LENGTHS_RESOLVER, length_range, replace=True)
    OmegaConf.register_new_resolver(PARENT_RESOLVER, parent_record, replace=True, use_cache=True)
    OmegaConf.register_new_resolver(TRAINED_LENGTH_RESOLVER, trained_length, replace=True)
    OmegaConf.register_new_resolver(
        RUN_RESOLVER, run_folder, replace=True, use_cache=False
    )  # one per sweep job
    OmegaConf.register_new_resolver(CHECKPOINT_RESOLVER, checkpoint_folder, replace=True, use_cache=True)
    OmegaConf.register_new_resolver(EVAL_RESOLVER, eval_folder, replace=True, use_cache=True)
