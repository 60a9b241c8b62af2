"""Bringing a record's files from another output folder into OUT, verified, for ``merge``.

An image is copied only if it has its record's size and SHA-256: it is hashed
while it is copied into an :class:`~pmock_batch.files.AtomicFile`, and the
images of one record are renamed into place only all together. The source is
read through :func:`~pmock_batch.files.contained_file` (no link, nothing outside
the folder, regular files only) and opened with ``O_NOFOLLOW``. Only the paths
a run itself writes are accepted: images (no part starting with a dot, an
image extension) and saved partials (``.partials/...``); never the manifest,
the report, a lock or anything else the tool keeps.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputPathError
from .files import AtomicFile, contained_file, sha256_of
from .images import MAX_IMAGE_BYTES
from .models import FileRecord, PartialFile

__all__ = ["Brought", "bring_files", "bring_partials", "intact"]

_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_PARTIALS = ".partials/"


@dataclass(frozen=True, slots=True)
class Brought:
    """What :func:`bring_files` did: ``problem`` is why not, or None when every file is in OUT."""

    problem: str | None
    copied: int = 0
    present: int = 0


def _image_path(path: str) -> bool:
    parts = path.split("/")
    return path.endswith(_IMAGE_EXTENSIONS) and not any(p.startswith(".") for p in parts)


def _partial_path(path: str) -> bool:
    return path.startswith(_PARTIALS) and _image_path(path.removeprefix(_PARTIALS))


def intact(out: Path, files: Sequence[FileRecord]) -> bool:
    """Every file is in OUT already, with its size and SHA-256 (and there is at least one)."""
    for f in files:
        target = contained_file(out, f.path)
        if target is None or sha256_of(target, f.bytes) != f.sha256:
            return False
    return bool(files)


def _fill(tmp: AtomicFile, src: Path, size: int) -> str | None:
    """Copy at most ``size`` + 1 bytes of ``src`` (no link) into ``tmp``; their SHA-256 if
    there were exactly ``size``."""
    fd = os.open(src, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        digest, left = hashlib.sha256(), size + 1
        while left > 0 and (chunk := fh.read(min(_CHUNK, left))):
            digest.update(chunk)
            tmp.write(chunk)
            left -= len(chunk)
    return digest.hexdigest() if left == 1 else None


def bring_files(out: Path, folder: Path | None, files: Sequence[FileRecord]) -> Brought:
    """Copy ``files`` from ``folder`` (None: OUT itself) into OUT, all or none. Blocking."""
    pending: list[AtomicFile] = []
    present = 0
    try:
        for f in files:
            if not _image_path(f.path):
                return Brought(f"{f.path!r} is not an image path a run writes")
            target = contained_file(out, f.path)
            if target is not None and sha256_of(target, f.bytes) == f.sha256:
                present += 1
                continue
            src = None if folder is None else contained_file(folder, f.path)
            if src is None:
                return Brought(f"{f.path} is missing, not a regular file, or behind a link")
            tmp = AtomicFile(out, f.path)
            pending.append(tmp)
            if _fill(tmp, src, f.bytes) != f.sha256:
                return Brought(f"{f.path} does not match its recorded size and SHA-256")
        for tmp in pending:
            tmp.commit()
    except (OSError, OutputPathError) as exc:
        return Brought(f"cannot copy it: {exc}")
    finally:
        for tmp in pending:
            tmp.discard()  # after a commit, this only closes what is left
    return Brought(None, len(pending), present)


def bring_partials(out: Path, folder: Path, partials: Sequence[PartialFile]) -> list[str]:
    """Best effort: copy the saved partials that ``folder`` has intact; why not, for each."""
    problems: list[str] = []
    for p in partials:
        target = contained_file(out, p.path)
        if target is not None and sha256_of(target, target.stat().st_size) == p.sha256:
            continue
        src = contained_file(folder, p.path) if _partial_path(p.path) else None
        if src is None:
            continue
        why = "it does not match its recorded SHA-256"
        try:
            with AtomicFile(out, p.path) as tmp:
                size = src.stat().st_size
                if size <= MAX_IMAGE_BYTES and _fill(tmp, src, size) == p.sha256:
                    tmp.commit()
                    continue
        except (OSError, OutputPathError) as exc:
            why = str(exc)
        problems.append(f"partial {p.path} not copied: {why}")
    return problems
