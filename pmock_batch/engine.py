"""The worker pool: jobs in, manifest records out.

Workers take jobs from a small bounded queue fed by a single producer that
streams the job file, so memory does not grow with the file. A semaphore of
``concurrency`` slots bounds the requests at the server; there are twice as
many workers, so that verifying and writing one image overlaps the next
request. Every attempt also waits its turn at the shared
:class:`~pmock_batch.pacing.Pacer`. A job's failure becomes a ``failed``
record, never an exception that stops the others. A failure that every job
would share (a bad key, a wrong base URL, no quota, a full disk) aborts the
run: dispatching stops and the jobs not run are recorded as ``not_run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image
from tenacity import RetryCallState

from .client import ImagesClient, Reply
from .config import BASE_URL_ENV, RunConfig
from .errors import (
    APIError,
    APIStatusError,
    APITimeoutError,
    CannotConnectError,
    InvalidResponseError,
    OutputPathError,
    PmockBatchError,
    ProxyRefusedError,
    UntrustedCertificateError,
)
from .images import ImageInfo, ImageSink, decode_and_verify, image_warnings, rejected_path
from .jobs import InvalidLine, Job
from .manifest import ManifestWriter
from .models import ErrorRecord, FileRecord, JobRecord, JobStatus, RejectedFile
from .pacing import Pacer
from .resume import DoneIndex
from .retry import Decision, RetryPolicy, billed, classify, server_wait
from .tripwire import Tripwire

__all__ = ["Engine", "RunObserver", "Summary", "Writer", "commit", "error_record"]

log = logging.getLogger("pmock_batch")

MAX_LISTED_FAILURES = 20
_RECORD_BATCH = 500  # records written per manifest write when recording leftovers

Writer = Callable[[ImageSink, Path, str], Awaitable[Path]]


async def commit(sink: ImageSink, out_dir: Path, relative: str) -> Path:
    """The default writer: rename the verified temporary file into place."""
    return await sink.commit(out_dir, relative)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, APIStatusError):
        return f"HTTP {exc.status}: {exc}"
    return f"{exc}" if exc is not None else "unknown"


def _log_attempt(job_id: str, attempt: int, status: int, started: float) -> None:
    latency = time.monotonic() - started
    log.debug(
        "%s: attempt %d: HTTP %d in %.2fs",
        job_id,
        attempt,
        status,
        latency,
        extra={
            "event": "attempt",
            "job_id": job_id,
            "attempt": attempt,
            "http_status": status,
            "latency_s": round(latency, 3),
        },
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_record(exc: BaseException) -> ErrorRecord:
    """The manifest's ``error`` object for an exception that ended a job."""
    if isinstance(exc, APIStatusError):
        if exc.is_moderation:
            kind = "moderation"
        elif exc.status in (401, 403):
            kind = "auth"
        elif exc.status == 407:
            kind = "proxy"
        elif exc.status == 429 and exc.code == "insufficient_quota":
            kind = "quota"
        elif exc.status == 429:
            kind = "rate_limit"
        elif exc.status == 404:
            kind = "not_found"
        elif exc.status >= 500:
            kind = "server"
        else:
            kind = "bad_request"
        return ErrorRecord(
            kind=kind, status=exc.status, code=exc.code, message=str(exc), param=exc.param
        )
    if isinstance(exc, APIError):
        return ErrorRecord(kind=exc.kind, message=str(exc))
    if isinstance(exc, OutputPathError):  # outside OUT, or through a link: already says so
        return ErrorRecord(kind="write", message=str(exc))
    if isinstance(exc, OSError):
        return ErrorRecord(kind="write", message=f"could not write the image: {exc}")
    if isinstance(exc, Image.DecompressionBombError):  # normally mapped by the sink already
        return ErrorRecord(kind="invalid_response", message=f"decompression bomb: {exc}")
    if isinstance(exc, MemoryError):
        detail = f": {exc}" if str(exc) else ""
        return ErrorRecord(kind="memory", message=f"ran out of memory handling the image{detail}")
    return ErrorRecord(kind="internal", message=f"{type(exc).__name__}: {exc}")


def abort_reason(exc: BaseException, config: RunConfig) -> str:
    """One clear sentence: what went wrong for every job, and what to check."""
    if isinstance(exc, OSError):
        return (
            f"cannot write to the output directory {config.out_dir}: {exc.strerror or exc}; "
            "free some disk space or fix its permissions"
        )
    if isinstance(exc, ProxyRefusedError):
        if exc.status == 407:
            return f"{exc}; check the user and password in --proxy or HTTPS_PROXY"
        return f"{exc}; check that the proxy allows this host"
    if isinstance(exc, APIStatusError):
        if exc.status == 407:
            return (
                f"the proxy refused the credentials (HTTP 407: {exc}); "
                "check the user and password in --proxy or HTTP_PROXY"
            )
        if exc.status in (401, 403):
            return (
                f"the server refused the API key (HTTP {exc.status}: {exc}); "
                f"check {config.api_key_env}"
            )
        if exc.status == 404:
            return (
                f"{config.endpoint} was not found (HTTP 404: {exc}); check --base-url "
                f"or {BASE_URL_ENV}"
            )
        if exc.code == "insufficient_quota":
            return f"the account has no quota left (HTTP 429: {exc}); check its plan and billing"
    if isinstance(exc, UntrustedCertificateError):
        return (
            f"{exc}; pass --ca-bundle FILE (or set SSL_CERT_FILE) with the CA that signed it, "
            "such as your proxy's or gateway's"
        )
    return str(exc)


@dataclass(slots=True)
class Summary:
    """What a run did, for the CLI's summary and ``--json``."""

    jobs: int = 0
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    not_run: int = 0
    skipped: int = 0
    images: int = 0
    attempts: int = 0
    retries: int = 0
    ambiguous_retries: int = 0  # retries after a timeout: the first try may have been billed
    billed_retries: int = 0  # retries after a 2xx whose image was unusable: each one was billed
    warnings: int = 0  # warnings in the records (sizes not as asked, bytes after the end...)
    rate_limited: int = 0  # 429 answers seen
    elapsed_s: float = 0.0
    usage: dict[str, Any] = field(default_factory=dict)
    failed_by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), the first few
    aborted: str | None = None  # why the run stopped early, if it did
    interrupted: bool = False

    @property
    def images_per_minute(self) -> float:
        return self.images / self.elapsed_s * 60.0 if self.elapsed_s > 0 else 0.0

    def add(self, record: JobRecord) -> None:
        self.jobs += 1
        if record.status == "ok":
            self.ok += 1
        elif record.status == "failed":
            self.failed += 1
        elif record.status == "invalid":
            self.invalid += 1
        elif record.status == "not_run":
            self.not_run += 1
        self.images += len(record.files)
        self.attempts += record.attempts
        self.warnings += len(record.warnings)
        if record.error is not None and record.status in ("failed", "invalid"):
            self.failed_by_kind[record.error.kind] += 1
            if len(self.failures) < MAX_LISTED_FAILURES:
                self.failures.append((record.id or f"line {record.line}", record.error.message))
        add_usage(self.usage, record.usage)


class RunObserver:
    """Hooks the CLI uses to show progress. The defaults do nothing."""

    def job_done(self, record: JobRecord) -> None:
        """A job finished (ok, failed, invalid or not run)."""

    def retrying(self, job_id: str, attempt: int, wait: float, reason: str) -> None:
        """An attempt failed and will be retried after ``wait`` seconds."""

    def job_skipped(self, job: Job) -> None:
        """A job was already done by an earlier run (resume)."""


class _Aborted(Exception):
    """Raised inside a worker when the run has been aborted or stopped."""


@dataclass(slots=True)
class _Attempts:
    count: int = 0
    retries: int = 0
    ambiguous: int = 0
    billed: int = 0
    rate_limited: int = 0
    http_status: int | None = None
    rejected: list[RejectedFile] = field(default_factory=list)


class Engine:
    """Runs jobs through a bounded pool of workers and records every outcome."""

    def __init__(
        self,
        config: RunConfig,
        client: ImagesClient,
        manifest: ManifestWriter,
        *,
        policy: RetryPolicy | None = None,
        observer: RunObserver | None = None,
        done: DoneIndex | None = None,
        verify: bool = False,
        writer: Writer = commit,
        pacer: Pacer | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.manifest = manifest
        self.policy = policy or RetryPolicy(max_attempts=config.max_attempts)
        self.observer = observer or RunObserver()
        self.summary = Summary()
        self._stopping = asyncio.Event()
        self._abort_reason: str | None = None
        self._in_flight: set[asyncio.Task[JobRecord]] = set()
        # At most `concurrency` requests at the server. There are twice as many
        # workers, so that verifying and writing one image overlaps the next request.
        self._slots = asyncio.Semaphore(config.concurrency)
        self.done = done
        self.verify = verify
        self.writer = writer
        self.tripwire = Tripwire()  # aborts early when every job would fail the same way
        self.skipped_lines: dict[str, int] = {}  # id -> current line, for jobs already done
        self.keys: set[str] = set()  # every job of this file, as the manifest keys it
        if self.policy.sleep is None:
            self.policy.sleep = self._sleep
        self.pacer = pacer or Pacer(
            rpm=config.rpm,
            burst=min(config.concurrency, 4),
            sleep=self._sleep,
            stopping=self._stopping.is_set,
        )

    async def _sleep(self, seconds: float) -> None:
        """A wait that ends early when the run stops, so Ctrl-C is never ignored."""
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # -- control ---------------------------------------------------------

    def stop(self) -> None:
        """Stop dispatching new jobs (SIGINT/SIGTERM). Jobs in flight may finish."""
        self.summary.interrupted = True
        self._stopping.set()

    def _abort(self, exc: BaseException) -> None:
        self._abort_with(abort_reason(exc, self.config))

    def _abort_with(self, reason: str) -> None:
        if self._abort_reason is None:
            self._abort_reason = reason
            self.summary.aborted = reason
            log.error("aborting the run: %s", reason, extra={"event": "abort", "reason": reason})
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the pool --------------------------------------------------------

    async def run(self, jobs: Iterable[Job | InvalidLine]) -> Summary:
        """Run every job; return the summary. Never raises for a job's failure."""
        started = time.monotonic()
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=self.config.concurrency * 2)
        workers = [
            asyncio.create_task(self._worker(queue), name=f"pmock-worker-{i}")
            for i in range(self.config.concurrency * 2)
        ]
        watcher = asyncio.create_task(self._cancel_after_grace(), name="pmock-grace")
        iterator = iter(jobs)
        try:
            for item in iterator:
                if isinstance(item, InvalidLine):
                    await self._record(self._invalid_record(item))
                elif await self._already_done(item):
                    self._skip(item)
                elif self.stopping:
                    await self._record(self._not_run_record(item))
                    break
                else:
                    await queue.put(item)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            await self._record_leftovers(iterator)
        finally:
            for task in (*workers, *self._in_flight, watcher):
                task.cancel()
            await asyncio.gather(*workers, *self._in_flight, watcher, return_exceptions=True)
            self.summary.elapsed_s = time.monotonic() - started
        return self.summary

    async def _already_done(self, job: Job) -> bool:
        if self.done is None or not len(self.done):
            return False
        if self.verify:  # hashing files: off the event loop
            return await asyncio.to_thread(self.done.is_done, job, self.config.out_dir, verify=True)
        done = self.done.is_done(job, self.config.out_dir)
        if len(self.skipped_lines) % 64 == 63:
            await asyncio.sleep(0)  # a long run of skips must not starve jobs in flight
        return done

    def _skip(self, job: Job) -> None:
        self.keys.add(job.id)
        self.summary.skipped += 1
        self.skipped_lines[job.id] = job.line
        self.observer.job_skipped(job)

    async def _cancel_after_grace(self) -> None:
        """Once the run is stopping, give jobs in flight ``grace`` seconds, then cancel them."""
        await self._stopping.wait()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.config.grace)
        for task in list(self._in_flight):
            task.cancel()

    async def _worker(self, queue: asyncio.Queue[Job | None]) -> None:
        while (job := await queue.get()) is not None:
            if self.stopping:
                await self._record(self._not_run_record(job))
                continue
            # The job runs as its own task so that the grace period can cancel it
            # without cancelling the worker, which goes on draining the queue.
            state, files = _Attempts(), list[FileRecord]()
            task = asyncio.create_task(self._run_job(job, state, files))
            self._in_flight.add(task)
            try:
                await asyncio.wait({task})
            finally:
                self._in_flight.discard(task)
            if task.cancelled():  # after the grace period: what was sent and saved still counts
                await self._record(self._not_run_record(job, state=state, files=files))
            else:
                await self._record(task.result())

    async def _record_leftovers(self, iterator: Iterator[Job | InvalidLine]) -> None:
        """Record what is left of the file after a stop: done jobs stay done, the rest not run.

        Records are written in batches, so stopping a 100,000-line run is quick.
        """
        batch: list[JobRecord] = []
        for item in iterator:
            if isinstance(item, InvalidLine):
                batch.append(self._invalid_record(item))
            elif await self._already_done(item):
                self._skip(item)
            else:
                batch.append(self._not_run_record(item))
            if len(batch) >= _RECORD_BATCH:
                await self._record_many(batch)
                batch = []
        await self._record_many(batch)

    async def _record_many(self, records: list[JobRecord]) -> None:
        if not records:
            return
        for record in records:
            self._note(record)
        try:
            await self.manifest.append_many(records)
        except OSError as exc:
            self._manifest_failed(exc)

    def _manifest_failed(self, exc: OSError) -> None:
        self._abort(
            OSError(exc.errno, f"cannot write the manifest {self.manifest.path}: {exc.strerror}")
        )

    async def _record(self, record: JobRecord) -> None:
        self._note(record)
        try:
            await self.manifest.append(record)
        except OSError as exc:
            self._manifest_failed(exc)

    def _note(self, record: JobRecord) -> None:
        """Count, log and show one finished record (its manifest line is written separately)."""
        self.keys.add(record.id if record.id is not None else f"#line{record.line}")
        self.summary.add(record)
        if record.status in ("failed", "invalid") and record.error is not None:
            name = record.id or f"line {record.line}"
            log.error(
                "%s %s: %s",
                record.status.upper(),
                name,
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

    # -- one job -----------------------------------------------------------

    async def _run_job(self, job: Job, state: _Attempts, files: list[FileRecord]) -> JobRecord:
        """Run one job; ``state`` and ``files`` fill in as it goes, so a cancel loses neither."""
        started_at, t0 = _now(), time.monotonic()
        warnings: list[str] = []
        usage: dict[str, Any] = {}
        revised: str | None = None
        body = job.wire_body(self.config.field_case)
        error: ErrorRecord | None = None
        status: JobStatus = "ok"
        for stem in job.stems:
            try:
                image, reply, relative = await self._generate(job, stem, body, state)
            except _Aborted:
                status = "not_run" if not files else "failed"
                error = ErrorRecord(kind="not_run", message=self._abort_reason or "interrupted")
                break
            except Exception as exc:  # a job's failure, even an unexpected one, is a record
                decision = classify(exc)
                if decision is Decision.ABORT:
                    self._abort(exc)
                elif isinstance(exc, APIStatusError):
                    tripped = self.tripwire.rejected(job.id, exc)
                    if tripped is not None:
                        self._abort_with(tripped)
                if not isinstance(exc, PmockBatchError | OSError):
                    log.exception("%s: unexpected error", job.id, extra={"event": "internal"})
                error = error_record(exc)
                too_long = self.policy.wait_too_long(exc)
                if too_long is not None:
                    error.message = (
                        f"{error.message} (the server asked to wait {too_long:g}s, "
                        f"more than --max-retry-wait {self.policy.max_retry_wait:g}s)"
                    )
                status = "failed"
                break
            if image.format != job.request.format:
                warnings.append(
                    f"asked for {job.request.format} but the server sent {image.format}; "
                    f"saved as {relative}"
                )
                log.warning(
                    "%s: %s", job.id, warnings[-1], extra={"event": "warning", "job_id": job.id}
                )
            for warning in image_warnings(image, size=job.request.size):
                warnings.append(f"{relative}: {warning}")
                log.warning(
                    "%s: %s", job.id, warnings[-1], extra={"event": "warning", "job_id": job.id}
                )
            files.append(
                FileRecord(
                    path=relative,
                    sha256=image.sha256,
                    bytes=image.bytes,
                    format=image.format,
                    width=image.width,
                    height=image.height,
                )
            )
            add_usage(usage, reply.body.usage)
            revised = revised or reply.body.data[0].revised_prompt
        self.summary.retries += state.retries
        self.summary.ambiguous_retries += state.ambiguous
        self.summary.billed_retries += state.billed
        self.summary.rate_limited += state.rate_limited
        record = JobRecord(
            id=job.id,
            line=job.line,
            status=status,
            files=files,
            attempts=state.count,
            elapsed_s=round(time.monotonic() - t0, 3),
            http_status=state.http_status,
            error=error,
            revised_prompt=revised,
            usage=usage or None,
            request=body,
            fingerprint=job.fingerprint,
            started_at=started_at,
            finished_at=_now(),
            warnings=warnings,
            ambiguous_retries=state.ambiguous,
            billed_retries=state.billed,
            rejected=state.rejected,
        )
        return record

    async def _generate(
        self, job: Job, stem: str, body: dict[str, Any], state: _Attempts
    ) -> tuple[ImageInfo, Reply, str]:
        """One image, with retries. Raises the last error when attempts run out."""

        def before_sleep(retry_state: RetryCallState) -> None:
            outcome = retry_state.outcome
            exc = outcome.exception() if outcome is not None else None
            wait = retry_state.upcoming_sleep
            state.retries += 1
            if exc is not None and billed(exc):
                state.billed += 1
            elif isinstance(exc, APITimeoutError):
                state.ambiguous += 1
            reason = _reason(exc)
            self.observer.retrying(job.id, retry_state.attempt_number, wait, reason)
            log.debug(
                "%s: attempt %d failed (%s); retrying in %.1fs",
                job.id,
                retry_state.attempt_number,
                reason,
                wait,
                extra={
                    "event": "retry",
                    "job_id": job.id,
                    "attempt": retry_state.attempt_number,
                    "wait_s": round(wait, 3),
                    "reason": reason,
                },
            )

        async for attempt in self.policy.retrying(before_sleep=before_sleep):
            with attempt:
                sink = ImageSink(self.config.out_dir, stem)
                try:
                    # The slot covers the HTTP exchange only: verifying and committing
                    # the image happen outside it, while the next request goes out.
                    async with self._slots:
                        await self.pacer.acquire()
                        if self.stopping:
                            raise _Aborted
                        state.count += 1
                        started, sent_at = time.monotonic(), self.pacer.now()
                        try:
                            reply = await self._request(
                                body, sink, url=job.request.response_format == "url"
                            )
                        except APIStatusError as exc:
                            self._note_status_error(job, exc, state, started, sent_at)
                            raise
                        except CannotConnectError as exc:
                            tripped = self.tripwire.connect_failed(exc)
                            if tripped is not None:
                                self._abort_with(tripped)
                            raise
                    self.tripwire.succeeded()
                    self.pacer.observe(reply.headers, sent_at=sent_at)
                    _log_attempt(job.id, state.count, reply.status, started)
                    image = await sink.verify()
                    relative = f"{stem}.{image.extension}"
                    await self.writer(sink, self.config.out_dir, relative)
                    return image, reply, relative
                except APIError as exc:
                    if billed(exc) and sink.size:
                        await self._keep_rejected(job, sink, stem, exc, state)
                    raise
                finally:
                    sink.discard()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _note_status_error(
        self, job: Job, exc: APIStatusError, state: _Attempts, started: float, sent_at: float
    ) -> None:
        state.http_status = exc.status
        self.tripwire.answered()
        self.pacer.observe(exc.headers, sent_at=sent_at)
        if exc.status == 429:
            state.rate_limited += 1
            if self.policy.wait_too_long(exc) is None:  # else this job gives up
                self.pacer.refused(server_wait(exc.headers))
        _log_attempt(job.id, state.count, exc.status, started)

    async def _keep_rejected(
        self, job: Job, sink: ImageSink, stem: str, exc: APIError, state: _Attempts
    ) -> None:
        """Move a billed answer's unusable bytes to ``.rejected/``, as received; note it."""
        out = self.config.out_dir
        size, sha256 = sink.size, sink.sha256
        try:
            relative = await asyncio.to_thread(rejected_path, out, stem, state.count)
            await sink.keep(out, relative)
        except (OSError, PmockBatchError) as err:  # the job's own error matters more
            log.warning(
                "%s: could not keep the rejected image: %s",
                job.id,
                err,
                extra={"event": "warning", "job_id": job.id},
            )
            return
        reason = _reason(exc)
        state.rejected.append(RejectedFile(path=relative, bytes=size, sha256=sha256, reason=reason))
        log.warning(
            "%s: the server's 200 was billed but unusable (%s); its %d bytes are kept as %s",
            job.id,
            reason,
            size,
            relative,
            extra={"event": "rejected", "job_id": job.id, "path": relative, "bytes": size},
        )

    async def _request(self, body: dict[str, Any], sink: ImageSink, *, url: bool) -> Reply:
        """One HTTP exchange: the image streams into ``sink`` (or is downloaded into it).

        Only ``data[0]`` is read. Its ``url`` is followed only when the job asked
        for ``response_format: url``. An error after a 2xx had started to arrive
        is marked ``answered``: billed.
        """
        try:
            reply = await self.client.generate(body, sink)
        except APIError as exc:
            exc.answered = exc.answered or sink.answered
            raise
        item = reply.body.data[0]
        try:
            if not sink.streamed:
                if item.url and url:
                    await self._download(item.url, sink)
                elif item.b64_json:  # an unusual body the scanner left whole
                    image = await asyncio.to_thread(decode_and_verify, item.b64_json)
                    await sink.feed_raw(image.data)
                elif item.url:
                    raise InvalidResponseError(
                        "the server's answer has a url, not the b64_json that was asked for"
                    )
                else:
                    raise InvalidResponseError("the server's answer has neither b64_json nor url")
        except APIError as exc:
            exc.answered = True  # the POST was answered 2xx
            raise
        return reply

    async def _download(self, url: str, sink: ImageSink) -> None:
        """GET a 2xx's image URL, retrying the GET alone: a new POST would be billed again."""

        def before_sleep(retry_state: RetryCallState) -> None:
            outcome = retry_state.outcome
            exc = outcome.exception() if outcome is not None else None
            log.debug(
                "downloading the image failed (%s); retrying the GET in %.1fs",
                _reason(exc),
                retry_state.upcoming_sleep,
                extra={"event": "download_retry", "attempt": retry_state.attempt_number},
            )

        async for get in self.policy.download_retrying(before_sleep=before_sleep):
            with get:
                sink.restart()
                await self.client.download(url, sink)

    # -- records for jobs that never ran ---------------------------------

    def _invalid_record(self, item: InvalidLine) -> JobRecord:
        now = _now()
        return JobRecord(
            id=item.id,
            line=item.line,
            status="invalid",
            error=ErrorRecord(kind="invalid", message=item.message),
            started_at=now,
            finished_at=now,
        )

    def _not_run_record(
        self, job: Job, *, state: _Attempts | None = None, files: list[FileRecord] | None = None
    ) -> JobRecord:
        """A job that did not finish. One cancelled in flight keeps its attempts (the server
        saw them) and the images it saved (they were paid for); with images it is ``failed``."""
        state = state or _Attempts()
        return JobRecord(
            id=job.id,
            line=job.line,
            status="failed" if files else "not_run",
            files=files or [],
            attempts=state.count,
            http_status=state.http_status,
            error=ErrorRecord(kind="not_run", message=self._abort_reason or "interrupted"),
            request=job.wire_body(self.config.field_case),
            fingerprint=job.fingerprint,
            ambiguous_retries=state.ambiguous,
            billed_retries=state.billed,
            rejected=state.rejected,
        )


def add_usage(total: dict[str, Any], usage: dict[str, Any] | None) -> None:
    """Add a response's (or record's) integer usage fields into ``total``."""
    for key, value in (usage or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
