"""The direct runner: one job becomes one :class:`~pmock_batch.models.JobRecord`.

Each image of a job is one POST (``n`` fans out), retried by the policy's
tenacity controller. An attempt takes a request slot of the pool and its turn
at the shared :class:`~pmock_batch.pacing.Pacer`, streams the answer's image
into an :class:`~pmock_batch.images.ImageSink`, then (outside the slot, so the
next request goes out meanwhile) verifies it and renames it into place. Every
failure is described once (:func:`~pmock_batch.failures.describe`) and every
reaction reads that :class:`~pmock_batch.failures.Failure`: the retry, the
pacer's hold after a 429, the tripwire, the abort, the record and the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .answers import Reply
from .budget import Budget, image_cost
from .client import ImagesClient
from .config import RunConfig
from .errors import (
    APIError,
    CannotConnectError,
    Decision,
)
from .events import EventReader, PartialSaver
from .exchange import keep_rejected, request_image
from .failures import Failure, Where, abort_message, describe
from .images import ImageInfo, ImageSink, image_warnings
from .jobs import InvalidLine, Job
from .models import ErrorRecord, JobRecord, JobStatus
from .pacing import Pacer
from .pool import Pool, Progress
from .records import invalid_record, job_record, now, unfinished_record
from .retry import RetryPolicy
from .tally import add_usage
from .tripwire import Tripwire

__all__ = ["DirectRunner", "Writer", "commit"]

log = logging.getLogger("pmock_batch")

Writer = Callable[[ImageSink, Path, str], Awaitable[Path]]


async def commit(sink: ImageSink, out_dir: Path, relative: str) -> Path:
    """The default writer: rename the verified temporary file into place."""
    return await sink.commit(out_dir, relative)


class RetryHook(Protocol):
    """Told about each retry (the live progress shows who is backing off), and given the
    record of an ``n > 1`` job after each image, so a kill loses none of them."""

    def retrying(self, job_id: str, attempt: int, wait: float, reason: str) -> None: ...

    async def checkpoint(self, record: JobRecord) -> None: ...


class _Stopped(Exception):
    """Raised inside a job when the run stopped before its next attempt."""


@dataclass(frozen=True, slots=True)
class _Try:
    """Which try this is: attempt ``attempt`` of image ``image`` of ``images`` of a job."""

    job_id: str
    image: int
    images: int
    attempt: int

    @property
    def name(self) -> str:
        """``fox``, or ``fox (image 2 of 3)``: attempts are retries of one image."""
        if self.images == 1:
            return self.job_id
        return f"{self.job_id} (image {self.image} of {self.images})"

    def logged(self, status: int, started: float) -> None:
        latency = time.monotonic() - started
        log.debug(
            "%s: attempt %d: HTTP %d in %.2fs",
            self.name,
            self.attempt,
            status,
            latency,
            extra={
                "event": "attempt",
                "job_id": self.job_id,
                "image": self.image,
                "attempt": self.attempt,
                "http_status": status,
                "latency_s": round(latency, 3),
            },
        )


def _warn(job: Job, text: str) -> None:
    log.warning("%s: %s", job.id, text, extra={"event": "warning", "job_id": job.id})


def _reader(
    config: RunConfig, body: dict[str, Any], sink: ImageSink, progress: Progress
) -> EventReader | None:
    """The reader of a streamed answer (``stream: true``), or None. It keeps the live count
    of partials in ``progress.streamed``; with ``--save-partials`` it saves them."""
    if body.get("stream") is not True:
        return None
    progress.streamed = 0

    def on_partial(count: int | None) -> None:  # None: the exchange is over
        progress.streamed = count

    saving = config.save_partials
    saver = PartialSaver(config.out_dir, sink.stem, progress.partials) if saving else None
    return EventReader(sink, saver=saver, on_partial=on_partial)


class DirectRunner:
    """Runs jobs over HTTP, one POST per image, against ``config.endpoint``."""

    def __init__(
        self,
        config: RunConfig,
        client: ImagesClient,
        pool: Pool,
        *,
        policy: RetryPolicy,
        pacer: Pacer,
        hook: RetryHook,
        writer: Writer = commit,
    ) -> None:
        self.config = config
        self.client = client
        self.pool = pool
        self.policy = policy.with_sleep(pool.sleep)
        self.pacer = pacer
        self.hook = hook
        self.writer = writer
        self.tripwire = Tripwire()  # aborts early when every job would fail the same way
        self.budget = Budget(max_images=config.max_images, max_cost=config.max_cost)
        self.where = Where(
            endpoint=config.endpoint, out_dir=str(config.out_dir), api_key_env=config.api_key_env
        )

    # -- one job ---------------------------------------------------------

    async def run(self, job: Job, progress: Progress) -> JobRecord:
        started_at, t0 = now(), time.monotonic()
        warnings: list[str] = []
        usage: dict[str, Any] = {}
        revised: str | None = None
        body = job.wire_body(self.config.field_case)
        error: ErrorRecord | None = None
        status: JobStatus = "ok"
        kept = {f.path.rpartition(".")[0] for f in progress.files[: progress.kept]}  # not again
        for index, stem in enumerate(job.stems, start=1):
            if stem in kept:
                continue
            if len(progress.files) > len(kept):  # an image saved since: record it first
                await self.hook.checkpoint(self._checkpoint(job, progress, started_at))
            try:
                image, reply, relative = await self._image(job, stem, body, progress, index)
            except _Stopped:
                status = "not_run"  # the stop came first: not a failure; its images stay
                error = ErrorRecord(kind=self.pool.stop_kind, message=self.pool.stop_reason)
                break
            except Exception as exc:  # a job's failure, even an unexpected one, is a record
                failure = describe(exc, self.policy)
                self._react(job, failure)
                error, status = failure.record(), "failed"
                break
            if image.format != job.request.format:
                warnings.append(
                    f"asked for {job.request.format} but the server sent {image.format}; "
                    f"saved as {relative}"
                )
                _warn(job, warnings[-1])
            for warning in image_warnings(image, size=job.request.size):
                warnings.append(f"{relative}: {warning}")
                _warn(job, warnings[-1])
            progress.files.append(image.record(relative))
            add_usage(usage, reply.body.usage)
            revised = revised or reply.body.data[0].revised_prompt
        if kept:  # in the order of the job's images, wherever the kept ones came
            order = {stem: index for index, stem in enumerate(job.stems)}
            progress.files.sort(key=lambda f: order.get(f.path.rpartition(".")[0], len(order)))
        return self._record(
            job,
            progress,
            status=status,
            error=error,
            elapsed_s=round(time.monotonic() - t0, 3),
            started_at=started_at,
            warnings=warnings,
            usage=usage or None,
            revised_prompt=revised,
        )

    def _checkpoint(self, job: Job, progress: Progress, started_at: str) -> JobRecord:
        """An ``n > 1`` job's record between two images: what a kill leaves in the manifest."""
        why = f"stopped after {len(progress.files)} of {job.request.count} images; a re-run "
        error = ErrorRecord(kind="not_run", message=why + "makes only the rest")
        return self._record(job, progress, status="not_run", error=error, started_at=started_at)

    def _react(self, job: Job, failure: Failure) -> None:
        """What a job's last failure means for the run: an abort, or a tripped wire."""
        if failure.decision is Decision.ABORT:
            self.pool.abort(abort_message(failure, self.where))
        elif (tripped := self.tripwire.rejected(job.id, failure)) is not None:
            self.pool.abort(tripped)
        if failure.kind == "internal":
            log.error(
                "%s: unexpected error",
                job.id,
                exc_info=failure.error,
                extra={"event": "internal"},
            )

    # -- one image ---------------------------------------------------------

    async def _image(
        self, job: Job, stem: str, body: dict[str, Any], progress: Progress, index: int
    ) -> tuple[ImageInfo, Reply, str]:
        """One image, with retries. Raises the last error when attempts run out."""
        name = _Try(job.id, index, len(job.stems), 0).name

        def on_retry(failure: Failure, attempt: int, wait: float) -> None:
            progress.pending_retry = (failure.billed, failure.ambiguous)  # counted when sent
            self.hook.retrying(job.id, attempt, wait, failure.reason)
            log.debug(
                "%s: attempt %d failed (%s); retrying in %.1fs",
                name,
                attempt,
                failure.reason,
                wait,
                extra={
                    "event": "retry",
                    "job_id": job.id,
                    "image": index,
                    "attempt": attempt,
                    "wait_s": round(wait, 3),
                    "reason": failure.reason,
                },
            )

        async for attempt in self.policy.retrying(on_retry=on_retry):
            with attempt:
                number = attempt.retry_state.attempt_number
                this = _Try(job.id, index, len(job.stems), number)
                sink = ImageSink(self.config.out_dir, stem)
                try:
                    return await self._once(job, stem, body, sink, progress, this)
                except APIError as exc:
                    failure = describe(exc, self.policy)
                    if failure.billed and sink.size:
                        await keep_rejected(job.id, sink, stem, failure, progress, number)
                    raise
                finally:
                    sink.discard()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _once(
        self,
        job: Job,
        stem: str,
        body: dict[str, Any],
        sink: ImageSink,
        progress: Progress,
        this: _Try,
    ) -> tuple[ImageInfo, Reply, str]:
        """One attempt at one image: the exchange in a slot, then verify and commit."""
        # The slot covers the HTTP exchange only: verifying and committing the image
        # happen outside it, while the next request goes out.
        async with self.pool.slots:
            await self.pacer.acquire()
            if self.pool.stopping:
                raise _Stopped
            capped, prices = self.budget.capped, self.config.prices
            estimate = image_cost(job.request, None, prices) if capped else None
            if capped and not self.budget.reserve(estimate):
                self.pool.out_of_budget(self.budget.reached())
                raise _Stopped
            progress.retry_sent()
            progress.attempts += 1
            started, sent_at = time.monotonic(), self.pacer.now()
            self.pool.requests += 1
            billed, maybe, cost = True, False, None
            events = _reader(self.config, body, sink, progress)
            try:
                url = job.request.response_format == "url"
                reply = await request_image(
                    self.client,
                    self.policy,
                    body,
                    sink,
                    url=url,
                    edit=job.inputs,
                    events=events,
                )
                cost = image_cost(job.request, reply.body.usage, prices) if capped else None
            except APIError as exc:
                failure = describe(exc, self.policy)
                billed = failure.billed or failure.ambiguous  # paid, or maybe paid
                maybe = failure.ambiguous and not failure.billed
                self._answered(this, exc, progress, started, sent_at)
                raise
            finally:
                self.pool.requests -= 1
                self.pacer.settled()
                if capped:
                    self.budget.settle(estimate, billed=billed, cost=cost, maybe=maybe)
        self.tripwire.succeeded()
        self.pacer.observe(reply.headers, sent_at=sent_at, admitted=True)
        this.logged(reply.status, started)
        image = await sink.verify()
        relative = f"{stem}.{image.extension}"
        await self.writer(sink, self.config.out_dir, relative)
        return image, reply, relative

    def _answered(
        self, this: _Try, exc: APIError, progress: Progress, started: float, sent_at: float
    ) -> None:
        """React to a failed exchange: the pacer, the tripwire, the counts, the log."""
        if exc.answered:  # the POST got its 2xx; what failed came after (a download, the body)
            self.tripwire.answered()
            return
        if isinstance(exc, CannotConnectError):
            tripped = self.tripwire.connect_failed(exc)
            if tripped is not None:
                self.pool.abort(tripped)
            return
        failure = describe(exc, self.policy)
        if failure.status is None:
            return
        progress.http_status = failure.status
        self.tripwire.answered()
        headers = getattr(exc, "headers", None)
        if headers is not None:
            self.pacer.observe(headers, sent_at=sent_at)
        if failure.status == 429:
            progress.rate_limited += 1
            retry = failure.decision is Decision.RETRY  # else this job gives up: no hold for it
            self.pacer.refused(failure.wait, sent_at=sent_at, hold=retry)
        this.logged(failure.status, started)

    # -- records: built in records.py, shared with the Batch API runner's use --------

    def _record(self, job: Job, progress: Progress, **fields: Any) -> JobRecord:
        return job_record(job, progress, self.config.field_case, self.config.prices, **fields)

    def unfinished(
        self, job: Job, progress: Progress | None, reason: str, kind: str = "not_run"
    ) -> JobRecord:
        return unfinished_record(
            job, progress, reason, kind, self.config.field_case, self.config.prices
        )

    def invalid(self, item: InvalidLine) -> JobRecord:
        return invalid_record(item)
