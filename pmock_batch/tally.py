"""What a run did, counted in one place: :meth:`Summary.add` is the only reducer.

The CLI's summary table, ``--json``, the live progress and report.html all
read a :class:`Summary` built by it, so they cannot disagree about the same
records. The rules, once:

- every record is one job, counted by its status (ok, failed, invalid, not run,
  pending: in a Batch API batch still running on the server);
- ``images`` counts every image saved, a partly failed ``n > 1`` job's included:
  they are on disk and were paid for;
- ``failed_by_kind`` counts failed and invalid jobs by ``error.kind``; jobs not
  run have their own count and are not failures of a kind;
- attempts, retries (ambiguous and billed among them), 429s, warnings, usage and
  job seconds are the records' own numbers, added up;
- ``cost_usd`` adds up the records' estimates; a record that saved an image or
  carries usage but has no estimate (a model not in the price table) is counted
  in ``cost_unpriced``. ``cost_direct_usd`` is what the same records would have
  cost as direct requests: a Batch API record's ``cost_direct_usd``, any other
  record's ``cost_usd``.

A job a previous run finished is not a record of this run: :meth:`Summary.skip`
counts it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .models import JobRecord

__all__ = ["MAX_LISTED_FAILURES", "FailureGroup", "Summary", "add_usage", "summarize"]

MAX_LISTED_FAILURES = 20
MAX_FAILURE_GROUPS = 20  # distinct (kind, message) pairs kept; the rest are only counted
MAX_GROUP_IDS = 5  # ids named per group


def add_usage(total: dict[str, Any], usage: dict[str, Any] | None) -> None:
    """Add a response's (or record's) numeric usage fields into ``total``."""
    for key, value in (usage or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def _timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(slots=True)
class FailureGroup:
    """Failed jobs that failed alike: the same kind and the same message."""

    kind: str
    message: str
    count: int = 0
    ids: list[str] = field(default_factory=list)  # the first few

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "count": self.count, "ids": self.ids}


@dataclass(slots=True)
class Summary:
    """The counts of a set of records, plus the run's own facts (elapsed, aborted...)."""

    jobs: int = 0
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    not_run: int = 0
    pending: int = 0  # in a batch still running on the server (--batch-api --no-wait)
    skipped: int = 0  # done by an earlier run: no record of this one
    images: int = 0
    attempts: int = 0
    retries: int = 0
    ambiguous_retries: int = 0  # retries after a timeout: the first try may have been billed
    billed_retries: int = 0  # retries after a 2xx whose image was unusable: each one was billed
    warnings: int = 0  # warnings in the records (sizes not as asked, bytes after the end...)
    rate_limited: int = 0  # 429 answers seen
    job_seconds: float = 0.0  # the jobs' elapsed times, added up
    usage: dict[str, Any] = field(default_factory=dict)
    cost_usd: float = 0.0  # the records' estimates, added up
    cost_direct_usd: float = 0.0  # the same work as direct requests
    cost_unpriced: int = 0  # records that spent something the price table cannot price
    via_batch: int = 0  # records of the Batch API runner
    failed_by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), the first few
    failure_groups: dict[tuple[str, str], FailureGroup] = field(default_factory=dict)
    ungrouped_failures: int = 0  # failures past MAX_FAILURE_GROUPS distinct groups
    first_started: datetime | None = None
    last_finished: datetime | None = None
    # The run's own facts, set by the run, not counted from records:
    elapsed_s: float = 0.0
    aborted: str | None = None  # why the run stopped early, if it did
    budget: str | None = None  # the spending cap stopped it: "budget reached: $1.02 of $1.00 spent"
    interrupted: bool = False
    batches_running: int = 0  # --batch-api: batches still running on the server at the end

    @property
    def done(self) -> int:
        """Jobs accounted for: recorded or skipped."""
        return self.jobs + self.skipped

    @property
    def not_ok(self) -> int:
        """Jobs recorded as anything but ok: failed, invalid and not run."""
        return self.failed + self.invalid + self.not_run

    @property
    def images_per_minute(self) -> float:
        return self.images / self.elapsed_s * 60.0 if self.elapsed_s > 0 else 0.0

    @property
    def wall_seconds(self) -> float | None:
        """First start to last finish, as the records say."""
        if self.first_started is None or self.last_finished is None:
            return None
        with contextlib.suppress(TypeError):  # naive and aware timestamps mixed
            return max(0.0, (self.last_finished - self.first_started).total_seconds())
        return None

    def add(self, record: JobRecord) -> None:
        """Count one record: the only place that counts."""
        self.jobs += 1
        if record.status == "ok":
            self.ok += 1
        elif record.status == "failed":
            self.failed += 1
        elif record.status == "invalid":
            self.invalid += 1
        elif record.status == "pending":
            self.pending += 1
        else:
            self.not_run += 1
        self.images += max(0, len(record.files) - record.kept)  # made by this run
        self.attempts += record.attempts
        self.retries += record.retries
        self.ambiguous_retries += record.ambiguous_retries
        self.billed_retries += record.billed_retries
        self.rate_limited += record.rate_limited
        self.warnings += len(record.warnings)
        self.job_seconds += record.elapsed_s
        add_usage(self.usage, record.usage)
        self._cost(record)
        if record.error is not None and record.status in ("failed", "invalid"):
            self.failed_by_kind[record.error.kind] += 1
            name = record.id or f"line {record.line}"
            if len(self.failures) < MAX_LISTED_FAILURES:
                self.failures.append((name, record.error.message))
            self._group(record.error.kind, record.error.message, name)
        self._times(record)

    def _cost(self, record: JobRecord) -> None:
        cost = record.cost_usd
        if cost is None and (record.files or record.usage):
            self.cost_unpriced += 1
        direct = cost
        if getattr(record, "via", None) == "batch":
            self.via_batch += 1
            direct = getattr(record, "cost_direct_usd", None)
            direct = direct if isinstance(direct, int | float) else cost
        self.cost_usd += cost or 0.0
        self.cost_direct_usd += direct or 0.0

    def _group(self, kind: str, message: str, name: str) -> None:
        group = self.failure_groups.get((kind, message))
        if group is None:
            if len(self.failure_groups) >= MAX_FAILURE_GROUPS:
                self.ungrouped_failures += 1
                return
            group = self.failure_groups[(kind, message)] = FailureGroup(kind, message)
        group.count += 1
        if len(group.ids) < MAX_GROUP_IDS:
            group.ids.append(name)

    def skip(self) -> None:
        """Count a job an earlier run finished."""
        self.skipped += 1

    def wait_in_batch(self) -> None:
        """Count a job a direct run leaves to the Batch API batch it is in (``pending``)."""
        self.jobs += 1
        self.pending += 1

    def _times(self, record: JobRecord) -> None:
        with contextlib.suppress(TypeError):  # naive and aware timestamps mixed
            start = _timestamp(record.started_at)
            if start is not None and (self.first_started is None or start < self.first_started):
                self.first_started = start
            end = _timestamp(record.finished_at)
            if end is not None and (self.last_finished is None or end > self.last_finished):
                self.last_finished = end

    def counts(self) -> dict[str, Any]:
        """The counts as ``--json`` and report.html write them."""
        return {
            "jobs": {
                "total": self.done,
                "ok": self.ok,
                "failed": self.failed,
                "invalid": self.invalid,
                "not_run": self.not_run,
                "pending": self.pending,
                "skipped": self.skipped,
            },
            "images": self.images,
            "attempts": self.attempts,
            "retries": self.retries,
            "ambiguous_retries": self.ambiguous_retries,
            "billed_retries": self.billed_retries,
            "rate_limited": self.rate_limited,
            "warnings": self.warnings,
            "failed_by_kind": dict(sorted(self.failed_by_kind.items())),
            "usage": dict(self.usage),
            "cost_usd": round(self.cost_usd, 6),
            "cost_unpriced": self.cost_unpriced,
            **({"cost_direct_usd": round(self.cost_direct_usd, 6)} if self.via_batch else {}),
        }


def summarize(records: Iterable[JobRecord]) -> Summary:
    """A :class:`Summary` of ``records``."""
    summary = Summary()
    for record in records:
        summary.add(record)
    return summary
