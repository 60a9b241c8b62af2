"""One batch run end to end: lock, clean up, resume, run, compact, report.

:func:`run_batch` puts a runner between the output directory's lock, the
clean-up of a crashed run's temporary files, the resume index, and the
manifest compaction and report that follow. The runner seam is
:class:`~pmock_batch.pool.Runner`: given owed jobs, produce records. The
direct HTTP runner (:class:`~pmock_batch.attempt.DirectRunner`) is the first;
the :class:`~pmock_batch.pool.Pool` feeds it, and the :class:`Ledger` records
what it produces: the manifest, the one tally, the log and the observer.

:class:`Run` is the handle a caller gets (``on_start``): :meth:`Run.stop` for
signals, and :meth:`Run.status`, a snapshot the console draws from.

What the CLI checks and prepares before a run is in :mod:`pmock_batch.preflight`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .attempt import DirectRunner, Writer, commit
from .batchapi import BatchClient, BatchOptions, BatchRunner, held_rows
from .client import ImagesClient
from .config import MANIFEST_NAME, RunConfig
from .errors import PmockBatchError
from .failures import Where
from .files import check_own_file, remove_stray_temps
from .jobs import InvalidLine, Job
from .manifest import ManifestWriter, compact
from .models import FileRecord, JobRecord
from .pacing import Pacer
from .pool import Pool
from .prune import prune_stale
from .report import write_report
from .resume import DoneIndex
from .retry import RetryPolicy
from .shards import manifest_paths, out_lock
from .tally import Summary

__all__ = [
    "Ledger",
    "Run",
    "RunObserver",
    "RunStatus",
    "run_batch",
]


log = logging.getLogger("pmock_batch")


class RunObserver:
    """Hooks the console uses to show progress. The defaults do nothing."""

    def job_done(self, record: JobRecord) -> None:
        """A job finished (ok, failed, invalid or not run)."""

    def retrying(self, job_id: str, attempt: int, wait: float, reason: str) -> None:
        """An attempt failed and will be retried after ``wait`` seconds."""

    def job_skipped(self, job: Job) -> None:
        """A job was already done by an earlier run (resume)."""


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A snapshot of a run, for the console: the counts, and what the pool is doing."""

    summary: Summary  # the one tally (read only)
    in_flight: int  # requests at the server now (not jobs waiting to retry)
    retrying: int  # jobs waiting to retry
    held_for: float  # seconds the pool is held by the rate limit (0: not held)
    stopping: bool
    streaming: tuple[tuple[str, int], ...] = ()  # (job id, partials so far) of streams in flight
    batch_api: bool = False  # the jobs are in Batch API batches: the run waits on them


class Ledger:
    """Records what the runner produces: the manifest, the tally, the log, the observer.

    It also says which jobs an earlier run finished (resume), and keeps what
    the compaction needs: every job of the file, and the lines of skipped ones.
    """

    def __init__(
        self,
        manifest: ManifestWriter,
        out_dir: Path,
        *,
        done: DoneIndex | None,
        verify: bool,
        observer: RunObserver,
        on_write_error: Callable[[str], None],
        in_batches: Mapping[str, str] | None = None,
    ) -> None:
        self.manifest = manifest
        self.held = in_batches or {}  # custom_id -> fingerprint: rows a batch may still hold
        self.out_dir = out_dir
        self.done = done
        self.verify = verify
        self.observer = observer
        self.summary = Summary()
        self.backing_off: set[str] = set()  # ids of jobs waiting to retry
        self.keys: set[str] = set()  # every job of this file, as the manifest keys it
        self.stems: set[str] = set()  # every output name stem of this file's jobs
        self.skipped_lines: dict[str, int] = {}  # id -> current line, for jobs already done
        self.in_batches: set[str] = set()  # ids of the jobs this run leaves to their batch
        self._on_write_error = on_write_error

    async def is_done(self, job: Job) -> bool:
        """Whether the job needs no work from this run: done, or (for a direct run) in a
        Batch API batch still on the server, paid for there: never made twice."""
        self.stems.update(job.stems)  # asked once for every job of the file
        if self.done is None:
            return False
        if self.held and self.done.pending(job) and any(s in self.held for s in job.stems):
            self.in_batches.add(job.id)
            return True
        if not len(self.done):
            return False
        if self.verify:  # hashing files: off the event loop
            return await asyncio.to_thread(self.done.is_done, job, self.out_dir, verify=True)
        if len(self.skipped_lines) % 64 == 63:
            await asyncio.sleep(0)  # a long run of skips must not starve jobs in flight
        return self.done.is_done(job, self.out_dir)

    async def kept(self, job: Job) -> list[FileRecord]:
        if self.done is None or job.request.count < 2:  # only an n > 1 job stops part way
            return []
        if self.verify:
            return await asyncio.to_thread(self.done.kept, job, self.out_dir, verify=True)
        return self.done.kept(job, self.out_dir)

    async def checkpoint(self, record: JobRecord) -> None:
        """Append an unfinished job's record now, uncounted: its images so far survive a
        kill. The job's final record, appended later, supersedes it."""
        await self._append([record])

    async def _append(self, records: list[JobRecord]) -> None:
        try:
            await self.manifest.append_many(records)
        except OSError as exc:
            self._on_write_error(
                f"cannot write to the output directory {self.out_dir}: cannot write the "
                f"manifest {self.manifest.path}: {exc.strerror or exc}; "
                "free some disk space or fix its permissions"
            )

    def skip(self, job: Job) -> None:
        self.keys.add(job.id)
        self.skipped_lines[job.id] = job.line  # its record stays as it is
        if job.id in self.in_batches:
            self.summary.wait_in_batch()
        else:
            self.summary.skip()
        self.observer.job_skipped(job)

    def retrying(self, job_id: str, attempt: int, wait: float, reason: str) -> None:
        self.backing_off.add(job_id)
        self.observer.retrying(job_id, attempt, wait, reason)

    async def record(self, records: list[JobRecord]) -> None:
        """Count, log and show each record, then append them all in one write."""
        for record in records:
            self.keys.add(record.id if record.id is not None else f"#line{record.line}")
            if record.id is not None:
                self.backing_off.discard(record.id)
            self.summary.add(record)
            if record.status in ("failed", "invalid") and record.error is not None:
                log.error(
                    "%s %s: %s",
                    record.status.upper(),
                    record.id or f"line {record.line}",
                    record.error.message,
                    extra={
                        "event": "job_failed",
                        "job_id": record.id,
                        "line": record.line,
                        "status": record.status,
                        "kind": record.error.kind,
                        "http_status": record.error.status,
                    },
                )
            self.observer.job_done(record)
        await self._append(records)


class Run:
    """The handle of a run in progress: stop it, or look at it."""

    def __init__(
        self, pool: Pool, ledger: Ledger, pacer: Pacer, *, batch_api: bool = False
    ) -> None:
        self._pool = pool
        self._ledger = ledger
        self._pacer = pacer
        self._batch_api = batch_api

    @property
    def pacer(self) -> Pacer:
        """The run's pacer: its rate, its share of the limit, its holds."""
        return self._pacer

    def stop(self) -> None:
        """Stop dispatching new jobs (SIGINT/SIGTERM). Jobs in flight may finish."""
        self._pool.stop()

    @property
    def stopping(self) -> bool:
        return self._pool.stopping

    def status(self) -> RunStatus:
        return RunStatus(
            summary=self._ledger.summary,
            in_flight=self._pool.requests,
            retrying=len(self._ledger.backing_off),
            held_for=self._pacer.hold_remaining,
            stopping=self._pool.stopping,
            streaming=tuple(self._pool.streaming()),
            batch_api=self._batch_api,
        )


async def run_batch(
    config: RunConfig,
    jobs: Iterable[Job | InvalidLine],
    *,
    policy: RetryPolicy | None = None,
    observer: RunObserver | None = None,
    on_start: Callable[[Run], None] | None = None,
    resume: bool = True,
    verify: bool = False,
    writer: Writer = commit,
    pacer: Pacer | None = None,
    prune: bool = False,
    batch: BatchOptions | None = None,
) -> Summary:
    """Run a batch end to end, holding the output directory's lock.

    It removes temporary files a crashed run left, skips jobs a previous run
    finished (unless ``resume`` is False, i.e. ``--force``), runs the rest,
    and compacts the manifest. Records of jobs no longer in the job file are
    kept, unless ``prune``: then they go, and so do their files (see
    :func:`prune_stale`). With ``batch``, the jobs go through the Batch API
    (:class:`~pmock_batch.batchapi.BatchRunner`) instead of direct requests;
    everything around the runner is the same. ``on_start`` receives the :class:`Run` before it
    starts, so a caller can wire signals to :meth:`Run.stop`. ``writer``
    is injectable so tests can simulate a full disk or a crash mid-write.
    Raises :class:`~pmock_batch.errors.LockedError` if another run holds the
    lock, and :class:`~pmock_batch.errors.OutputPathError`, before anything is
    sent, if the manifest is a symbolic link (or not a regular file): nothing
    could be recorded, and it is never written through.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    shard = config.shard  # a shard: its own jobs, lock, manifest and report (see shards.py)
    with out_lock(config.out_dir, shard):
        for name in {MANIFEST_NAME, config.manifest_path.name}:  # read, or written too
            check_own_file(config.out_dir, name)
        if shard is None:  # another shard may be writing its temporary files
            await asyncio.to_thread(remove_stray_temps, config.out_dir)
        else:
            jobs = shard.select(jobs)
        manifests = manifest_paths(config.out_dir)
        done = await asyncio.to_thread(DoneIndex.load_all, manifests) if resume else None
        held = await asyncio.to_thread(held_rows, config.out_dir) if batch is None else {}
        pool = Pool(concurrency=config.concurrency, grace=config.grace)
        pacer = pacer or Pacer(
            rpm=config.rpm,
            burst=min(config.concurrency, 4),
            sleep=pool.sleep,
            stopping=lambda: pool.stopping,
            share=1 / shard.count if shard else 1.0,  # N shards spend one limit...
            first_wave=min(config.concurrency, 4) if shard else None,  # ... from the start
        )
        async with (
            ImagesClient(config) as client,
            ManifestWriter(config.manifest_path) as manifest,
        ):
            ledger = Ledger(
                manifest,
                config.out_dir,
                done=done,
                verify=verify,
                observer=observer or RunObserver(),
                on_write_error=pool.abort,
                in_batches=held,  # empty for a --batch-api run: it collects them
            )
            if batch is not None:
                batch_runner = BatchRunner(
                    BatchClient(client, config.base_url, timeout=config.timeout),
                    pool,
                    ledger,
                    config.out_dir,
                    options=batch,
                    writer=writer,
                    field_case=config.field_case,
                    prices=config.prices,
                    where=Where(
                        config.base_url.rstrip("/") + "/batches",
                        str(config.out_dir),
                        config.api_key_env,
                    ),
                )
            runner = DirectRunner(
                config,
                client,
                pool,
                policy=policy or RetryPolicy(max_attempts=config.max_attempts),
                pacer=pacer,
                hook=ledger,
                writer=writer,
            )
            if on_start is not None:
                on_start(Run(pool, ledger, pacer, batch_api=batch is not None))
            try:
                if batch is not None:
                    await batch_runner.run(jobs)
                else:
                    await pool.run(jobs, runner, ledger)
            finally:
                summary = ledger.summary
                summary.elapsed_s = loop.time() - started
                summary.aborted = pool.abort_reason
                summary.interrupted = pool.interrupted
                summary.budget = runner.budget.reached() if pool.budget_reason else None
                if ledger.in_batches:
                    log.warning(
                        "%d job(s) wait in Batch API batches still on the server (see %s): "
                        "not made again; run with --batch-api to collect them",
                        len(ledger.in_batches),
                        config.out_dir / "batches.jsonl",
                        extra={"event": "warning", "jobs": len(ledger.in_batches)},
                    )
                if batch is not None:
                    summary.batches_running = batch_runner.running
        try:
            if prune:
                await asyncio.to_thread(prune_stale, config.out_dir, ledger.keys, ledger.stems)
            await asyncio.to_thread(
                compact,
                config.manifest_path,
                ledger.skipped_lines,
                current=ledger.keys,
                prune=prune,
            )
        except OSError as exc:  # e.g. the disk is full: the log is still valid as it is
            log.warning(
                "could not compact the manifest (it stays a valid log): %s",
                exc,
                extra={"event": "warning", "reason": str(exc)},
            )
        try:
            names = (config.manifest_path.name, config.report_path.name)
            await asyncio.to_thread(write_report, config.out_dir, run=summary, names=names)
        except (OSError, PmockBatchError, ValueError) as exc:  # the images matter more
            log.warning(
                "could not write the report: %s",
                exc,
                extra={"event": "warning", "reason": str(exc)},
            )
    return summary
