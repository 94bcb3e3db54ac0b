"""One writer per run folder: an OS-level lock that a train or eval job holds on its folder for its life.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<folder>/.posbench.lock``, taken before the job
writes anything there and released by the kernel when the process ends, however it ends (kill -9
included): no stale lock to clean up. While it is held, the file names its holder (host, pid, command,
since when), so a second job for the same folder is refused in one line that says who has it.

Where it holds: local file systems; NFS v4, and v3 with its lock daemon (NLM), across machines (the
Linux NFS client sends POSIX locks to the server); GPFS/Spectrum Scale. Lustre holds it across nodes only
when mounted with ``-o flock``; mounted with ``-o localflock`` the lock is seen on one node only, and
without either option taking it fails: the job is then refused, saying so. BeeGFS needs its global file
locks (``tuneUseGlobalFileLocks``) for the lock to span nodes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from posbench.common.distributed import broadcast_from_main
from posbench.common.runtime import Dist

LOCK_FILE = ".posbench.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_HELD: set[Path] = set()  # POSIX locks never conflict within one process: its own folders, checked here


class FolderInUse(ValueError):
    """Another live process holds the folder."""


def holder_record(job: str) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job": job,
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "since_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"{h['job']} pid {h['pid']} on {h['host']} (since {h['since_utc']}: {h['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process (it has not yet written who it is)"


def _lock(fd: int, folder: Path) -> None:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            holder = describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            raise FolderInUse(
                f"{folder} is in use by {holder}; wait for it to end, or run in another folder"
            ) from None
        if exc.errno in _UNSUPPORTED:
            raise ValueError(
                f"cannot lock {folder}: its file system does not take POSIX locks ({exc.strerror}); put "
                "run_root on one that does (on Lustre: mounted with -o flock)"
            ) from None
        raise


@contextlib.contextmanager
def hold_folder(folder: str | Path, job: str) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for the ``with`` block, or raise ``FolderInUse`` naming
    the process that holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        raise FolderInUse(f"{folder} is in use by this process already; run in another folder")
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, folder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_record(job)).encode(), 0)
        _HELD.add(key)
        try:
            yield folder
        finally:
            _HELD.discard(key)
            os.ftruncate(fd, 0)  # the file stays: removing it would race another process's open
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def held_by_main(folder: Path, job: str, layout: Dist) -> Iterator[None]:
    """Under torchrun rank 0 holds ``folder`` (the only rank that writes there); a refusal reaches
    every rank, so all stop with it."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if layout.is_main:
            try:
                stack.enter_context(hold_folder(folder, job))
            except ValueError as exc:
                refusal = (isinstance(exc, FolderInUse), str(exc))
        refusal = broadcast_from_main(refusal)
        if refusal is not None:
            in_use, message = refusal
            raise (FolderInUse if in_use else ValueError)(message)
        yield
