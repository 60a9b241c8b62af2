"""The CLI's terminal layer: logging handlers, live progress and the final summary.

:mod:`.logs` (log lines, text or JSON), :mod:`.progress` (the live bar or timed
lines, and signals), :mod:`.printouts` (the summary, the plan, problems).

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

from .logs import make_console, quiet_stdout, say, setup_logging
from .printouts import (
    SUMMARY_SCHEMA,
    log_summary,
    print_plan,
    print_problems,
    render_summary,
    summary_json,
)
from .progress import Reporter, live_run

__all__ = [
    "SUMMARY_SCHEMA",
    "Reporter",
    "live_run",
    "log_summary",
    "make_console",
    "print_plan",
    "print_problems",
    "quiet_stdout",
    "render_summary",
    "say",
    "setup_logging",
    "summary_json",
]
