"""The encoding registry: ``encoding=NAME`` -> (its config dataclass, its class).

Each encoding module registers its class with ``@ENCODINGS.register("name", NameConfig)``; importing
``posbench.encodings`` imports every module of the package, so a new module is registered by being
there.
"""

from __future__ import annotations

from posbench.common.registry import Registry

ENCODINGS = Registry("encoding", "schema/encoding")
COMPOSITES = ("hybrid", "layers")  # encodings made of other encodings


def member_choices() -> list[str]:
    """The encodings a hybrid or a per-layer schedule can be made of: every other one."""
    return sorted(name for name in ENCODINGS if name not in COMPOSITES)
