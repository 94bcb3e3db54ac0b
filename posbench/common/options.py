"""What an option is for, declared where the option is: on its schema field.

A config key's ``Role`` says three things, and the code that needs them reads them from here:

- ``experiment``: the key changes what is trained, so it is part of the run identity (run folders,
  ``train.resume``, ``posbench compare``'s rows; ``runs/identity.py``). Keys that only say where or
  how a run executes, logs, checkpoints or is tested are not.
- ``at_eval``: ``posbench eval`` may lay the key over a trained checkpoint (``jobs/evaluate.py``):
  it leaves what the trained weights mean intact.
- ``off``: an experiment key added after runs were first recorded, with the value that leaves the
  run as it was: left out of the identity while it has that value, so older runs keep their folders.

A field declares its role with ``option(...)``, ``execution(...)`` or ``at_test(...)``; a field that
declares none takes its schema class's ``OPTION_ROLE``. The most derived declaration counts, so a
subclass that only changes a default keeps its base's role. ``name``, unless declared, selects the
schema itself: part of the experiment, never changed at evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

ROLE = "posbench.role"  # the field metadata key
SELECTOR = "name"


class _Always:
    """``Role.off`` of an option that existed from the start (every run records it)."""

    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS: Any = _Always()


@dataclass(frozen=True)
class Role:
    experiment: bool = True  # counts in the run identity
    at_eval: bool = False  # posbench eval may override it on a checkpoint
    off: Any = ALWAYS  # an added option's off value: left out of the identity while it has it

    @property
    def added(self) -> bool:
        return self.off is not ALWAYS


SELECTOR_ROLE = Role()


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    experiment: bool = True,
    at_eval: bool = False,
    off: Any = ALWAYS,
) -> Any:
    """A dataclass field with its role: ``p_rope: float = option(1.0, off=1.0)``."""
    role = Role(experiment, at_eval, off)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={ROLE: role})


def execution(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field that says how a run executes, logs or checkpoints: not part of the experiment."""
    return option(default, default_factory=default_factory, experiment=False)


def at_test(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field that says how a trained model is tested: not the experiment; an evaluation may change it."""
    return option(default, default_factory=default_factory, experiment=False, at_eval=True)


def role_of(schema: type, key: str) -> Role:
    """``key``'s role in the dataclass ``schema``: the nearest declaration on its classes, else the
    schema's role for ``name`` (which picks the schema) or its ``OPTION_ROLE``."""
    for klass in schema.__mro__:
        declared = vars(klass).get("__dataclass_fields__", {}).get(key)
        if declared is not None and ROLE in declared.metadata:
            return declared.metadata[ROLE]
    return SELECTOR_ROLE if key == SELECTOR else getattr(schema, "OPTION_ROLE", Role())


def roles(schemas: Iterable[type]) -> dict[str, Role]:
    """Every key of these schemas (one config group's) -> its role; a key two schemas give different
    roles is refused (the group's identity would depend on which schema read it)."""
    found: dict[str, Role] = {}
    for schema in schemas:
        for f in dataclasses.fields(schema):
            role = role_of(schema, f.name)
            if found.setdefault(f.name, role) != role:
                raise TypeError(f"{schema.__name__}.{f.name} has role {role}, another schema {found[f.name]}")
    return found
