"""The CLI's terminal layer: logging handlers, live progress and the final summary.

Only :mod:`pmock_batch.cli` uses this module; together they are the only code
that writes to the terminal. Everything a run reports goes through the
stdlib ``logging`` module (logger ``pmock_batch``, with an ``event`` name and
fields in each record's ``extra``), so library users can route it as they
like; this module just renders it:

* on a TTY, a live ``rich`` progress bar on stderr, with log lines above it;
* without one (cron, CI, a pipe), plain lines with no control characters,
  including a progress line every 10 s or every 5 % of the jobs;
* with ``--log-format json``, the same events as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .config import RunConfig
from .jobs import Job, ScanResult
from .models import JobRecord
from .preflight import Plan
from .run import Run, RunObserver, RunStatus
from .tally import Summary

__all__ = [
    "SUMMARY_SCHEMA",
    "Reporter",
    "live_run",
    "make_console",
    "print_plan",
    "print_problems",
    "render_summary",
    "setup_logging",
    "summary_json",
]

SUMMARY_SCHEMA = "pmock-batch/summary/v1"
PROGRESS_EVERY_S = 10.0
PROGRESS_EVERY_FRACTION = 0.05
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def make_console(stream: IO[str], *, tty: bool | None = None) -> Console:
    """A console for ``stream``: live and coloured on a TTY (unless NO_COLOR), plain otherwise."""
    is_tty = stream.isatty() if tty is None else tty
    if is_tty:
        return Console(file=stream, force_terminal=True, highlight=False)
    return Console(
        file=stream, force_terminal=False, no_color=True, highlight=False, width=200, soft_wrap=True
    )


class _JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, event, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key != "event":
                data[key] = value
        return json.dumps(data, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    """Plain text; with a UTC timestamp when not on a TTY, for cron mail and CI logs."""

    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING and getattr(record, "event", None) != "job_failed":
            text = f"{record.levelname.lower()}: {text}"
        if self.timestamps:
            stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            text = f"{stamp} {text}"
        return text


class _ConsoleHandler(logging.Handler):
    """Writes formatted records through the rich console, so a live bar stays intact."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self.console.is_terminal:
                self.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.console.file.write(text + "\n")
                self.console.file.flush()
        except Exception:  # logging must never break the run
            self.handleError(record)


def setup_logging(console: Console, *, quiet: bool, verbose: bool, fmt: str) -> None:
    """Route the ``pmock_batch`` logger to ``console`` at the level the flags ask for."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    handler = _ConsoleHandler(console)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter(timestamps=not console.is_terminal))
    logger = logging.getLogger("pmock_batch")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


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
        eta_text = f", ETA {_duration(eta)}" if eta is not None and done < self.total else ""
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


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def summary_json(summary: Summary, config: RunConfig, *, exit_code: int) -> dict[str, Any]:
    """The summary for ``--json``: schema ``pmock-batch/summary/v1`` (see the README).

    Its counts are :meth:`~pmock_batch.tally.Summary.counts`, as report.html embeds them.
    """
    counts = summary.counts()
    return {
        "schema": SUMMARY_SCHEMA,
        "exit_code": exit_code,
        **counts,
        "elapsed_s": round(summary.elapsed_s, 3),
        "images_per_minute": round(summary.images_per_minute, 2),
        "out_dir": str(config.out_dir),
        "manifest": str(config.manifest_path),
        "report": str(config.out_dir / "report.html"),
        "aborted": summary.aborted,
        "interrupted": summary.interrupted,
        "failures": [{"id": i, "message": m} for i, m in summary.failures],
    }


def render_summary(summary: Summary, config: RunConfig, console: Console) -> None:
    """Print the final summary table, then the failures (at most 20, then a count)."""
    tty = console.is_terminal
    table = Table(
        title="pmock-batch summary",
        box=box.ROUNDED if tty else box.ASCII,
        show_header=False,
        title_justify="left",
    )
    table.add_column("what", style="bold" if tty else "")
    table.add_column("value", overflow="fold")
    total = summary.jobs + summary.skipped
    table.add_row("jobs", f"{total}")
    table.add_row("ok", f"{summary.ok}")
    failed = f"{summary.failed}"
    if summary.failed_by_kind:
        kinds = ", ".join(f"{k} {v}" for k, v in summary.failed_by_kind.most_common())
        failed += f" ({kinds})"
    table.add_row("failed", failed)
    if summary.invalid:
        table.add_row("invalid", f"{summary.invalid}")
    table.add_row("not run", f"{summary.not_run}")
    table.add_row("skipped (already done)", f"{summary.skipped}")
    attempts = f"{summary.attempts} ({summary.retries} retries, {summary.rate_limited} were 429s)"
    table.add_row("attempts", attempts)
    if summary.ambiguous_retries:
        table.add_row(
            "ambiguous retries",
            f"{summary.ambiguous_retries} after timeouts: possibly billed twice",
        )
    if summary.billed_retries:
        table.add_row(
            "billed retries",
            f"{summary.billed_retries} after unusable 200s: each was billed "
            "(the bytes are kept under .rejected/)",
        )
    if summary.warnings:
        table.add_row("warnings", f"{summary.warnings} (see the manifest)")
    table.add_row(
        "time",
        f"{summary.elapsed_s:.1f}s, {summary.images} images, "
        f"{summary.images_per_minute:.1f} images/min",
    )
    if summary.usage:
        table.add_row("usage", ", ".join(f"{k} {v:,}" for k, v in sorted(summary.usage.items())))
    table.add_row("images", f"{config.out_dir}/")
    table.add_row("manifest", str(config.manifest_path))
    report = config.out_dir / "report.html"
    if report.exists():
        table.add_row("report", str(report))
    if summary.aborted:
        table.add_row("ABORTED", summary.aborted)
    elif summary.interrupted:
        table.add_row("INTERRUPTED", f"{summary.not_run} job(s) not run; run again to finish")
    console.print(table)
    if summary.failures:
        console.print("Failures:", markup=False)
        for job_id, message in summary.failures:
            console.print(f"  {job_id}: {message}", markup=False, soft_wrap=True)
        hidden = summary.failed + summary.invalid - len(summary.failures)
        if hidden > 0:
            console.print(f"  ... and {hidden} more (see the manifest)", markup=False)


def print_problems(result: ScanResult, file: IO[str]) -> None:
    """The job file's problems, one ``FILE:LINE: message`` each, then a count."""
    for problem in result.problems:
        print(problem, file=file)
    shown = len(result.problems)
    if result.problem_count > shown:
        print(f"... and {result.problem_count - shown} more problem(s)", file=file)
    print(f"{result.file}: {len(result.invalid)} invalid line(s); nothing was sent.", file=file)


def print_plan(plan: Plan, file: IO[str]) -> None:
    """The ``--dry-run`` plan: counts, the files a run would write, and what --prune removes."""
    print(
        f"Plan for {plan.jobs_file}: {plan.jobs} job(s), {plan.images} image(s), into "
        f"{plan.out_dir}/; {plan.done} already done, {plan.to_run} to run",
        file=file,
    )
    if plan.invalid:
        print(f"{plan.invalid} invalid line(s) would be skipped (--skip-invalid)", file=file)
    for path, line in plan.files:
        print(f"  {path}  (line {line})", file=file)
    if plan.more:
        print("  ... and more", file=file)
    if plan.files:
        print(
            "  (an image in another format than asked is saved with its own extension)", file=file
        )
    if plan.stale is not None:
        print(
            f"--prune would remove {len(plan.stale)} job(s) no longer in {plan.jobs_file}:",
            file=file,
        )
        for name, paths in plan.stale:
            print(f"  {name}: {', '.join(str(p) for p in paths) or 'no files'}", file=file)
    print("Nothing was sent (--dry-run).", file=file)


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
