"""Pure: owed images -> input files. One line per image, one endpoint and model per file.

An image's ``custom_id`` is its output stem: the job's name (its id, or the
derived name of an id-less job), plus ``-k`` for image ``k`` of an ``n > 1``
job, so it is unique in a job file and names the file the image becomes. Its
body is the wire body a direct request would send (the capability rules
applied). An edit's line goes to :data:`EDIT_ENDPOINT` in the JSON form:
its input files, uploaded beforehand, are named by id (``images: [{"file_id"}]``,
``mask: {"file_id"}``). :func:`split` packs rows into files of at most
``batch_size`` lines and ``max_bytes`` bytes, never mixing endpoints or
models: the real API fails a whole batch whose lines name different models,
or a URL other than the batch's endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..jobs import Job

__all__ = [
    "EDIT_ENDPOINT",
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
EDIT_ENDPOINT = "/v1/images/edits"
_NOT_BATCHED = ("stream", "partial_images")  # a batch answers once, never streamed
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
    endpoint: str = ENDPOINT


def input_line(custom_id: str, body: dict[str, object], url: str = ENDPOINT) -> bytes:
    """One line of an input file: ``custom_id``, ``method``, ``url`` and the body."""
    obj = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def rows_of(
    job: Job,
    field_case: str = "snake",
    *,
    only: Iterable[int] | None = None,
    file_ids: Mapping[str, str] | None = None,
) -> list[Row]:
    """The rows of ``job``'s images (only those at the indices ``only``, if given).

    An edit's files are named by the ids in ``file_ids`` (SHA-256 -> file id):
    every one must be there (KeyError else)."""
    body: dict[str, Any] = {
        k: v for k, v in job.wire_body(field_case).items() if k not in _NOT_BATCHED
    }
    url = ENDPOINT
    if job.inputs is not None:
        ids = file_ids or {}
        url = EDIT_ENDPOINT
        body["images"] = [{"file_id": ids[f.sha256]} for f in job.inputs.images]
        if job.inputs.mask is not None:
            body["mask"] = {"file_id": ids[job.inputs.mask.sha256]}
    wanted = set(range(job.request.count)) if only is None else set(only)
    return [
        Row(stem, job.id, i, job.request.model, job.fingerprint, input_line(stem, body, url), url)
        for i, stem in enumerate(job.stems)
        if i in wanted
    ]


@dataclass(slots=True)
class InputFile:
    """The rows of one input file, all of one endpoint and one model."""

    model: str
    endpoint: str = ENDPOINT
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
    """Pack ``rows`` into files: one endpoint and model each, at most ``batch_size`` lines
    and ``max_bytes``.

    Files fill in the order rows come; each (endpoint, model) keeps one open file. A row
    larger than ``max_bytes`` alone still gets a file of its own (the server judges it).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    open_files: dict[tuple[str, str], InputFile] = {}
    for row in rows:
        key = (row.endpoint, row.model)
        current = open_files.get(key)
        if current is not None and (
            len(current.rows) >= batch_size or current.size + len(row.line) > max_bytes
        ):
            yield current
            current = None
        if current is None:
            current = open_files[key] = InputFile(row.model, row.endpoint)
        current.rows.append(row)
        current.size += len(row.line)
    yield from open_files.values()
