"""Draw docs/progress.svg: the live progress bar as a terminal shows it mid-run.

Run it from the repository root after a change to the bar: ``python docs/screenshot.py``.
It renders :meth:`pmock_batch.console.Reporter.frame` for a made-up run, with
rich's ``Console(record=True).save_svg``; nothing is sent anywhere.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from pmock_batch.console import Reporter
from pmock_batch.models import ErrorRecord, FileRecord, JobRecord
from pmock_batch.run import RunStatus
from pmock_batch.tally import Summary


class _Run:
    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    def status(self) -> RunStatus:
        return RunStatus(self.summary, in_flight=8, retrying=2, held_for=0.0, stopping=False)


def main() -> None:
    summary = Summary()
    image = FileRecord(path="a.png", sha256="0" * 64, bytes=1, format="png", width=1, height=1)
    for i in range(431):
        summary.add(JobRecord(id=f"j{i}", line=i, status="ok", files=[image]))
    error = ErrorRecord(kind="moderation", message="blocked")
    for i in range(3):
        summary.add(JobRecord(id=f"m{i}", line=i, status="failed", error=error))
    for _ in range(120):
        summary.skip()
    console = Console(record=True, width=80, force_terminal=True, file=io.StringIO())
    reporter = Reporter(console, total=1000, mode="bar", clock=lambda: 300.0)
    reporter.started = 0.0
    reporter.attach(_Run(summary))  # type: ignore[arg-type]
    console.print(reporter.frame())
    target = Path(__file__).with_name("progress.svg")
    console.save_svg(str(target), title="pmock-batch jobs.jsonl --concurrency 8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
