"""Checkpoints of schema 1, written before the fused q/k/v projection, read by this posbench.

Schema 1 held each layer's ``attn.q_proj.weight`` and ``attn.kv_proj.weight`` (k rows, then v
rows); their row concatenation is schema 2's ``attn.qkv_proj.weight``. AdamW's state is
elementwise, so its moments concatenate the same way and a resumed schema-1 run continues where
it stopped.
"""

from __future__ import annotations

import torch

FUSED = "qkv_proj.weight"
PARTS = ("q_proj.weight", "kv_proj.weight")


def fuse_projections(state_dict: dict, prefix: str) -> None:
    """In place: a schema-1 attention module's two projections (under ``prefix``) -> the fused one."""
    parts = [prefix + part for part in PARTS]
    if all(name in state_dict for name in parts):
        state_dict[prefix + FUSED] = torch.cat([state_dict.pop(name) for name in parts])


def schema1_names(name: str) -> list[str]:
    """The schema-1 parameters one of this model's parameters was made of."""
    return [name[: -len(FUSED)] + part for part in PARTS] if name.endswith(FUSED) else [name]


def fuse_optimizer_state(saved: dict, groups: list[list[str]]) -> dict:
    """A schema-1 optimiser state dict -> one for this model, whose parameter names per optimiser
    group, in the optimiser's order, are ``groups``. Refuses a state of another model's shape."""
    old = [[part for name in group for part in schema1_names(name)] for group in groups]
    if [len(group["params"]) for group in saved["param_groups"]] != [len(group) for group in old]:
        raise ValueError(
            "the checkpoint's optimiser state does not match this model's parameters; "
            "resume with the posbench version that wrote it"
        )
    index = {name: i for i, name in enumerate(name for group in old for name in group)}
    state, param_groups, new_index = {}, [], 0
    for saved_group, group in zip(saved["param_groups"], groups):
        ids = []
        for name in group:
            parts = [saved["state"].get(index[part]) for part in schema1_names(name)]
            if all(part is not None for part in parts):
                state[new_index] = {
                    key: torch.cat([p[key] for p in parts]) if parts[0][key].dim() else parts[0][key]
                    for key in parts[0]
                }
            ids.append(new_index)
            new_index += 1
        param_groups.append({**saved_group, "params": ids})
    return {"state": state, "param_groups": param_groups}
