"""A new run from a parent's weights (``train.init_from``): check that they fit, then load them.

Only the weights come over: the optimiser, its schedule, the data position and the RNG start fresh,
as for any new run. The encoding may differ from the parent's only in its options (a RoPE scaling,
PoSE or randomized positions, ...), as for ``posbench eval``; the model shape and the data's tokens
must be the parent's.
"""

from __future__ import annotations

from typing import Optional

import torch

from posbench.config import RunConfig, to_plain_dict
from posbench.runs.checkpoint import RUN_ENTRIES, load_checkpoint
from posbench.runs.identity import experiment_config

WEIGHT_DEFINING_ENCODING_KEYS = ("name", "members")  # what picks the encoding's class and its weights


def differences(theirs: dict, mine: dict, prefix: str) -> list[str]:
    keys = sorted(set(theirs) | set(mine))
    return [
        f"{prefix}.{k}: parent {theirs.get(k)}, this run {mine.get(k)}"
        for k in keys
        if theirs.get(k) != mine.get(k)
    ]


def mismatch(parent: dict, run: RunConfig, vocab_size: int, fingerprint: str) -> Optional[str]:
    """What keeps the parent's weights out of this run's model, or None."""
    theirs, mine = parent["config"], to_plain_dict(run)
    encoding = [
        d
        for d in differences(theirs["encoding"], mine["encoding"], "encoding")
        if d.split(":")[0].split(".")[1] in WEIGHT_DEFINING_ENCODING_KEYS
    ]
    model = differences(experiment_config(theirs).get("model", {}), experiment_config(mine)["model"], "model")
    data = []
    if parent.get("corpus_fingerprint") not in (None, fingerprint) or parent.get("vocab_size") != vocab_size:
        data = [f"data: parent tokens {parent.get('corpus_fingerprint')}, this run {fingerprint}"]
    found = encoding + model + data
    return "; ".join(found) if found else None


def initialise_from_parent(model: torch.nn.Module, run: RunConfig, vocab_size: int, fingerprint: str) -> None:
    """Load ``run.parent``'s weights into ``model``, or ValueError naming what differs."""
    path = run.parent["checkpoint"]
    parent = load_checkpoint(path, require=(*RUN_ENTRIES, "model"))
    if parent["step"] != run.parent["step"]:
        raise ValueError(
            f"train.init_from={run.train.init_from}: the checkpoint is at step {parent['step']}, not the "
            f"recorded step {run.parent['step']} (is the parent still training?); start again once it is done"
        )
    problem = mismatch(parent, run, vocab_size, fingerprint)
    if problem is None:
        try:
            model.load_state_dict(parent["model"])
        except RuntimeError as exc:  # e.g. a learned table of another length
            problem = " ".join(str(exc).split()[:30])
    if problem is not None:
        raise ValueError(
            f"train.init_from={run.train.init_from}: the parent's weights do not fit this run's model "
            f"({problem}); only the encoding's options and the training settings may differ"
        )
