"""The Batch API runner: owed jobs -> input files -> batches -> collected records.

:meth:`BatchRunner.run` takes the items of a job file as the pool would:
invalid lines are recorded, jobs an earlier run finished are skipped, and the
rest are owed. It first re-attaches to what ``OUT/batches.jsonl`` says is on
the server (a batch still running, an upload whose batch creation was cut off:
found again by its ``metadata.pmock_batch_input`` tag), deletes orphan uploads,
submits the rows no batch holds, then polls, and collects each batch that
ends. Rows an expired, cancelled or failed batch never ran are submitted again
once in the same run. Without waiting (``--no-wait``), or after Ctrl-C, jobs
still in a running batch are recorded ``pending``; a re-run re-attaches.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import APIError
from ..images import ImageSink
from ..jobs import InvalidLine, Job
from ..models import ErrorRecord, JobRecord
from ..pool import Ledger, Pool
from .book import Book, now
from .collect import Collector
from .plan import ENDPOINT, MAX_BATCH_SIZE, MAX_FILE_BYTES, rows_of, split
from .state import TERMINAL, Batch, BatchState, Upload
from .transport import BatchClient

__all__ = ["DEFAULT_POLL_INTERVAL", "BatchOptions", "BatchRunner", "still_running"]

log = logging.getLogger("pmock_batch")

DEFAULT_POLL_INTERVAL = 30.0
TAG = "pmock_batch_input"  # metadata on every batch: the input file id it was created for
_WINDOW = 24 * 3600.0
_VALIDATING_BACKOFF = 1.5  # each poll that finds a batch still validating waits this much longer
_MAX_BACKOFF = 4.0  # times the poll interval, at most


def still_running(count: int, out_dir: Path) -> str:
    return (
        f"{count} batch(es) still running on the server; run the same command again to "
        f"collect them, or `pmock-batch batches {out_dir} --cancel`"
    )


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How the Batch API runner submits and waits (``--batch-size``, ``--poll-interval``...)."""

    batch_size: int = MAX_BATCH_SIZE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    wait: bool = True  # False: --no-wait
    keep_files: bool = False
    max_file_bytes: int = MAX_FILE_BYTES
    sleep: Callable[[float], Awaitable[None]] | None = None  # None: the pool's (ends on stop)
    on_step: Callable[[str], None] | None = None  # tests: called after each state step
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)


@dataclass(slots=True)
class _Active:
    batch: Batch
    rows: dict[str, str]  # custom_id -> fingerprint
    polls: int = 0


Writer = Callable[[ImageSink, Path, str], Awaitable[Path]]


class BatchRunner:
    """Runs owed jobs through the Batch API; records go to the ledger."""

    def __init__(
        self,
        api: BatchClient,
        pool: Pool,
        ledger: Ledger,
        out_dir: Path,
        *,
        options: BatchOptions,
        writer: Writer,
        field_case: str = "snake",
    ) -> None:
        self.api = api
        self.pool = pool
        self.ledger = ledger
        self.out_dir = out_dir
        self.options = options
        self.writer = writer
        self.field_case = field_case
        self.sleep = options.sleep or pool.sleep
        self.active: dict[str, _Active] = {}
        self.submitted = 0  # batches created by this run
        self._again: set[str] = set()  # custom_ids already submitted again in this run
        self.state = BatchState(out_dir)
        self.book = Book([], field_case=field_case)

    # -- the run -------------------------------------------------------------

    async def run(self, items: Iterable[Job | InvalidLine]) -> None:
        owed: list[Job] = []
        for item in items:
            if isinstance(item, InvalidLine):
                await self.ledger.record([_invalid(item)])
            elif await self.ledger.is_done(item):
                self.ledger.skip(item)
            else:
                owed.append(item)
        self.book = Book(owed, field_case=self.field_case)
        self.state = await asyncio.to_thread(
            BatchState.load, self.out_dir, on_step=self.options.on_step
        )
        try:
            await self._orphans()
            await self._reattach()  # also tidies files a kill left after collection
            await self._submit(self._uncovered())
            await self._wait()
        except APIError as exc:
            self.pool.abort(f"the Batch API failed: {exc}")
        finally:
            await self._leftovers()

    def _uncovered(self) -> list[tuple[Job, list[int]]]:
        held = {cid for act in self.active.values() for cid in act.rows}
        out = []
        for job, left in self.book.owed_rows():
            free = [i for i in left if job.stems[i] not in held]
            if free:
                out.append((job, free))
        return out

    async def _leftovers(self) -> None:
        running = {
            cid: act.batch.batch_id
            for act in self.active.values()
            if act.batch.running
            for cid in act.rows
        }
        reason = (
            self.pool.stop_reason
            if self.pool.stopping
            else ("its batch ended before this image ran (expired or cancelled); run again")
        )
        records = self.book.leftovers(running, reason)
        if records:
            await self.ledger.record(records)
        count = len({b for b in running.values()})
        if count:
            log.warning(
                "%s",
                still_running(count, self.out_dir),
                extra={"event": "batches_running", "batches": count},
            )

    # -- submission -----------------------------------------------------------

    async def _submit(self, owed: list[tuple[Job, list[int]]]) -> None:
        rows = (row for job, left in owed for row in rows_of(job, self.field_case, only=left))
        opts = self.options
        for infile in split(rows, batch_size=opts.batch_size, max_bytes=opts.max_file_bytes):
            if self.pool.stopping:
                return
            name = f"pmock-batch-{secrets.token_hex(6)}.jsonl"
            await asyncio.to_thread(self.state.uploading, name)
            obj = await self.api.upload(name, infile.content)
            upload = await asyncio.to_thread(
                self.state.uploaded, str(obj["id"]), name, infile.model, infile.fingerprints
            )
            log.info(
                "uploaded %s: %d image(s) of %s (%s bytes)",
                upload.file_id,
                len(infile.rows),
                infile.model,
                f"{infile.size:,}",
                extra={"event": "batch_upload", "file_id": upload.file_id},
            )
            await self._create(upload)

    async def _create(self, upload: Upload) -> None:
        obj = await self.api.create(upload.file_id, ENDPOINT, {TAG: upload.file_id})
        at = obj.get("created_at")
        batch = await asyncio.to_thread(
            self.state.created, str(obj["id"]), upload.file_id, float(at) if at else None
        )
        self.submitted += 1
        log.info(
            "submitted %s: %d image(s)",
            batch.batch_id,
            len(upload.rows),
            extra={"event": "batch_submitted", "batch_id": batch.batch_id},
        )
        self.active[batch.batch_id] = _Active(batch, upload.rows)

    async def _reattach(self) -> None:
        for upload in list(self.state.uploads.values()):
            if upload.deleted:
                continue
            owed = any(self.book.owed(cid, fp) for cid, fp in upload.rows.items())
            batch = self.state.batches.get(upload.batch_id or "")
            if batch is not None:
                if batch.collected and not self.options.keep_files:  # a kill before deleting
                    for file_id in (batch.file_id, batch.output_file_id, batch.error_file_id):
                        await self._delete(file_id)
                if owed and not batch.collected:
                    log.info(
                        "re-attached to %s (%s)",
                        batch.batch_id,
                        batch.status,
                        extra={"event": "batch_attached", "batch_id": batch.batch_id},
                    )
                    self.active[batch.batch_id] = _Active(batch, upload.rows)
                continue
            if not owed:  # an upload no batch was created for, and nothing it holds is owed
                await self._delete(upload.file_id)
                continue
            found = await self._find(upload)
            if found is None:
                await self._create(upload)
                continue
            at = found.get("created_at")
            batch = await asyncio.to_thread(
                self.state.created, str(found["id"]), upload.file_id, float(at) if at else None
            )
            log.info(
                "re-attached to %s, found by its tag",
                batch.batch_id,
                extra={"event": "batch_attached", "batch_id": batch.batch_id},
            )
            self.active[batch.batch_id] = _Active(batch, upload.rows)

    async def _find(self, upload: Upload) -> dict[str, Any] | None:
        """The batch created for ``upload`` before a crash, if any: by its metadata tag."""
        async for batch in self.api.recent(since=upload.at - 60):
            metadata = batch.get("metadata")
            if isinstance(metadata, dict) and metadata.get(TAG) == upload.file_id:
                return batch
        return None

    async def _orphans(self) -> None:
        """Delete files uploaded just before a crash that kept their ids from the log."""
        if not self.state.intents:
            return
        try:
            files = await self.api.batch_files()
        except APIError as exc:
            log.warning(
                "could not list uploaded files to delete orphans: %s",
                exc,
                extra={"event": "warning"},
            )
            return
        for name in list(self.state.intents):
            for f in files:
                if f.get("filename") == name and f.get("id"):
                    await self._delete(str(f["id"]))
            await asyncio.to_thread(self.state.forgotten, name)

    async def _delete(self, file_id: str | None) -> None:
        if not file_id or file_id in self.state.deleted:
            return
        try:
            await self.api.delete_file(file_id)
        except APIError as exc:
            log.warning("could not delete %s: %s", file_id, exc, extra={"event": "warning"})
            return
        await asyncio.to_thread(self.state.deleted_file, file_id)

    # -- waiting and collecting ---------------------------------------------------

    async def _wait(self) -> None:
        while self.active and not self.pool.stopping:
            validating = False
            for act in list(self.active.values()):
                if self.pool.stopping:
                    return
                await self._poll(act)
                validating = validating or act.batch.status == "validating"
            if not self.active or not self.options.wait:
                return
            await self.sleep(self._interval(validating))

    def _interval(self, validating: bool) -> float:
        base = self.options.poll_interval
        if validating:
            polls = max(act.polls for act in self.active.values())
            base *= min(_MAX_BACKOFF, _VALIDATING_BACKOFF ** max(0, polls - 1))
        return base * self.options.rng.uniform(0.9, 1.1)

    async def _poll(self, act: _Active) -> None:
        batch = act.batch
        try:
            seen = await self.api.retrieve(batch.batch_id)
        except APIError as exc:  # polling is idempotent: the next poll tries again
            log.warning("%s: polling failed: %s", batch.batch_id, exc, extra={"event": "warning"})
            return
        act.polls += 1
        if await asyncio.to_thread(self.state.status, batch, seen) or act.polls == 1:
            self._show(batch)
        if batch.status in TERMINAL:
            await self._collect(act)

    def _show(self, batch: Batch) -> None:
        counts = batch.counts
        ago = max(0.0, self.options.clock() - batch.at)
        ends = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(batch.at + _WINDOW))
        log.info(
            "%s: %s, %d of %d done, %d failed; submitted %dm ago, ends by %s",
            batch.batch_id,
            batch.status,
            counts.get("completed", 0),
            counts.get("total", 0),
            counts.get("failed", 0),
            ago // 60,
            ends,
            extra={
                "event": "batch_status",
                "batch_id": batch.batch_id,
                "status": batch.status,
                "request_counts": counts,
            },
        )

    async def _collect(self, act: _Active) -> None:
        batch = act.batch
        collector = Collector(self.api, self.book, self.out_dir, self.writer)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                async for record in collector.collect(file_id, batch.batch_id, act.rows):
                    await self.ledger.record([record])
        await asyncio.to_thread(self.state.collected, batch)
        del self.active[batch.batch_id]
        if not self.options.keep_files:
            for file_id in (batch.file_id, batch.output_file_id, batch.error_file_id):
                await self._delete(file_id)
        if batch.status == "completed" or not self.options.wait or self.pool.stopping:
            return
        again = [
            (job, [i for i in left if job.stems[i] in act.rows and job.stems[i] not in self._again])
            for job, left in self.book.owed_rows()
        ]
        again = [(job, left) for job, left in again if left]
        if again:
            self._again.update(job.stems[i] for job, left in again for i in left)
            log.info(
                "%s %s: submitting its %d unfinished image(s) again, once",
                batch.batch_id,
                batch.status,
                sum(len(x) for _, x in again),
                extra={"event": "batch_resubmit", "batch_id": batch.batch_id},
            )
            await self._submit(again)


def _invalid(item: InvalidLine) -> JobRecord:
    at = now()
    return JobRecord(
        id=item.id,
        line=item.line,
        status="invalid",
        error=ErrorRecord(kind="invalid", message=item.message),
        started_at=at,
        finished_at=at,
    )
