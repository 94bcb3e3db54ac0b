"""Stop requests: SIGTERM (SLURM preemption, ``scancel``), SIGINT (Ctrl-C) and SIGUSR2 (submitit's
preemption and time-limit signal) end a run after the current step, with a checkpoint.

The handler only records the signal; the trainer polls ``requested`` once per step (all ranks agree
through one all-reduce), writes a checkpoint and stops. The same signal a second time stops at once
(``Interrupted`` raised from the handler, no checkpoint). Handlers that were installed before (submitit's
requeue handler) run once the checkpoint is written, so a requeued job resumes from it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Callable, Optional

# the same signal again within this many seconds is one delivery seen twice, not a second request
REPEAT_S = 1.0
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR2", None)) if s)


class Interrupted(Exception):
    """The run stopped on a signal; ``exit_code`` is the shell's 128 + signal number (SIGTERM: 143)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequests:
    """A context that turns ``STOP_SIGNALS`` into a flag; outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}
        self.at_once: Optional[str] = None  # set: the next signal stops at once, with this message
        self.first_at = 0.0  # time.monotonic() of the first signal

    @property
    def requested(self) -> Optional[int]:
        """The first stop signal received, or None."""
        return self.received[0] if self.received else None

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        if self.at_once is not None:
            raise Interrupted(signum, f"{signal_name(signum)}: {self.at_once}")
        if signum in self.received:
            if time.monotonic() - self.first_at < REPEAT_S:
                return  # one signal delivered twice (SLURM signals every task; torchrun's agent forwards it)
            raise Interrupted(signum, f"{signal_name(signum)} again: stopped at once, without a checkpoint")
        first = not self.received
        self.received.append(signum)
        self.first_at = time.monotonic() if first else self.first_at
        if first:
            print(
                f"{signal_name(signum)} received: stopping after this step with a checkpoint "
                "(send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def previous_handlers(self) -> list[tuple[int, Callable]]:
        """The handlers the received signals had before (e.g. submitit's requeue), to run after the
        checkpoint; Python's own KeyboardInterrupt handler is left out (it would print a traceback)."""
        return [
            (signum, handler)
            for signum in self.received
            if callable(handler := self._previous.get(signum)) and handler is not signal.default_int_handler
        ]
