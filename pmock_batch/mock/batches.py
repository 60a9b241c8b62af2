"""The mock's Batch API: batches, their input's validation, their status clock, their rows.

Nothing here runs on a timer. A batch's status is a pure function of the
mock's clock (``create_app(clock=...)``) and of the options it was created
with, so tests move a fake clock instead of sleeping. With ``S`` the
``batch_seconds`` and ``t`` the time since creation::

    t < 0.1 S           validating   (an invalid input file: failed from 0.1 S on)
    0.1 S <= t < 0.9 S  in_progress  rows are done in input order, linearly over this span
    0.9 S <= t < S      finalizing
    S <= t              completed

With ``batch_expire_after_fraction`` F the batch stops at ``floor(F x total)``
rows, stays ``in_progress`` until ``S`` and is then ``expired``. A cancel at
time ``c`` freezes the rows done by ``c``; the batch is ``cancelling`` for
``batch_cancel_delay`` seconds, then ``cancelled``. ``request_counts.total`` is
0 while validating; rows never run count as neither ``completed`` nor ``failed``.

When a batch ends (completed, expired or cancelled) it writes its files, once:
the output file holds the rows that ran and succeeded, the error file the rows
that ran and failed (``response.status_code`` 4xx/5xx and the error body) and
the rows it never ran (``error.code`` ``batch_expired`` or ``batch_cancelled``,
``response: null``). A file with no line is not written: its id stays null.
Each row's outcome is decided when the batch is created, and the row counts as
an attempt of its prompt then (scripts advance by it): the first
``batch_fail_rows`` rows fail with a 500, a prompt with a moderation word is
blocked (400 ``moderation_blocked``), and otherwise the prompt's script or
fault rates decide, as for a direct request (an HTTP error goes to the error
file; ``corrupt``, ``bad_base64``, ``bomb``, ``bad_shape`` and ``url`` change
the output line's body; transport faults such as ``drop`` do not apply).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import json
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .batch_input import InputProblem, Row, decide_row, edit_of, parse_input
from .faults import Outcome
from .files import FileStore, StoredFile, new_id
from .options import MockOptions

__all__ = [
    "COMPLETION_WINDOW",
    "TERMINAL",
    "Batch",
    "BatchStore",
]

COMPLETION_WINDOW = "24h"
EXPIRY_SECONDS = 24 * 3600  # expires_at: created_at + 24 h, as the real API states it
VALIDATING_SHARE = 0.1  # of batch_seconds: validating, then in_progress ...
FINALIZING_SHARE = 0.1  # ... and finalizing, the last tenth
OUTPUT_LINE_OVERHEAD = 400  # bytes of an output line besides its images, for the size estimate
PLAIN_IMAGE_BYTES = 40_000  # a plain mock PNG's size, roughly, for the size estimate

Status = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL: tuple[Status, ...] = ("failed", "completed", "expired", "cancelled")


@dataclass(slots=True)
class Batch:
    """One batch: what it was given, and when things happen to it (mock-clock seconds)."""

    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created: float  # mock clock
    epoch: float  # Unix seconds at mock-clock 0, for the timestamps
    rows: tuple[Row, ...]
    problems: tuple[InputProblem, ...]
    model: str | None
    seconds: float  # validating -> completed
    expire_fraction: float | None
    cancel_delay: float
    sequence: int
    cancelled: float | None = None  # when cancel was asked (mock clock)
    output_file_id: str | None = None
    error_file_id: str | None = None
    settled: bool = False  # its files are written
    _failed_before: list[int] = field(init=False, repr=False)  # failed rows among the first i

    def __post_init__(self) -> None:
        count = 0
        self._failed_before = [0]
        for row in self.rows:
            count += row.failed
            self._failed_before.append(count)

    # -- the clock --------------------------------------------------------------------

    @property
    def in_progress_from(self) -> float:
        return self.created + VALIDATING_SHARE * self.seconds

    @property
    def finalizing_from(self) -> float:
        if self.expire_fraction is not None:
            return self.ends
        return self.created + (1 - FINALIZING_SHARE) * self.seconds

    @property
    def ends(self) -> float:
        """When it completes or expires, unless cancelled first."""
        return self.created + self.seconds

    @property
    def cap(self) -> int:
        """The rows it can do: all, or the fraction it expires with."""
        if self.expire_fraction is None:
            return len(self.rows)
        return math.floor(self.expire_fraction * len(self.rows))

    def done_at(self, now: float) -> int:
        """Rows run by ``now`` (in input order), as the clock alone says."""
        if self.problems or now < self.in_progress_from:
            return 0
        start, stop = self.in_progress_from, self.created + (1 - FINALIZING_SHARE) * self.seconds
        share = 1.0 if now >= stop or stop <= start else (now - start) / (stop - start)
        return min(self.cap, math.floor(len(self.rows) * share))

    def done(self, now: float) -> int:
        """Rows run by ``now``: frozen when it was cancelled."""
        return self.done_at(now if self.cancelled is None else min(now, self.cancelled))

    def status(self, now: float) -> Status:
        """Its status at ``now`` (see the module docstring)."""
        if self.cancelled is not None and now >= self.cancelled:
            return "cancelling" if now < self.cancelled + self.cancel_delay else "cancelled"
        if now < self.in_progress_from:
            return "validating"
        if self.problems:
            return "failed"
        if now < self.finalizing_from:
            return "in_progress"
        if now < self.ends:
            return "finalizing"
        return "expired" if self.expire_fraction is not None else "completed"

    def counts(self, now: float) -> dict[str, int]:
        """``request_counts``: rows run and succeeded, run and failed; not-run rows in neither.

        The total is 0 while the input is being validated, as the real API shows it.
        """
        if self.status(now) == "validating":
            return {"total": 0, "completed": 0, "failed": 0}
        done = self.done(now)
        failed = self._failed_before[done]
        return {"total": len(self.rows), "completed": done - failed, "failed": failed}

    def not_run_code(self) -> str:
        """``error.code`` of the rows it never ran."""
        return "batch_cancelled" if self.cancelled is not None else "batch_expired"

    # -- lines --------------------------------------------------------------------------

    def ran(self, now: float) -> tuple[list[Row], list[Row], list[Row]]:
        """The rows that succeeded, those that failed, and those never run (at its end)."""
        done = self.done(now)
        succeeded = [r for r in self.rows[:done] if not r.failed]
        failed = [r for r in self.rows[:done] if r.failed]
        return succeeded, failed, list(self.rows[done:])

    def line_ids(self, row: Row) -> tuple[str, str]:
        """The line's ``id`` (``batch_req_…``) and ``request_id``: the same at every read."""
        digest = hashlib.sha256(f"{self.id}|{row.index}".encode()).hexdigest()
        return "batch_req_" + digest[:32], "req_" + digest[32:64]

    def output_head(self, row: Row) -> bytes:
        """An output line up to its body; the body and :data:`OUTPUT_TAIL` follow."""
        line_id, request_id = self.line_ids(row)
        head = (
            f'{{"id": {json.dumps(line_id)}, "custom_id": {json.dumps(row.custom_id)}, '
            f'"response": {{"status_code": 200, "request_id": {json.dumps(request_id)}, "body": '
        )
        return head.encode("utf-8")

    def error_line(self, row: Row, *, ran: bool) -> bytes:
        """An error-file line: a failed row's response, or a row it never ran."""
        line_id, request_id = self.line_ids(row)
        line: dict[str, Any] = {"id": line_id, "custom_id": row.custom_id}
        if ran:
            response = {"status_code": row.status_code, "request_id": request_id, "body": row.error}
            line |= {"response": response, "error": None}
        else:
            code = self.not_run_code()
            ended = "was cancelled" if code == "batch_cancelled" else "expired"
            message = f"The batch {ended} before this request could be executed."
            line |= {"response": None, "error": {"code": code, "message": message}}
        return json.dumps(line).encode("utf-8") + b"\n"

    def error_lines(self, now: float) -> Iterator[bytes]:
        """The error file's lines: failed rows, then rows never run, each in input order."""
        _, failed, not_run = self.ran(now)
        for row in failed:
            yield self.error_line(row, ran=True)
        for row in not_run:
            yield self.error_line(row, ran=False)

    # -- the object ---------------------------------------------------------------------

    def _unix(self, at: float | None) -> int | None:
        return None if at is None else int(self.epoch + at)

    def to_json(self, now: float) -> dict[str, Any]:
        """The batch object, as ``GET /v1/batches/{id}`` answers at ``now``."""
        status = self.status(now)
        stop = now if self.cancelled is None else min(now, self.cancelled)

        def stamp(at: float, applies: bool = True) -> int | None:
            return self._unix(at) if applies and at <= stop else None

        valid = not self.problems
        cancelled_at = None
        if status == "cancelled" and self.cancelled is not None:
            cancelled_at = self._unix(self.cancelled + self.cancel_delay)
        created_at = int(self.epoch + self.created)
        errors = None
        if self.problems:
            errors = {"object": "list", "data": [p.to_json() for p in self.problems]}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": created_at,
            "in_progress_at": stamp(self.in_progress_from, valid),
            "expires_at": created_at + EXPIRY_SECONDS,
            "finalizing_at": stamp(self.finalizing_from, valid and self.expire_fraction is None),
            "completed_at": self._unix(self.ends) if status == "completed" else None,
            "failed_at": self._unix(self.in_progress_from) if status == "failed" else None,
            "expired_at": self._unix(self.ends) if status == "expired" else None,
            "cancelling_at": self._unix(self.cancelled),
            "cancelled_at": cancelled_at,
            "request_counts": self.counts(now),
            "metadata": self.metadata,
            "usage": None,
        }


class BatchStore:
    """Every batch the mock holds, and the files they write when they end."""

    def __init__(self, files: FileStore, *, clock: Callable[[], float], epoch: float) -> None:
        self.files = files
        self.clock = clock
        self.epoch = epoch
        self._batches: dict[str, Batch] = {}
        self._sequence = itertools.count(1)

    def __len__(self) -> int:
        return len(self._batches)

    def get(self, batch_id: str) -> Batch | None:
        return self._batches.get(batch_id)

    def create(
        self,
        input_file: StoredFile,
        *,
        endpoint: str,
        metadata: Mapping[str, str] | None,
        options: MockOptions,
        attempt: Callable[[str], int],
        rng: Callable[[str, int], random.Random],
    ) -> Batch:
        """A new batch over ``input_file``; ``attempt(prompt)`` counts a row as an attempt."""
        parsed = parse_input(input_file.data or b"", endpoint=endpoint, dialect=options.dialect)
        rows: list[Row] = []
        for index, (custom_id, request, refs) in enumerate(parsed.requests):
            number = attempt(request.prompt)
            edit = edit_of(refs, self.files) if refs is not None else None
            if isinstance(edit, dict):  # a file it names is not here: this row fails alone
                rows.append(Row(index, custom_id, request, Outcome("400", 400), edit))
                continue
            row = decide_row(
                index,
                custom_id,
                request,
                options=options,
                attempt=number,
                rng=rng(request.prompt, number),
            )
            rows.append(dataclasses.replace(row, edit=edit) if edit is not None else row)
        batch = Batch(
            id=new_id("batch_", 32),
            input_file_id=input_file.id,
            endpoint=endpoint,
            metadata=dict(metadata) if metadata is not None else None,
            created=self.clock(),
            epoch=self.epoch,
            rows=tuple(rows),
            problems=parsed.problems,
            model=parsed.model,
            seconds=options.batch_seconds,
            expire_fraction=options.batch_expire_after_fraction,
            cancel_delay=options.batch_cancel_delay,
            sequence=next(self._sequence),
        )
        self._batches[batch.id] = batch
        return batch

    def cancel(self, batch: Batch) -> str | None:
        """Start cancelling; the reason it cannot (it has ended) or None."""
        now = self.clock()
        status = batch.status(now)
        if status in TERMINAL:
            return f"Cannot cancel a batch with status {status!r}."
        if batch.cancelled is None:
            batch.cancelled = now
        return None

    def settle(self, *, payload_bytes: int | None) -> list[Batch]:
        """Write the files of batches that have ended; the batches settled now."""
        now = self.clock()
        settled: list[Batch] = []
        for batch in self._batches.values():
            if batch.settled or batch.status(now) not in ("completed", "expired", "cancelled"):
                continue
            batch.settled = True
            settled.append(batch)
            succeeded, failed, not_run = batch.ran(now)
            created_at = int(self.epoch + now)
            if succeeded:
                images = sum(row.request.count for row in succeeded)
                per_image = math.ceil((payload_bytes or PLAIN_IMAGE_BYTES) * 4 / 3)
                size = len(succeeded) * OUTPUT_LINE_OVERHEAD + images * per_image
                stored = self.files.generated(
                    batch_id=batch.id, kind="output", size=size, created_at=created_at
                )
                batch.output_file_id = stored.id
            if failed or not_run:
                size = sum(len(line) for line in batch.error_lines(now))
                stored = self.files.generated(
                    batch_id=batch.id, kind="error", size=size, created_at=created_at
                )
                batch.error_file_id = stored.id
        return settled

    def newest_first(self) -> list[Batch]:
        """Every batch, the newest first (the order ``GET /v1/batches`` lists them in)."""
        return sorted(self._batches.values(), key=lambda b: b.sequence, reverse=True)

    def page(self, *, after: str | None, limit: int) -> tuple[list[Batch], bool]:
        """One page of the list, newest first, after the batch ``after``; and whether more follow.

        An ``after`` that names no batch gives an empty page.
        """
        batches = self.newest_first()
        start = 0
        if after is not None:
            sequences = [-b.sequence for b in batches]
            found = self._batches.get(after)
            if found is None:
                return [], False
            start = bisect.bisect_right(sequences, -found.sequence)
        chosen = batches[start : start + limit]
        return chosen, start + limit < len(batches)


OUTPUT_TAIL = b"}, " + b'"error": null}\n'
