"""Atomic file writes: a temp file in the target's folder, renamed over it when complete.

A kill (SIGKILL, power loss) during a write can leave the temp file ``.tmp-*`` behind, never a
half-written target; ``remove_stale_temps`` clears them (a run does so in its folder when it starts).
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional

TEMP_PREFIX = ".tmp-"
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space (or quota) left while writing a file; the message names it and what to do."""


def disk_full_cause(exc: BaseException) -> Optional[OSError]:
    """The ENOSPC/EDQUOT error behind ``exc``, if any: torch.save reports it as a RuntimeError
    ("enforce fail ...") whose context is the OSError."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_error(path: Path, existed: bool) -> DiskFullError:
    kept = f"the previous {path.name} is kept" if existed else "nothing was written"
    error = DiskFullError(
        f"no space left on the device while writing {path} ({kept}); free space there or point "
        "run_root=... at another disk"
    )
    error.errno = errno.ENOSPC
    return error


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Yield a handle whose content replaces ``path`` only once the block ends without error:
    a reader or a kill never sees half a file, and a failed write leaves the old file and no temp.
    A full disk raises ``DiskFullError`` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # a full disk can report itself only here
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if disk_full_cause(exc) is not None:
            raise disk_full_error(path, path.exists()) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def remove_stale_temps(*folders: str | Path) -> list[Path]:
    """Delete the ``.tmp-*`` files that killed atomic writes left directly in ``folders``; returns them.
    Only call this on folders no other process is writing into (a run's own folder)."""
    removed = []
    for folder in map(Path, folders):
        if folder.is_dir():
            for temp in folder.glob(TEMP_PREFIX + "*"):
                if temp.is_file():
                    temp.unlink(missing_ok=True)
                    removed.append(temp)
    return removed
