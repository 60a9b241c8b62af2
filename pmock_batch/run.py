"""One batch run end to end: lock, clean up, resume, run, compact, report.

The engine (:mod:`pmock_batch.engine`) is the worker pool; this module puts
it between the output directory's lock, the cleanup of a crashed run's
temporary files, the resume index, and the manifest compaction and report
that follow a run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Set
from pathlib import Path

from .client import ImagesClient
from .config import MANIFEST_NAME, RunConfig
from .engine import Engine, RunObserver, Summary, Writer, commit
from .errors import OutputPathError, PmockBatchError
from .files import check_own_file, contained_file, remove_file, remove_stray_temps
from .jobs import InvalidLine, Job
from .lock import run_lock
from .manifest import ManifestWriter, compact, stale_records
from .pacing import Pacer
from .report import write_report
from .resume import DoneIndex
from .retry import RetryPolicy

__all__ = ["prune_stale", "run_batch", "stale_files"]

log = logging.getLogger("pmock_batch")


async def run_batch(
    config: RunConfig,
    jobs: Iterable[Job | InvalidLine],
    *,
    policy: RetryPolicy | None = None,
    observer: RunObserver | None = None,
    on_engine: Callable[[Engine], None] | None = None,
    resume: bool = True,
    verify: bool = False,
    writer: Writer = commit,
    pacer: Pacer | None = None,
    prune: bool = False,
) -> Summary:
    """Run a batch end to end, holding the output directory's lock.

    It removes temporary files a crashed run left, skips jobs a previous run
    finished (unless ``resume`` is False, i.e. ``--force``), runs the rest,
    and compacts the manifest. Records of jobs no longer in the job file are
    kept, unless ``prune``: then they go, and so do their files (see
    :func:`prune_stale`). ``on_engine`` receives the engine before it
    starts, so a caller can wire signals to :meth:`Engine.stop`. ``writer``
    is injectable so tests can simulate a full disk or a crash mid-write.
    Raises :class:`~pmock_batch.errors.LockedError` if another run holds the
    lock, and :class:`~pmock_batch.errors.OutputPathError`, before anything is
    sent, if the manifest is a symbolic link (or not a regular file): nothing
    could be recorded, and it is never written through.
    """
    with run_lock(config.out_dir):
        check_own_file(config.out_dir, MANIFEST_NAME)
        await asyncio.to_thread(remove_stray_temps, config.out_dir)
        done = await asyncio.to_thread(DoneIndex.load, config.manifest_path) if resume else None
        async with (
            ImagesClient(config) as client,
            ManifestWriter(config.manifest_path) as manifest,
        ):
            engine = Engine(
                config,
                client,
                manifest,
                policy=policy,
                observer=observer,
                done=done,
                verify=verify,
                writer=writer,
                pacer=pacer,
            )
            if on_engine is not None:
                on_engine(engine)
            summary = await engine.run(jobs)
        try:
            if prune:
                await asyncio.to_thread(prune_stale, config.out_dir, engine.keys)
            await asyncio.to_thread(
                compact,
                config.manifest_path,
                engine.skipped_lines,
                current=engine.keys,
                prune=prune,
            )
        except OSError as exc:  # e.g. the disk is full: the log is still valid as it is
            log.warning(
                "could not compact the manifest (it stays a valid log): %s",
                exc,
                extra={"event": "warning", "reason": str(exc)},
            )
        try:
            await asyncio.to_thread(write_report, config.out_dir)
        except (OSError, PmockBatchError, ValueError) as exc:  # the images matter more
            log.warning(
                "could not write the report: %s",
                exc,
                extra={"event": "warning", "reason": str(exc)},
            )
    return summary


def stale_files(out_dir: Path, current: Set[str]) -> list[tuple[str, list[Path]]]:
    """``(job, its files)`` for each job the manifest records but the job file no longer has.

    Only regular files inside OUT are listed (see :func:`~pmock_batch.files.contained_file`).
    """
    out: list[tuple[str, list[Path]]] = []
    for record in stale_records(out_dir / MANIFEST_NAME, current):
        name = str(record.get("id") or f"line {record.get('line')}")
        files = record.get("files") if isinstance(record.get("files"), list) else []
        paths = [
            path
            for f in files or []
            if isinstance(f, dict)
            and (path := contained_file(out_dir, str(f.get("path", "")))) is not None
        ]
        out.append((name, paths))
    return out


def prune_stale(out_dir: Path, current: Set[str]) -> int:
    """Delete the files of jobs no longer in the job file; log each. Returns the job count.

    Their manifest records go in the compaction that follows.
    """
    stale = stale_files(out_dir, current)
    for name, paths in stale:
        for path in paths:
            relative = path.relative_to(out_dir).as_posix()
            try:  # checked again as it goes: never through a link
                remove_file(out_dir, relative)
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
