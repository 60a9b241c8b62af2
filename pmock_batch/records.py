"""Records of jobs: one :class:`~pmock_batch.models.JobRecord` from a job and what it did.

Pure: the direct runner builds a finished job's record, a job that did not
finish (not run, or cancelled mid-way), and an invalid line's record here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .jobs import InvalidLine, Job
from .models import ErrorRecord, JobRecord
from .pool import Progress
from .prices import Prices, price_record

__all__ = ["invalid_record", "job_record", "now", "unfinished_record"]


def now() -> str:
    """The time now, as records write it: ``2026-12-01T16:04:41.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_record(
    job: Job, progress: Progress, field_case: str, prices: Prices | None, **fields: Any
) -> JobRecord:
    """The record of ``job`` after what ``progress`` says it did, priced (``cost_usd``)."""
    record = JobRecord(
        id=job.id,
        line=job.line,
        files=progress.files,
        kept=progress.kept,
        attempts=progress.attempts,
        retries=progress.retries,
        rate_limited=progress.rate_limited,
        http_status=progress.http_status,
        request=job.record_request(field_case),
        fingerprint=job.fingerprint,
        ambiguous_retries=progress.ambiguous,
        billed_retries=progress.billed,
        rejected=progress.rejected,
        partials=progress.partials,
        finished_at=now(),
        **fields,
    )
    return price_record(record, via="direct", prices=prices)


def unfinished_record(
    job: Job,
    progress: Progress | None,
    reason: str,
    kind: str,
    field_case: str,
    prices: Prices | None,
) -> JobRecord:
    """A job the stop (Ctrl-C, an abort, the spending cap) reached before it finished:
    ``not_run``, not a failure. One cancelled in flight keeps its attempts (the server
    saw them) and the images it saved (they were paid for: a re-run keeps them)."""
    progress = progress or Progress()
    record = job_record(
        job,
        progress,
        field_case,
        prices,
        status="not_run",
        error=ErrorRecord(kind=kind, message=reason),
    )
    record.finished_at = None
    return record


def invalid_record(item: InvalidLine) -> JobRecord:
    """An invalid line's record (with ``--skip-invalid``): nothing was sent."""
    stamp = now()
    return JobRecord(
        id=item.id,
        line=item.line,
        status="invalid",
        error=ErrorRecord(kind="invalid", message=item.message),
        started_at=stamp,
        finished_at=stamp,
    )
