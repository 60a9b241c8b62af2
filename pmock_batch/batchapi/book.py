"""Which images each owed job still needs, and its record once it has them all.

Output lines arrive one image at a time, in any order, maybe over several
batches; the :class:`Book` gathers them per job. A job is recorded when every
image has an outcome: ``ok`` if all succeeded, else ``failed`` (the images
that did arrive are kept and listed). At the end of a run, a job with images
still owed is ``pending`` (in a batch still running on the server) or
``not_run`` (its rows were never run: an expired or cancelled batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..jobs import Job
from ..models import ErrorRecord, FileRecord, JobRecord, JobStatus
from ..pool import Progress
from ..prices import Prices, price_record
from ..tally import add_usage

__all__ = ["Book", "Entry", "now"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Entry:
    """One owed job, filling in as its images' lines arrive."""

    job: Job
    left: set[int]  # indices of images still owed
    files: dict[int, FileRecord] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)  # rejected bytes, attempts
    error: ErrorRecord | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    batch_ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    revised: str | None = None
    started_at: str = field(default_factory=now)

    def seen(self, batch_id: str, request_id: str | None, status: int | None) -> None:
        self.progress.attempts += 1
        self.progress.http_status = status
        self.request_id = self.request_id or request_id
        if batch_id not in self.batch_ids:
            self.batch_ids.append(batch_id)


class Book:
    """The owed jobs of a run, by the ``custom_id`` of each of their images."""

    def __init__(
        self,
        jobs: list[Job],
        *,
        field_case: str = "snake",
        kept: dict[str, list[FileRecord]] | None = None,
        prices: Prices | None = None,
    ) -> None:
        """``kept``: by job id, the images an earlier run saved of it (not owed again).
        ``prices``: the table records are priced from (None: the shipped one)."""
        self.field_case = field_case
        self.prices = prices
        self.entries: dict[str, Entry] = {}
        self._by_cid: dict[str, tuple[Entry, int]] = {}
        for job in jobs:
            index_of = {stem: index for index, stem in enumerate(job.stems)}
            files = {index_of[f.path.rpartition(".")[0]]: f for f in (kept or {}).get(job.id, [])}
            entry = Entry(job, set(range(job.request.count)) - files.keys(), files=files)
            entry.progress.kept = len(files)  # the record says so: its ``kept``
            self.entries[job.id] = entry
            for index, stem in enumerate(job.stems):
                self._by_cid[stem] = (entry, index)

    def owed(self, custom_id: str, fingerprint: str | None) -> tuple[Entry, int] | None:
        """The job and image a line is for, if that image of that very request is owed."""
        found = self._by_cid.get(custom_id)
        if found is None:
            return None
        entry, index = found
        if index not in entry.left or fingerprint not in (None, entry.job.fingerprint):
            return None
        return found

    def owed_rows(self) -> list[tuple[Job, list[int]]]:
        """Each job with images still owed, and their indices."""
        return [(e.job, sorted(e.left)) for e in self.entries.values() if e.left]

    def ok(
        self, entry: Entry, index: int, file: FileRecord, usage: dict[str, Any] | None
    ) -> JobRecord | None:
        entry.files[index] = file
        add_usage(entry.usage, usage)
        entry.left.discard(index)
        return self._finish(entry)

    def failed(self, entry: Entry, index: int, error: ErrorRecord) -> JobRecord | None:
        entry.error = entry.error or error
        entry.left.discard(index)
        return self._finish(entry)

    def _finish(self, entry: Entry) -> JobRecord | None:
        if entry.left:
            return None
        del self.entries[entry.job.id]
        return self.record(entry, "ok" if entry.error is None else "failed", entry.error)

    def record(self, entry: Entry, status: JobStatus, error: ErrorRecord | None) -> JobRecord:
        job, progress = entry.job, entry.progress
        record = JobRecord(
            id=job.id,
            line=job.line,
            status=status,
            files=[entry.files[i] for i in sorted(entry.files)],
            kept=progress.kept,
            attempts=progress.attempts,
            http_status=progress.http_status,
            error=error,
            revised_prompt=entry.revised,
            usage=entry.usage or None,
            request=job.record_request(self.field_case),
            fingerprint=job.fingerprint,
            started_at=entry.started_at,
            finished_at=now() if status in ("ok", "failed") else None,
            warnings=entry.warnings,
            rejected=progress.rejected,
            via="batch",
            batch_id=entry.batch_ids[0] if entry.batch_ids else None,
            request_id=entry.request_id,
        )
        if len(entry.batch_ids) > 1:
            record.batch_ids = list(entry.batch_ids)  # type: ignore[attr-defined]
        return price_record(record, via="batch", prices=self.prices)

    def leftovers(self, running: dict[str, str], reason: str) -> list[JobRecord]:
        """Records of the jobs still owed: ``pending`` if a running batch holds one of its
        images (``running``: custom_id -> batch id), else ``not_run`` with ``reason``."""
        out: list[JobRecord] = []
        for entry in list(self.entries.values()):
            batch = next(
                (
                    running[s]
                    for i, s in enumerate(entry.job.stems)
                    if i in entry.left and s in running
                ),
                None,
            )
            if batch is not None:
                if batch not in entry.batch_ids:
                    entry.batch_ids.insert(0, batch)
                out.append(self.record(entry, "pending", None))
            else:
                status: JobStatus = "failed" if entry.error else "not_run"
                out.append(
                    self.record(
                        entry, status, entry.error or ErrorRecord(kind="not_run", message=reason)
                    )
                )
        self.entries.clear()
        return out
