"""Names of evaluation runs: ``<encoding>_L<train_len>`` from the checkpoint, in the folder name too.

Hydra fixes ``hydra.run.dir`` before the job reads the checkpoint, so the folder name comes
from an OmegaConf resolver, ``${posbench_checkpoint_label:PATH}``. ``configs/eval.yaml``
registers it through a Hydra callback: Hydra instantiates callbacks after composing the
config and before it resolves ``hydra.run.dir``, so no entry-point code has to know about it.
"""

from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from posbench.training.checkpoint import CheckpointError, load_checkpoint

RESOLVER = "posbench_checkpoint_label"
UNREADABLE = "checkpoint"  # the job itself then says, in one line, what is wrong with the file


def config_label(config: dict) -> str:
    """``alibi_L2048`` for a run config dict, as in training folder names."""
    encoding = config['encoding']
    return f"{encoding.get('members', encoding['name'])}_L{config['train']['seq_len']}"  # hybrids: sinusoidal+alibi


def checkpoint_label(path: str) -> str:
    try:
        return config_label(load_checkpoint(path)["config"])
    except (CheckpointError, KeyError, TypeError):
        return UNREADABLE


class RegisterCheckpointLabel(Callback):
    """Hydra callback (``hydra.callbacks`` in configs/eval.yaml) that registers the resolver."""

    def __init__(self) -> None:
        OmegaConf.register_new_resolver(RESOLVER, checkpoint_label, replace=True, use_cache=True)
