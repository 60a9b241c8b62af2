"""Pure: owed images -> input files. One line per image, one model per file, size-capped.

An image's ``custom_id`` is its output stem: the job's name (its id, or the
derived name of an id-less job), plus ``-k`` for image ``k`` of an ``n > 1``
job, so it is unique in a job file and names the file the image becomes. Its
body is the wire body a direct request would send (the capability rules
applied). :func:`split` packs rows into files of at most ``batch_size`` lines
and ``max_bytes`` bytes, never mixing models: the real API fails a whole
batch whose lines name different models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..jobs import Job

__all__ = [
    "ENDPOINT",
    "MAX_BATCH_SIZE",
    "MAX_FILE_BYTES",
    "InputFile",
    "Row",
    "input_line",
    "rows_of",
    "split",
]

ENDPOINT = "/v1/images/generations"
MAX_BATCH_SIZE = 50_000  # lines per input file, the API's limit
MAX_FILE_BYTES = 190 * 1024 * 1024  # bytes per input file: under the API's 200 MB


@dataclass(frozen=True, slots=True)
class Row:
    """One image owed: the input line that asks for it."""

    custom_id: str
    job_id: str
    index: int  # 0-based, among the job's images
    model: str
    fingerprint: str  # the job's request fingerprint
    line: bytes  # the JSONL line, newline included


def input_line(custom_id: str, body: dict[str, object]) -> bytes:
    """One line of an input file: ``custom_id``, ``method``, ``url`` and the body."""
    obj = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def rows_of(job: Job, field_case: str = "snake", *, only: Iterable[int] | None = None) -> list[Row]:
    """The rows of ``job``'s images (only those at the indices ``only``, if given)."""
    body = job.wire_body(field_case)
    wanted = set(range(job.request.count)) if only is None else set(only)
    return [
        Row(stem, job.id, i, job.request.model, job.fingerprint, input_line(stem, body))
        for i, stem in enumerate(job.stems)
        if i in wanted
    ]


@dataclass(slots=True)
class InputFile:
    """The rows of one input file, all of one model."""

    model: str
    rows: list[Row] = field(default_factory=list)
    size: int = 0

    @property
    def content(self) -> bytes:
        return b"".join(row.line for row in self.rows)

    @property
    def fingerprints(self) -> dict[str, str]:
        return {row.custom_id: row.fingerprint for row in self.rows}


def split(
    rows: Iterable[Row], *, batch_size: int = MAX_BATCH_SIZE, max_bytes: int = MAX_FILE_BYTES
) -> Iterator[InputFile]:
    """Pack ``rows`` into files: one model each, at most ``batch_size`` lines and ``max_bytes``.

    Files fill in the order rows come; each model keeps one open file. A row
    larger than ``max_bytes`` alone still gets a file of its own (the server judges it).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    open_files: dict[str, InputFile] = {}
    for row in rows:
        current = open_files.get(row.model)
        if current is not None and (
            len(current.rows) >= batch_size or current.size + len(row.line) > max_bytes
        ):
            yield current
            current = None
        if current is None:
            current = open_files[row.model] = InputFile(row.model)
        current.rows.append(row)
        current.size += len(row.line)
    yield from open_files.values()
