"""The task registry: ``task=NAME`` -> (its config schema, its ``Task`` class). Each task class
registers itself with ``@TASKS.register("name", ItsConfig)``."""

from __future__ import annotations

from posbench.common.registry import Registry

TASKS = Registry("task", "schema/task")
