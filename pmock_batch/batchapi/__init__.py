"""The second runner: a job file through OpenAI's Batch API, at half price.

``plan`` (rows and input files), ``state`` (``OUT/batches.jsonl``),
``transport`` (``/files`` and ``/batches``), ``lines`` (output lines split as
they stream), ``collect`` (lines into verified images), ``book`` (records per
job) and ``runner`` (submit, re-attach, wait, collect).
"""

from __future__ import annotations

from .runner import DEFAULT_POLL_INTERVAL, BatchOptions, BatchRunner, still_running
from .state import STATE_NAME, BatchState, held_rows
from .transport import BatchClient

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "STATE_NAME",
    "BatchClient",
    "BatchOptions",
    "BatchRunner",
    "BatchState",
    "held_rows",
    "still_running",
]
