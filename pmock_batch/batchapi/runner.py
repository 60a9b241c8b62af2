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
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..answers import clean
from ..errors import APIError, Decision, InputFileError, NotFoundError
from ..failures import Where, abort_message, describe
from ..images import ImageSink
from ..jobs import InvalidLine, Job
from ..models import FileRecord, JobRecord
from ..pool import Ledger, Pool
from ..prices import Prices
from ..records import invalid_record
from .book import Book
from .collect import Collector
from .plan import MAX_BATCH_SIZE, MAX_FILE_BYTES
from .state import STATE_NAME, TERMINAL, Batch, BatchState
from .submit import Active, Submitter
from .transport import BatchClient

__all__ = ["DEFAULT_POLL_INTERVAL", "BatchOptions", "BatchRunner", "still_running"]

log = logging.getLogger("pmock_batch")

DEFAULT_POLL_INTERVAL = 30.0
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
    mock: bool = False  # --mock: this run's batches go with it; an earlier mock's are gone


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
        prices: Prices | None = None,
        where: Where | None = None,
    ) -> None:
        self.api = api
        self.pool = pool
        self.ledger = ledger
        self.out_dir = out_dir
        self.options = options
        self.writer = writer
        self.field_case = field_case
        self.prices = prices  # None: the shipped table
        self.sleep = options.sleep or pool.sleep
        self.where = where or Where(api.base + "/batches", str(out_dir), "PMOCK_API_KEY")
        self.running = 0  # batches still running on the server when the run ends
        self._again: set[str] = set()  # custom_ids already submitted again in this run
        self.state = BatchState(out_dir)
        self.book = Book([], field_case=field_case)
        self.sub = self._submitter()

    def _submitter(self) -> Submitter:
        opts = self.options
        return Submitter(
            self.api,
            self.state,
            self.book,
            self.pool,
            batch_size=opts.batch_size,
            max_bytes=opts.max_file_bytes,
            keep_files=opts.keep_files,
            field_case=self.field_case,
            sleep=self.sleep,
        )

    @property
    def active(self) -> dict[str, Active]:
        """The batches this run waits for, by id."""
        return self.sub.active

    # -- the run -------------------------------------------------------------

    async def run(self, items: Iterable[Job | InvalidLine]) -> None:
        owed: list[Job] = []
        kept: dict[str, list[FileRecord]] = {}  # images an earlier run saved: not owed
        for item in items:
            if isinstance(item, InvalidLine):
                await self.ledger.record([invalid_record(item)])
            elif await self.ledger.is_done(item):
                self.ledger.skip(item)
            else:
                owed.append(item)
                if files := await self.ledger.kept(item):
                    kept[item.id] = files
        self.book = Book(owed, field_case=self.field_case, kept=kept, prices=self.prices)
        self.state = await asyncio.to_thread(
            BatchState.load, self.out_dir, on_step=self.options.on_step
        )
        self.state.mock = self.options.mock
        self.sub = self._submitter()
        try:
            await self.sub.orphans()
            await self.sub.reattach()  # also tidies files a kill left after collection
            await self._record(await self.sub.submit(self._uncovered()))
            await self._wait()
        except APIError as exc:
            failure = describe(exc)
            if failure.decision is Decision.ABORT:  # the key, the URL, the quota: say what to check
                self.pool.abort(abort_message(failure, self.where))
            else:
                self.pool.abort(f"the Batch API failed: {failure.reason}")
        except InputFileError as exc:  # an edit's input changed since it was hashed
            self.pool.abort(str(exc))
        await self._leftovers()  # not after a crash: the log and the state say where it was

    async def _record(self, records: list[JobRecord]) -> None:
        if records:
            await self.ledger.record(records)

    def _uncovered(self) -> list[tuple[Job, list[int]]]:
        held = {  # rows a batch holds for the very same request
            cid
            for act in self.active.values()
            for cid, fp in act.rows.items()
            if self.book.owed(cid, fp)
        }
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
            else ("its batch ended (expired, cancelled or failed) before this image ran; run again")
        )
        records = self.book.leftovers(running, reason)
        if records:
            await self.ledger.record(records)
        self.running = count = len(set(running.values()))
        if count:  # the summary says it in words
            log.debug(
                "%s",
                still_running(count, self.out_dir),
                extra={"event": "batches_running", "batches": count},
            )

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

    async def _poll(self, act: Active) -> None:
        batch = act.batch
        try:
            seen = await self.api.retrieve(batch.batch_id)
        except NotFoundError:
            await self._unknown(act)
            return
        except APIError as exc:  # polling is idempotent: the next poll tries again
            if describe(exc).decision is Decision.ABORT:  # a bad key, a wrong URL: it won't pass
                raise
            log.warning("%s: polling failed: %s", batch.batch_id, exc, extra={"event": "warning"})
            return
        act.polls += 1
        if await asyncio.to_thread(self.state.status, batch, seen) or act.polls == 1:
            self._show(batch)
        if batch.status == "failed":
            _log_errors(batch, seen.get("errors"))
        if batch.status in TERMINAL:
            await self._collect(act)

    async def _unknown(self, act: Active) -> None:
        """The server does not know a recorded batch: stop, saying how to go on; or, when
        it is a mock's from an earlier run (``--mock``), forget it and submit its rows again."""
        batch = act.batch
        forget = f"pmock-batch batches {self.out_dir} --forget {batch.batch_id}"
        if not (self.options.mock and batch.mock):  # a real server's: maybe paid for
            self.pool.abort(
                f"the server does not know {batch.batch_id}, recorded in "
                f"{self.out_dir / STATE_NAME} (another --base-url or key?); if it is gone for "
                f"good, '{forget}' lets the next run submit its images again (if it did run, "
                "they would be paid for twice)"
            )
            return
        await asyncio.to_thread(self.state.lost, batch)
        del self.active[batch.batch_id]
        log.warning(
            "%s is unknown to this mock (an earlier run's); submitting its images again",
            batch.batch_id,
            extra={"event": "batch_lost", "batch_id": batch.batch_id},
        )
        await self._record(await self.sub.submit(self._uncovered()))

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

    async def _collect(self, act: Active) -> None:
        """Record a batch's lines; then mark it collected and delete its files.

        After Ctrl-C the collection stops between lines: the batch stays
        uncollected, and the next run reads it again, past the lines recorded.
        """
        batch = act.batch
        collector = Collector(self.api, self.book, self.out_dir, self.writer)
        del self.active[batch.batch_id]
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                lines = collector.collect(file_id, batch.batch_id, act.rows)
                async with contextlib.aclosing(lines):
                    async for record in lines:
                        await self.ledger.record([record])
                        if self.pool.stopping:
                            return
        await asyncio.to_thread(self.state.collected, batch)
        if not self.options.keep_files:
            for file_id in (batch.file_id, batch.output_file_id, batch.error_file_id):
                await self.sub.delete(file_id)
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
            await self._record(await self.sub.submit(again))


def _log_errors(batch: Batch, errors: Any) -> None:
    """Why the server failed a batch (its input file's problems), the first few."""
    data = errors.get("data") if isinstance(errors, dict) else None
    for err in (data if isinstance(data, list) else [])[:5]:
        if isinstance(err, dict):
            text = clean(f"{err.get('code')}: {err.get('message')} (line {err.get('line')})", ())
            log.error("%s failed: %s", batch.batch_id, text, extra={"event": "batch_failed"})
