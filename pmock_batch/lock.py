"""The run lock: one run at a time per output directory (``OUT/.lock``, ``fcntl.flock``).

The lock is released by the kernel when the process ends, however it ends,
so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LockedError
from .files import check_own_file

__all__ = ["LOCK_NAME", "held", "run_lock"]

LOCK_NAME = ".lock"


@contextmanager
def run_lock(out_dir: Path, name: str = LOCK_NAME, *, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` for the block; raise LockedError if taken.

    ``name`` is the lock file (a shard's is ``.lock.shard-K-of-N``). ``shared``
    takes a shared lock instead, as shards do on ``.lock``: many shards at
    once, but never beside an unsharded run, which holds it exclusive.

    A link (or anything but a regular file) at ``name`` raises
    :class:`~pmock_batch.errors.OutputPathError`: it is never written through.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    check_own_file(out_dir, name)
    path = out_dir / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockedError(
                f"another pmock-batch run (or shard) is using {out_dir} (it holds {path}); "
                "nothing was done"
            ) from exc
        if not shared:  # a shared lock's file names no one
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def held(out_dir: Path, name: str) -> bool:
    """Whether a running process holds the lock file ``out_dir/name`` exclusively.

    It only looks: the file is not created, and a shared probe taken for an
    instant is released at once.
    """
    try:
        fd = os.open(out_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
