"""The worker pool: a bounded queue, workers, request slots, stop, abort and grace.

It knows no HTTP and no images. A single producer streams the job file into a
small queue, so memory does not grow with the file; each item is recorded as
invalid, skipped as already done, or handed to a worker. Workers are twice the
``concurrency``: a :attr:`Pool.slots` semaphore of ``concurrency`` bounds the
requests at the server (the runner takes a slot around each exchange), so
verifying and writing one image overlaps the next request.

Each job runs as its own task, so that after a stop or an abort the jobs in
flight get ``grace`` seconds before they are cancelled, without cancelling the
worker. What is left of the file after a stop is recorded as not run, in batches.
The runner (see :class:`Runner`) turns one job into one record; the
:class:`Ledger` records it. A runner for the Batch API plugs in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from .jobs import InvalidLine, Job
from .models import FileRecord, JobRecord, PartialFile, RejectedFile

__all__ = ["Ledger", "Pool", "Progress", "Runner"]

log = logging.getLogger("pmock_batch")

_RECORD_BATCH = 500  # records written per manifest write when recording leftovers


@dataclass(slots=True)
class Progress:
    """What one job has done so far. It fills in as the job goes, so a cancel loses nothing."""

    attempts: int = 0  # HTTP requests sent, over all its images
    retries: int = 0
    ambiguous: int = 0
    billed: int = 0
    rate_limited: int = 0
    http_status: int | None = None
    files: list[FileRecord] = field(default_factory=list)
    kept: int = 0  # of ``files``, those an earlier run saved (the first ones): not made here
    rejected: list[RejectedFile] = field(default_factory=list)
    partials: list[PartialFile] = field(default_factory=list)  # saved with --save-partials
    streamed: int | None = None  # partial images of the streamed attempt in flight, if one is
    pending_retry: tuple[bool, bool] | None = None  # (billed, ambiguous): decided, not yet sent

    def retry_sent(self) -> None:
        """Count the retry decided earlier, now that it goes out: a stop, an abort or the
        budget may come first, and a retry never sent was neither made nor paid for."""
        if self.pending_retry is None:
            return
        billed, ambiguous = self.pending_retry
        self.pending_retry = None
        self.retries += 1
        if billed:
            self.billed += 1
        elif ambiguous:  # a timeout, or a stream cut after its partials
            self.ambiguous += 1


class Runner(Protocol):
    """Turns one owed job into one record: the direct HTTP runner, or the Batch API's."""

    async def run(self, job: Job, progress: Progress) -> JobRecord: ...

    def unfinished(
        self, job: Job, progress: Progress | None, reason: str, kind: str = "not_run"
    ) -> JobRecord:
        """The record of a job that was not run, or was cancelled mid-way."""
        ...

    def invalid(self, item: InvalidLine) -> JobRecord: ...


class Ledger(Protocol):
    """Where records go (the manifest, the tally, the log), and which jobs are done."""

    async def is_done(self, job: Job) -> bool: ...

    async def kept(self, job: Job) -> list[FileRecord]:
        """The images an earlier run saved of an unfinished ``n > 1`` job: not made again."""
        ...

    def skip(self, job: Job) -> None: ...

    async def record(self, records: list[JobRecord]) -> None: ...


class Pool:
    """Runs the jobs of one file through ``runner``, ``concurrency`` requests at a time."""

    def __init__(self, *, concurrency: int, grace: float) -> None:
        self.concurrency = concurrency
        self.grace = grace
        self.slots = asyncio.Semaphore(concurrency)  # requests at the server, at most
        self.in_flight = 0  # jobs running now
        self._live: dict[asyncio.Task[JobRecord], tuple[str, Progress]] = {}  # jobs running now
        self.requests = 0  # requests at the server now: the runner counts them in a slot
        self._stopping = asyncio.Event()
        self._abort_reason: str | None = None
        self.budget_reason: str | None = None  # the spending cap stopped the run
        self.interrupted = False
        self._tasks: set[asyncio.Task[JobRecord]] = set()

    # -- control ---------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def abort_reason(self) -> str | None:
        """Why the run was aborted, if it was."""
        return self._abort_reason

    @property
    def stop_reason(self) -> str:
        """What the records of jobs not run say."""
        return self._abort_reason or self.budget_reason or "interrupted"

    @property
    def stop_kind(self) -> str:
        """Their ``error.kind``: ``budget`` when the spending cap stopped the run."""
        return "budget" if self.budget_reason and not self._abort_reason else "not_run"

    def out_of_budget(self, reason: str) -> None:
        """Stop dispatching: the next request would pass the spending cap (exit 5)."""
        if self.budget_reason is None:
            self.budget_reason = reason
            log.warning("%s; stopping", reason, extra={"event": "budget", "reason": reason})
        self._stopping.set()

    def stop(self) -> None:
        """Stop dispatching new jobs (SIGINT/SIGTERM). Jobs in flight may finish."""
        self.interrupted = True
        self._stopping.set()

    def abort(self, reason: str) -> None:
        """Stop the run because every job would fail the same way. The first reason stays."""
        if self._abort_reason is None:
            self._abort_reason = reason
            log.error("aborting the run: %s", reason, extra={"event": "abort", "reason": reason})
        self._stopping.set()

    def _unfinished(self, runner: Runner, job: Job, progress: Progress) -> JobRecord:
        return runner.unfinished(job, progress, self.stop_reason, self.stop_kind)

    async def _not_run(self, runner: Runner, job: Job, ledger: Ledger) -> JobRecord:
        """The record of a job the stop reached before it ran: with the images an earlier
        run saved of it, so the record that supersedes theirs still names them."""
        return self._unfinished(runner, job, await _progress(ledger, job))

    async def sleep(self, seconds: float) -> None:
        """A wait that ends early when the run stops, so Ctrl-C is never ignored."""
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # -- running ---------------------------------------------------------

    async def run(self, items: Iterable[Job | InvalidLine], runner: Runner, ledger: Ledger) -> None:
        """Record every item of the file. Never raises for a job's failure."""
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=self.concurrency * 2)
        workers = [
            asyncio.create_task(self._worker(queue, runner, ledger), name=f"pmock-worker-{i}")
            for i in range(self.concurrency * 2)
        ]
        watcher = asyncio.create_task(self._cancel_after_grace(), name="pmock-grace")
        iterator = iter(items)
        try:
            for item in iterator:
                if isinstance(item, InvalidLine):
                    await ledger.record([runner.invalid(item)])
                elif await ledger.is_done(item):
                    ledger.skip(item)
                elif self.stopping:
                    await ledger.record([await self._not_run(runner, item, ledger)])
                    break
                else:
                    await queue.put(item)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            await self._record_leftovers(iterator, runner, ledger)
        finally:
            for task in (*workers, *self._tasks, watcher):
                task.cancel()
            await asyncio.gather(*workers, *self._tasks, watcher, return_exceptions=True)

    def streaming(self) -> list[tuple[str, int]]:
        """``(job id, partial images so far)`` of the jobs whose answer is streaming now."""
        return [(i, p.streamed) for i, p in self._live.values() if p.streamed is not None]

    async def _cancel_after_grace(self) -> None:
        """Once the run is stopping, give jobs in flight ``grace`` seconds, then cancel them."""
        await self._stopping.wait()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.grace)
        for task in list(self._tasks):
            task.cancel()

    async def _worker(
        self, queue: asyncio.Queue[Job | None], runner: Runner, ledger: Ledger
    ) -> None:
        while (job := await queue.get()) is not None:
            if self.stopping:
                await ledger.record([await self._not_run(runner, job, ledger)])
                continue
            progress = await _progress(ledger, job)
            task = asyncio.create_task(runner.run(job, progress))
            self._tasks.add(task)
            self.in_flight += 1
            self._live[task] = (job.id, progress)
            try:
                await asyncio.wait({task})
            finally:
                self._tasks.discard(task)
                self._live.pop(task, None)
                self.in_flight -= 1
            if task.cancelled():  # after the grace period: what was sent and saved still counts
                await ledger.record([self._unfinished(runner, job, progress)])
            else:
                await ledger.record([task.result()])

    async def _record_leftovers(
        self, iterator: Iterator[Job | InvalidLine], runner: Runner, ledger: Ledger
    ) -> None:
        """Record what is left of the file after a stop: done jobs stay done, the rest not run.

        Records are written in batches, so stopping a 100,000-line run is quick.
        """
        batch: list[JobRecord] = []
        for item in iterator:
            if isinstance(item, InvalidLine):
                batch.append(runner.invalid(item))
            elif await ledger.is_done(item):
                ledger.skip(item)
            else:
                batch.append(await self._not_run(runner, item, ledger))
            if len(batch) >= _RECORD_BATCH:
                await ledger.record(batch)
                batch = []
        if batch:
            await ledger.record(batch)


async def _progress(ledger: Ledger, job: Job) -> Progress:
    """A job's progress before it runs: the images an earlier run saved of it, if any
    (paid for once already)."""
    kept = await ledger.kept(job)
    return Progress(files=kept, kept=len(kept))
