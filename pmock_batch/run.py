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

It also holds the parts of a run the CLI needs before and around it, none of
which prints: the endpoint and key (:func:`resolve_endpoint`), the network
checks (:func:`check_network`), the retry policy (:func:`retry_policy`), the
in-process mock of ``--mock`` (:func:`endpoint`), and the ``--dry-run`` plan
(:func:`plan_run`), which names files and checks resume as the run does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .attempt import DirectRunner, Writer, commit
from .capabilities import Capabilities
from .client import ImagesClient
from .config import BASE_URL_ENV, DEFAULT_BASE_URL, MANIFEST_NAME, RunConfig
from .errors import OutputPathError, PmockBatchError, UsageError
from .files import check_own_file, contained_file, remove_file, remove_stray_temps
from .images import file_name
from .jobs import Defaults, InvalidLine, Job, ScanResult, iter_jobs
from .lock import run_lock
from .manifest import ManifestWriter, compact, stale_records
from .models import JobRecord
from .network import ProxyRoutes, check_headers, ssl_context
from .pacing import Pacer
from .pool import Pool
from .report import write_report
from .resume import DoneIndex
from .retry import RetryPolicy
from .tally import Summary

if TYPE_CHECKING:  # the mock (and aiohttp.web) is imported only when it is used
    from .mock import MockOptions

__all__ = [
    "MAX_PLAN_FILES",
    "Ledger",
    "Plan",
    "Run",
    "RunObserver",
    "RunStatus",
    "check_network",
    "endpoint",
    "plan_run",
    "prune_stale",
    "resolve_endpoint",
    "retry_policy",
    "run_batch",
    "stale_files",
]

MAX_PLAN_FILES = 50  # files a --dry-run plan lists by name
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

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
    in_flight: int  # jobs running now
    retrying: int  # jobs waiting to retry
    held_for: float  # seconds the pool is held by the rate limit (0: not held)
    stopping: bool


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
    ) -> None:
        self.manifest = manifest
        self.out_dir = out_dir
        self.done = done
        self.verify = verify
        self.observer = observer
        self.summary = Summary()
        self.backing_off: set[str] = set()  # ids of jobs waiting to retry
        self.keys: set[str] = set()  # every job of this file, as the manifest keys it
        self.skipped_lines: dict[str, int] = {}  # id -> current line, for jobs already done
        self._on_write_error = on_write_error

    async def is_done(self, job: Job) -> bool:
        if self.done is None or not len(self.done):
            return False
        if self.verify:  # hashing files: off the event loop
            return await asyncio.to_thread(self.done.is_done, job, self.out_dir, verify=True)
        if len(self.skipped_lines) % 64 == 63:
            await asyncio.sleep(0)  # a long run of skips must not starve jobs in flight
        return self.done.is_done(job, self.out_dir)

    def skip(self, job: Job) -> None:
        self.keys.add(job.id)
        self.skipped_lines[job.id] = job.line
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
        try:
            await self.manifest.append_many(records)
        except OSError as exc:
            self._on_write_error(
                f"cannot write to the output directory {self.out_dir}: cannot write the "
                f"manifest {self.manifest.path}: {exc.strerror or exc}; "
                "free some disk space or fix its permissions"
            )


class Run:
    """The handle of a run in progress: stop it, or look at it."""

    def __init__(self, pool: Pool, ledger: Ledger, pacer: Pacer) -> None:
        self._pool = pool
        self._ledger = ledger
        self._pacer = pacer

    def stop(self) -> None:
        """Stop dispatching new jobs (SIGINT/SIGTERM). Jobs in flight may finish."""
        self._pool.stop()

    @property
    def stopping(self) -> bool:
        return self._pool.stopping

    def status(self) -> RunStatus:
        return RunStatus(
            summary=self._ledger.summary,
            in_flight=self._pool.in_flight,
            retrying=len(self._ledger.backing_off),
            held_for=self._pacer.hold_remaining,
            stopping=self._pool.stopping,
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
) -> Summary:
    """Run a batch end to end, holding the output directory's lock.

    It removes temporary files a crashed run left, skips jobs a previous run
    finished (unless ``resume`` is False, i.e. ``--force``), runs the rest,
    and compacts the manifest. Records of jobs no longer in the job file are
    kept, unless ``prune``: then they go, and so do their files (see
    :func:`prune_stale`). ``on_start`` receives the :class:`Run` before it
    starts, so a caller can wire signals to :meth:`Run.stop`. ``writer``
    is injectable so tests can simulate a full disk or a crash mid-write.
    Raises :class:`~pmock_batch.errors.LockedError` if another run holds the
    lock, and :class:`~pmock_batch.errors.OutputPathError`, before anything is
    sent, if the manifest is a symbolic link (or not a regular file): nothing
    could be recorded, and it is never written through.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    with run_lock(config.out_dir):
        check_own_file(config.out_dir, MANIFEST_NAME)
        await asyncio.to_thread(remove_stray_temps, config.out_dir)
        done = await asyncio.to_thread(DoneIndex.load, config.manifest_path) if resume else None
        pool = Pool(concurrency=config.concurrency, grace=config.grace)
        pacer = pacer or Pacer(
            rpm=config.rpm,
            burst=min(config.concurrency, 4),
            sleep=pool.sleep,
            stopping=lambda: pool.stopping,
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
                on_start(Run(pool, ledger, pacer))
            try:
                await pool.run(jobs, runner, ledger)
            finally:
                summary = ledger.summary
                summary.elapsed_s = loop.time() - started
                summary.aborted = pool.abort_reason
                summary.interrupted = pool.interrupted
        try:
            if prune:
                await asyncio.to_thread(prune_stale, config.out_dir, ledger.keys)
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
            await asyncio.to_thread(write_report, config.out_dir, run=summary)
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


# -- before and around a run: checks, policy, endpoint, plan --------------------------------------


def resolve_endpoint(
    base_url: str | None, api_key_env: str, *, mock: bool, environ: Mapping[str, str] = os.environ
) -> tuple[str, str | None]:
    """The base URL and key, from flags and environment. Raises UsageError; never shows the key."""
    url = base_url or environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--base-url must be an http(s) URL, got {url!r}")
    if not _ENV_NAME.fullmatch(api_key_env):  # not echoed: it may be the key, pasted by mistake
        raise UsageError("--api-key-env takes the name of an environment variable, not a key")
    key = environ.get(api_key_env) or None
    if key is not None and not all(33 <= ord(ch) <= 126 for ch in key):
        # Not echoed, not even in part: the message names the variable only.
        raise UsageError(
            f"the API key in {api_key_env} contains whitespace, a control character or a "
            "non-ASCII character (a trailing newline, or a \\r from a file with Windows line "
            "endings?); an HTTP header cannot carry it. Fix the variable. Nothing was sent."
        )
    if key is None and not mock:
        raise UsageError(
            f"no API key: set {api_key_env} (or use --mock to run offline against the mock "
            "server). Nothing was sent."
        )
    return url, key


def check_network(
    headers: Iterable[tuple[str, str]],
    proxy: str | None,
    ca_bundle: Path | None,
    *,
    mock: bool,
    environ: Mapping[str, str] = os.environ,
) -> tuple[tuple[str, str], ...]:
    """Check the headers, the proxy and the CA bundle before anything is sent; return the headers.

    Raises UsageError. With ``mock``, proxy and CA variables are ignored: the
    mock is plain HTTP on loopback.
    """
    environ = {} if mock else environ
    try:
        checked = check_headers(headers)
        ProxyRoutes.resolve(proxy, environ)
        ssl_context(ca_bundle, environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return checked


def retry_policy(
    *, max_attempts: int, max_retry_wait: float, max_billed_retries: int
) -> RetryPolicy:
    """The retry policy of a run, from its flags."""
    return RetryPolicy(
        max_attempts=max_attempts,
        max_retry_wait=max_retry_wait,
        max_billed_retries=max_billed_retries,
    )


@contextlib.asynccontextmanager
async def endpoint(mock: MockOptions | None, base_url: str) -> AsyncIterator[str]:
    """Yield the base URL to use: a fresh in-process mock's with ``--mock``, else ``base_url``."""
    if mock is None:
        yield base_url
        return
    from .mock import MockServer

    async with MockServer(mock) as server:
        yield server.base_url


@dataclass(slots=True)
class Plan:
    """What a run would do (``--dry-run``): counts, the first files to write, stale jobs."""

    jobs_file: Path
    out_dir: Path
    jobs: int  # valid jobs in the file
    images: int
    invalid: int  # invalid lines, skipped with --skip-invalid
    done: int  # jobs a previous run finished, that the run would skip
    files: list[tuple[Path, int]] = field(default_factory=list)  # (path, line), at most a limit
    more: bool = False  # more files would be written than ``files`` lists
    stale: list[tuple[str, list[Path]]] | None = None  # with --prune: (job, its files)

    @property
    def to_run(self) -> int:
        return self.jobs - self.done


def plan_run(
    path: Path,
    result: ScanResult,
    *,
    out_dir: Path,
    defaults: Defaults,
    caps: Capabilities,
    resume: bool = True,
    verify: bool = False,
    prune: bool = False,
    limit: int = MAX_PLAN_FILES,
) -> Plan:
    """The plan of a run of ``path``, reading OUT as :func:`run_batch` would, writing nothing.

    Resume is checked as the run checks it (the same :class:`DoneIndex`), and
    files are named by :func:`file_name`. Raises OutputPathError if the
    manifest is a link: it is never read through.
    """
    check_own_file(out_dir, MANIFEST_NAME)
    done = DoneIndex.load(out_dir / MANIFEST_NAME) if resume else DoneIndex()
    plan = Plan(path, out_dir, result.jobs, result.images, len(result.invalid), 0)
    current: set[str] = set()
    for item in iter_jobs(path, result, defaults=defaults, caps=caps):
        current.add(item.id if item.id is not None else f"#line{item.line}")
        if not isinstance(item, Job):
            continue
        if done.is_done(item, out_dir, verify=verify):
            plan.done += 1
            continue
        for stem in item.stems:
            if len(plan.files) < limit:
                plan.files.append((out_dir / file_name(stem, item.request.format), item.line))
            else:
                plan.more = True
    if prune:
        plan.stale = stale_files(out_dir, current)
    return plan
