"""Paths inside the output directory: which files the tool may read, hash or delete.

Everything the tool reads back from OUT because a manifest record names it
(resume, ``--verify``, ``--prune``) goes through :func:`contained_file`: a
record is text anyone may have edited, so a path that leaves OUT
(``../secret.txt``, ``/etc/passwd``), goes through a symbolic link, or names
something other than a regular file (``/dev/zero``, a FIFO) is treated as
missing. Reads are bounded by the size the record promises.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

__all__ = ["contained_file", "sha256_of"]

_HASH_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def contained_file(out_dir: Path, relative: str) -> Path | None:
    """``out_dir/relative`` when it is a regular file inside ``out_dir`` reached through no link.

    ``out_dir`` itself may be a link (as it may be for a run). Returns None for
    anything else: an absolute path, ``..``, a link anywhere below ``out_dir``,
    a missing file, a folder or a device.
    """
    if not relative or relative.startswith(("/", "\\")) or "\\" in relative or ":" in relative:
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    path = out_dir
    try:
        for index, part in enumerate(parts):
            path = path / part
            mode = os.lstat(path).st_mode
            last = index == len(parts) - 1
            if not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
                return None  # a link (lstat does not follow it), a device, a FIFO...
    except OSError:
        return None
    return path


def sha256_of(path: Path, size: int) -> str | None:
    """The SHA-256 of a regular file that has exactly ``size`` bytes, else None.

    Opened without following a link and checked to be a regular file after
    opening, and never read past ``size`` bytes (plus one, to see it is longer).
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        left = size + 1
        while left > 0 and (chunk := fh.read(min(_HASH_CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk)
        return digest.hexdigest() if left == 1 else None
