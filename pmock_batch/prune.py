"""``--prune``: the files of jobs the job file no longer has, listed and removed.

:func:`stale_files` lists them (``--dry-run --prune`` prints the list);
:func:`prune_stale` deletes them, through no link, and logs each job. Their
manifest records go in the compaction that follows the run.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from pathlib import Path

from .config import MANIFEST_NAME
from .errors import OutputPathError
from .events import PARTIALS_DIR
from .files import contained_file, remove_empty_folders, remove_file
from .manifest import stale_records

__all__ = ["prune_stale", "stale_files"]

log = logging.getLogger("pmock_batch")


def stale_files(
    out_dir: Path, current: Set[str], *, keep: Set[str] = frozenset()
) -> list[tuple[str, list[Path]]]:
    """``(job, its files)`` for each job the manifest records but the job file no longer has.

    Only regular files inside OUT are listed (see :func:`~pmock_batch.files.contained_file`),
    and never one a current job writes: ``keep`` holds the current jobs' name stems
    (``x-1`` of a job ``x`` with ``n: 2`` may be an old job's ``x-1.png`` too).
    """
    out: list[tuple[str, list[Path]]] = []
    for record in stale_records(out_dir / MANIFEST_NAME, current):
        name = str(record.get("id") or f"line {record.get('line')}")
        listed = [
            item
            for key in ("files", "partials")  # a streamed job's saved partials go with it
            if isinstance(record.get(key), list)
            for item in record[key]
            if isinstance(item, dict)
        ]
        paths = [
            path
            for item in listed
            if (path := contained_file(out_dir, str(item.get("path", "")))) is not None
            and _stem(path.relative_to(out_dir)) not in keep
        ]
        out.append((name, paths))
    return out


def _stem(relative: Path) -> str:
    """The job stem a file in OUT belongs to: ``a/b`` of ``a/b.png``, and of a partial
    ``.partials/a/b.0.png``."""
    if relative.parts[0] == PARTIALS_DIR:
        return relative.relative_to(PARTIALS_DIR).with_suffix("").with_suffix("").as_posix()
    return relative.with_suffix("").as_posix()


def prune_stale(out_dir: Path, current: Set[str], keep: Set[str]) -> int:
    """Delete the files of jobs no longer in the job file; log each. Returns the job count.

    Their manifest records go in the compaction that follows. Files named by a
    current job's stem (``keep``) stay: they are that job's now.
    """
    stale = stale_files(out_dir, current, keep=keep)
    for name, paths in stale:
        for path in paths:
            relative = path.relative_to(out_dir).as_posix()
            try:  # checked again as it goes: never through a link
                remove_file(out_dir, relative)
                remove_empty_folders(out_dir, relative)  # icons/home.png: icons/ if empty
            except OutputPathError as exc:  # a link appeared since: left alone
                log.warning("%s", exc, extra={"event": "warning", "reason": str(exc)})
        shown = ", ".join(str(p.relative_to(out_dir)) for p in paths) or "no files"
        log.warning(
            "pruned %s (no longer in the job file): %s",
            name,
            shown,
            extra={"event": "pruned", "job_id": name, "files": len(paths)},
        )
    return len(stale)
