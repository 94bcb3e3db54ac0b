"""One registry type for every named choice a user types: encodings, RoPE scalings, temperatures,
remaps, corpora, tasks.

A registry maps a name to its config schema (a dataclass) and, where it has one, its
implementation (a class, or any object). It registers by decorator, looks names up with a one-line
error that lists the known ones, turns a plain mapping (from YAML, a checkpoint or a results file)
into the kind's typed config, and stores its schemas in Hydra's ConfigStore.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Optional


@dataclass(frozen=True)
class Entry:
    name: str
    schema: type
    implementation: Any = None


class Registry:
    """Named choices of one kind.

    ``what`` names the choice in messages (``encoding``, ``encoding.scaling.kind``); ``key`` is the
    schema field that holds the name (``name``, or ``kind``); ``group`` is the ConfigStore group the
    schemas go to (``schema/encoding``); ``default`` is the choice ``coerce(None)`` means."""

    def __init__(self, what: str, group: str, key: str = "name", default: Optional[str] = None) -> None:
        self.what, self.group, self.key, self.default = what, group, key, default
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, schema: type, implementation: Any = None) -> None:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = Entry(name, schema, implementation)

    def register(self, name: str, schema: type) -> Callable[[Any], Any]:
        """A decorator: ``@ENCODINGS.register("alibi", AlibiConfig)`` above ``class Alibi``."""

        def add(implementation: Any) -> Any:
            self.add(name, schema, implementation)
            return implementation

        return add

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self._entries)}")
        return self._entries[name]

    def schema(self, name: str) -> type:
        return self.entry(name).schema

    def schemas(self) -> list[type]:
        return [entry.schema for entry in self._entries.values()]

    def implementation(self, name: str) -> Any:
        return self.entry(name).implementation

    def structured(self, name: str) -> Any:
        """The OmegaConf node of ``name``'s schema, to merge a plain mapping over."""
        from omegaconf import OmegaConf

        return OmegaConf.structured(self.schema(name))

    def coerce(self, value: Any, where: Optional[str] = None) -> Any:
        """None (the default choice), a schema instance, or a plain mapping naming its choice by
        ``key`` -> the choice's typed config; a bad mapping fails in one line naming its keys, under
        ``where`` (by default the registry's group and the choice: ``encoding (rope)``)."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        if value is None and self.default is not None:
            return self.schema(self.default)()
        if any(isinstance(value, e.schema) for e in self._entries.values()):
            return value
        if not isinstance(value, Mapping) and not OmegaConf.is_dict(value):
            where = self.what.rpartition(".")[0] or self.what
            raise ValueError(f"{where} must be a mapping with a {self.key}, got {value!r}")
        plain = dict(OmegaConf.to_container(value) if OmegaConf.is_dict(value) else value)
        name = plain.get(self.key, self.default)
        schema = self.schema(name)
        try:
            typed = OmegaConf.merge(OmegaConf.structured(schema), plain)
        except OmegaConfBaseException as exc:
            where = where or f"{self.what.rpartition('.')[0] or self.what} ({name})"
            valid = ", ".join(f.name for f in fields(schema))
            raise ValueError(f"{where}: {str(exc).splitlines()[0]}; its keys are {valid}") from None
        return OmegaConf.to_object(typed)

    def store(self, store: Any = None) -> None:
        """Each schema in Hydra's ConfigStore as ``<group>/<name>``."""
        from hydra.core.config_store import ConfigStore

        store = store or ConfigStore.instance()
        for entry in self._entries.values():
            store.store(group=self.group, name=entry.name, node=entry.schema)
