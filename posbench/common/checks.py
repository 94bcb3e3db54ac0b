"""Range checks for config values, each failing with one line that names the key and the fix; and
the one way a user error ends the process (``exit_with``).

The config dataclasses call these from ``__post_init__``, which runs when the composed config is
made typed (``config.to_run_config``): before any data is read or any step is taken.
"""

from __future__ import annotations

import re
import sys
from typing import Optional

USER_ERROR = 2  # the exit status of a config, input or folder a user can fix


def at_least(
    key: str, value: Optional[float], low: float, meaning: str = "", allow_none: bool = False
) -> None:
    """``value >= low`` (or None where ``allow_none``); ``meaning`` says what the key is for."""
    if value is None and allow_none:
        return
    if value is None or value < low:
        none = " or null" if allow_none else ""
        raise ValueError(f"{key}={value} must be at least {_number(low)}{none}{_why(meaning)}")


def above(key: str, value: float, low: float, meaning: str = "") -> None:
    """``value > low``."""
    if not value > low:
        raise ValueError(f"{key}={value} must be greater than {_number(low)}{_why(meaning)}")


def within(
    key: str, value: float, low: float, high: float, meaning: str = "", open_high: bool = False
) -> None:
    """``low <= value <= high`` (``< high`` where ``open_high``)."""
    if not (low <= value < high if open_high else low <= value <= high):
        bracket = ")" if open_high else "]"
        raise ValueError(f"{key}={value} must be in [{_number(low)}, {_number(high)}{bracket}{_why(meaning)}")


def one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _why(meaning: str) -> str:
    return f" ({meaning})" if meaning else ""


def one_line(exc: BaseException) -> str:
    """An error a user can fix, in one line; an OmegaConf error raised while resolving a value (e.g. a
    resolver's own ValueError for ``train.init_from=/missing``) says only its cause."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\w+ raised while resolving interpolation: ", "", text)


def unknown_key(key: str) -> str:
    """The one line for a config key that no schema has (a typo, or ``+key=`` of a missing option)."""
    return (
        f"{key} is not an option of this config; check its spelling (--cfg job prints every key with "
        "its value)"
    )


def exit_with(message: str, code: int = USER_ERROR) -> None:
    """Print ``message`` (one line a user can act on) to stderr and exit with ``code``; an empty
    message exits silently (ranks other than 0: rank 0 says it once)."""
    if message:
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)
