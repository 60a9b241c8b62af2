"""Live progress: a bar on a terminal, timed lines elsewhere; signals while a run is live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from ..jobs import Job
from ..models import JobRecord
from ..run import Run, RunObserver, RunStatus
from ..tally import Summary

__all__ = ["PROGRESS_EVERY_FRACTION", "PROGRESS_EVERY_S", "Reporter", "duration", "live_run"]

PROGRESS_EVERY_S = 10.0
PROGRESS_EVERY_FRACTION = 0.05


class Reporter(RunObserver):
    """Shows a run's progress: a live bar, or periodic lines.

    It counts nothing: the numbers come from the run's :class:`~pmock_batch.run.RunStatus`
    (the one tally), read on every event and every tick. ``mode`` is ``"bar"``
    (a TTY), ``"lines"`` (no TTY, or JSON logs) or ``"none"`` (``--quiet``).
    The clock is injectable for tests.
    """

    def __init__(
        self,
        console: Console,
        *,
        total: int,
        mode: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.total = total
        self.mode = mode
        self._clock = clock
        self.started = clock()
        self._run: Run | None = None
        self._last_line_at = self.started
        self._last_line_done = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._log = logging.getLogger("pmock_batch")

    # -- lifecycle ---------------------------------------------------------

    def attach(self, run: Run) -> None:
        self._run = run

    def start(self) -> None:
        if self.mode != "bar":
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task("generating", total=self.total, counts="")
        self._progress.start()
        self._refresh()

    def stop(self) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
            self._progress = None

    # -- RunObserver: every event redraws -----------------------------------

    def job_done(self, record: JobRecord) -> None:
        self.tick()

    def job_skipped(self, job: Job) -> None:
        self.tick()

    def retrying(self, job_id: str, attempt: int, wait: float, reason: str) -> None:
        self.tick()

    # -- rendering ---------------------------------------------------------

    def snapshot(self) -> RunStatus:
        """The run's status now (an empty one before the run starts)."""
        if self._run is None:
            return RunStatus(Summary(), in_flight=0, retrying=0, held_for=0.0, stopping=False)
        return self._run.status()

    def images_per_minute(self, summary: Summary) -> float:
        elapsed = self._clock() - self.started
        return summary.images / elapsed * 60.0 if elapsed > 0 else 0.0

    def eta_seconds(self, summary: Summary) -> float | None:
        worked = summary.jobs
        elapsed = self._clock() - self.started
        if worked <= 0 or elapsed <= 0:
            return None
        return (self.total - summary.done) / (worked / elapsed)

    @staticmethod
    def state(status: RunStatus) -> str:
        """A word on what the pool is doing now: paused, backing off, or generating."""
        if status.held_for > 0:
            return f"paused by the rate limit ({status.held_for:.0f}s)"
        if status.stopping:
            return "stopping"
        if status.retrying:
            return f"backing off ({status.retrying} retrying)"
        return "generating"

    def counts(self, status: RunStatus) -> str:
        s = status.summary
        return (
            f"ok {s.ok}  failed {s.failed + s.invalid}  retrying {status.retrying}  "
            f"skipped {s.skipped}  {self.images_per_minute(s):.1f} img/min"
        )

    def line(self, status: RunStatus | None = None) -> str:
        """The plain progress line for logs."""
        status = status or self.snapshot()
        s = status.summary
        done = s.done
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = self.eta_seconds(s)
        eta_text = f", ETA {duration(eta)}" if eta is not None and done < self.total else ""
        return (
            f"progress: {done}/{self.total} done ({pct:.0f}%), ok {s.ok}, "
            f"failed {s.failed + s.invalid}, retrying {status.retrying}, skipped {s.skipped}, "
            f"{self.images_per_minute(s):.1f} images/min{eta_text}; {self.state(status)}"
        )

    def tick(self) -> None:
        """Called on every event and by a timer: refresh the bar or maybe print a line."""
        if self.mode == "bar":
            self._refresh()
        elif self.mode == "lines":
            status = self.snapshot()
            s = status.summary
            now = self._clock()
            step = max(1, int(self.total * PROGRESS_EVERY_FRACTION))
            due_by_time = now - self._last_line_at >= PROGRESS_EVERY_S
            due_by_count = s.done - self._last_line_done >= step
            if (due_by_time and s.done < self.total) or due_by_count:
                self._last_line_at, self._last_line_done = now, s.done
                self._log.info(
                    "%s",
                    self.line(status),
                    extra={
                        "event": "progress",
                        "done": s.done,
                        "total": self.total,
                        "ok": s.ok,
                        "failed": s.failed + s.invalid,
                        "retrying": status.retrying,
                        "skipped": s.skipped,
                        "images_per_minute": round(self.images_per_minute(s), 1),
                    },
                )

    def _refresh(self) -> None:
        if self._progress is not None and self._task is not None:
            status = self.snapshot()
            self._progress.update(
                self._task,
                completed=status.summary.done,
                description=self.state(status),
                counts=self.counts(status),
            )


def duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


async def live_run(
    run: Callable[[Callable[[Run], None]], Awaitable[Summary]],
    reporter: Reporter,
    *,
    grace: float,
    exit_code: int,
) -> Summary:
    """Await ``run(on_start)`` with ``reporter`` live: started, ticked every second, stopped.

    The first Ctrl-C or SIGTERM stops the run (no new jobs; those in
    flight get ``grace`` seconds), with a message; a second one exits the
    process at once with ``exit_code``.
    """
    loop = asyncio.get_running_loop()
    runs: list[Run] = []

    def on_start(handle: Run) -> None:
        runs.append(handle)
        reporter.attach(handle)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            reporter.tick()

    def on_signal() -> None:
        if not runs or runs[0].stopping:
            print("Interrupted again: exiting now.", file=sys.stderr, flush=True)
            os._exit(exit_code)
        runs[0].stop()
        print(
            f"Stopping: no new jobs; jobs in flight get {grace:g}s to finish "
            "(press Ctrl-C again to exit at once).",
            file=sys.stderr,
            flush=True,
        )

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:  # not in a thread other than the main one: the default stays
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
    reporter.start()
    tick_task = asyncio.create_task(ticker())
    try:
        return await run(on_start)
    finally:
        tick_task.cancel()
        reporter.stop()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
