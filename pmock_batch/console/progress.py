"""Live progress: a bar on a terminal, timed lines elsewhere; signals while a run is live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..jobs import Job
from ..models import JobRecord
from ..run import Run, RunObserver, RunStatus
from ..tally import Summary
from .logs import say

__all__ = [
    "PROGRESS_EVERY_FRACTION",
    "PROGRESS_EVERY_S",
    "STATE_WIDTH",
    "Reporter",
    "duration",
    "live_run",
]

PROGRESS_EVERY_S = 10.0
PROGRESS_EVERY_FRACTION = 0.05
STATE_WIDTH = 11  # "backing off": the bar's state field never changes width
SAME_SIGNAL = 0.5  # seconds: a signal this soon after the first is the same one again


class Reporter(RunObserver):
    """Shows a run's progress: a live bar, or periodic lines.

    It counts nothing: the numbers come from the run's :class:`~pmock_batch.run.RunStatus`
    (the one tally), read on every event and every tick. ``mode`` is ``"bar"``
    (a TTY), ``"lines"`` (no TTY, or JSON logs) or ``"none"`` (``--quiet``).
    The clock is injectable for tests.

    The bar is two lines. The first has a fixed-width state word, the bar, the
    count, the percentage and the ETA, and only the bar gives way when the
    terminal is narrow, so the count and the ETA always show (down to 60
    columns). The second has the counters, which may be cut.
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
        self._live: Live | None = None
        self._log = logging.getLogger("pmock_batch")

    # -- lifecycle ---------------------------------------------------------

    def attach(self, run: Run) -> None:
        self._run = run

    def start(self) -> None:
        if self.mode != "bar":
            return
        self._live = Live(
            get_renderable=self.frame,
            console=self.console,
            transient=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def stop(self) -> None:
        """Take the live bar off the screen (it leaves nothing in the scrollback)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- RunObserver: every event redraws -----------------------------------

    def job_done(self, record: JobRecord) -> None:
        self.tick()

    def job_skipped(self, job: Job) -> None:
        self.tick()

    def retrying(self, job_id: str, attempt: int, wait: float, reason: str) -> None:
        self.tick()

    # -- what to show --------------------------------------------------------

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

    def state(self, status: RunStatus) -> str:
        """One word on what the pool is doing, at most :data:`STATE_WIDTH` characters.

        "paused" and "backing off" only while no request is in flight: while
        others are generating, the retries are a counter, not the state.
        """
        if status.stopping:  # an abort or Ctrl-C: the rest is not run, not done
            return "stopping"
        if status.summary.done >= self.total:
            return "done"
        if status.batch_api:  # the server works through the batches; the run polls
            return "in batches"
        if status.in_flight == 0 and status.summary.jobs == 0 and status.summary.skipped:
            return "skipping"  # a re-run passing over what an earlier run did
        if status.in_flight == 0 and status.held_for > 0:
            return f"paused {status.held_for:.0f}s"[:STATE_WIDTH]
        if status.in_flight == 0 and status.retrying:
            return "backing off"
        return "generating"

    def counts(self, status: RunStatus) -> str:
        s = status.summary
        return (
            f"ok {s.ok} · failed {s.failed + s.invalid} · {status.retrying} retrying · "
            f"skipped {s.skipped} · {self.images_per_minute(s):.1f} images/min"
            f"{streaming(status)}"
        )

    def _eta(self, summary: Summary) -> str:
        eta = self.eta_seconds(summary)
        if summary.done >= self.total:
            return "ETA 0s"
        return f"ETA {duration(eta)}" if eta is not None else "ETA --"

    def frame(self) -> RenderableType:
        """The live bar's two lines, for the console's width now."""
        status = self.snapshot()
        s = status.summary
        width = self.console.width
        count = f"{s.done}/{self.total}"
        pct = f"{100.0 * s.done / self.total if self.total else 100.0:3.0f}%"
        eta = f"{self._eta(s):<10}"
        fixed = STATE_WIDTH + len(count) + len(pct) + len(eta) + 4  # four spaces between
        bar = ProgressBar(total=max(1, self.total), completed=s.done, width=max(1, width - fixed))
        line = Table.grid(padding=(0, 1))
        line.add_column(width=STATE_WIDTH, no_wrap=True)
        line.add_column(no_wrap=True)
        line.add_column(no_wrap=True)
        line.add_column(no_wrap=True)
        line.add_column(no_wrap=True)
        line.add_row(f"{self.state(status):<{STATE_WIDTH}}", bar, count, pct, eta)
        counters = Text(self.counts(status), no_wrap=True, overflow="ellipsis")
        return Group(line, counters)

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
            f"failed {s.failed + s.invalid}, {status.retrying} retrying, skipped {s.skipped}, "
            f"{self.images_per_minute(s):.1f} images/min{eta_text}; {self.state(status)}"
            f"{streaming(status)}"
        )

    def tick(self) -> None:
        """Called on every event and by a timer: refresh the bar or maybe print a line."""
        if self.mode == "bar":
            if self._live is not None:
                self._live.refresh()
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
                        "partials": dict(status.streaming),  # of the streams in flight
                    },
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
    process at once with ``exit_code``. A SIGTERM within :data:`SAME_SIGNAL`
    seconds of the first is the same one delivered twice: ``timeout`` and CI
    runners signal the process and then its whole group.
    """
    loop = asyncio.get_running_loop()
    runs: list[Run] = []
    first: list[float] = []  # when the first signal came

    def on_start(handle: Run) -> None:
        runs.append(handle)
        reporter.attach(handle)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            reporter.tick()

    def on_signal(sig: signal.Signals) -> None:
        if sig == signal.SIGTERM and first and loop.time() - first[0] < SAME_SIGNAL:
            return  # the first one again, by way of the process group (Ctrl-C: a key press)
        if not runs or runs[0].stopping:
            say("Interrupted again: exiting now.", event="interrupted")
            os._exit(exit_code)
        first.append(loop.time())
        runs[0].stop()
        reporter.stop()  # first, so no frozen bar with a live-looking ETA stays behind
        say(
            f"stopping… no new jobs; jobs in flight get {grace:g}s to finish "
            "(press Ctrl-C again to exit at once).",
            event="stopping",
        )

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:  # not in a thread other than the main one: the default stays
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
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


def streaming(status: RunStatus, shown: int = 3) -> str:
    """`` · partials: fox 2, cat 0 +3 more``: the streamed jobs in flight, or ``""``."""
    if not status.streaming:
        return ""
    names = ", ".join(f"{job} {count}" for job, count in status.streaming[:shown])
    more = len(status.streaming) - shown
    return f" · partials: {names}{f' +{more} more' if more > 0 else ''}"
