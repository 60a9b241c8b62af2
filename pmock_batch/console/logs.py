"""Logging to the terminal: a console per stream, and text or JSON log lines through it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

from rich.console import Console

__all__ = ["make_console", "plain_lines", "quiet_stdout", "say", "setup_logging"]

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def make_console(stream: IO[str], *, tty: bool | None = None) -> Console:
    """A console for ``stream``: live and coloured on a TTY (unless NO_COLOR), plain otherwise."""
    is_tty = stream.isatty() if tty is None else tty
    if is_tty:
        return Console(file=stream, force_terminal=True, highlight=False)
    return Console(
        file=stream, force_terminal=False, no_color=True, highlight=False, width=200, soft_wrap=True
    )


# The event of a record that names none: a warning is a "warning", an error an "error".
_LEVEL_EVENTS = {logging.WARNING: "warning", logging.ERROR: "error", logging.CRITICAL: "error"}


class _JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, event, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or _LEVEL_EVENTS.get(record.levelno, "log"),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key != "event":
                data[key] = value
        if record.exc_info:  # an unexpected error: a bug, whose traceback is worth keeping
            data["traceback"] = self.formatException(record.exc_info)
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
        if record.exc_info:  # an unexpected error: a bug, whose traceback is worth keeping
            text = f"{text}\n{self.formatException(record.exc_info)}"
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


_json_lines = False  # --log-format json: every line on stderr is one JSON object


def plain_lines() -> None:
    """Back to plain lines until :func:`setup_logging` says otherwise (a new command)."""
    global _json_lines
    _json_lines = False


def say(message: str, *, event: str, error: bool = False, **fields: Any) -> None:
    """One line for a person on stderr; in JSON log mode, one JSON object instead.

    For what is not a log record yet must obey the log format: "stopping…",
    the problems of a job file, an error's one line.
    """
    if _json_lines:
        level = logging.ERROR if error else logging.WARNING
        logging.getLogger("pmock_batch").log(level, "%s", message, extra={"event": event, **fields})
    else:
        print(message, file=sys.stderr, flush=True)


def setup_logging(console: Console, *, quiet: bool, verbose: bool, fmt: str) -> None:
    """Route the ``pmock_batch`` logger to ``console`` at the level the flags ask for."""
    global _json_lines
    _json_lines = fmt == "json"
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


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
