"""Collection: an output or error file, streamed line by line into verified images and records.

Each line's ``response.body`` streams through an
:class:`~pmock_batch.images.ImageSink` exactly as a direct answer's body does
(:class:`~pmock_batch.batchapi.lines.LineSplitter` hands it over piece by
piece), then is verified and committed. A line for an image no longer owed
(done already: an interrupted collection resumed) is read past. A non-200
line, or one with an ``error``, becomes a failure of the same kind a direct
run would record; ``batch_expired`` and ``batch_cancelled`` lines are not
failures: the row stays owed. A 200 whose image fails verification is a
failure too, its bytes kept under ``.rejected/``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from multidict import CIMultiDict

from ..answers import parse_images, status_from_body
from ..config import MAX_RESPONSE_EXTRA_BYTES
from ..errors import APIError, InvalidResponseError
from ..exchange import keep_rejected
from ..failures import describe
from ..images import ImageSink, decode_and_verify, image_warnings
from ..models import JobRecord
from .book import Book, Entry
from .lines import LineSplitter, OutputLine, parse_rest, split_lines
from .transport import BatchClient

__all__ = ["NOT_RUN_CODES", "Collector"]

log = logging.getLogger("pmock_batch")

NOT_RUN_CODES = frozenset({"batch_expired", "batch_cancelled"})  # rows never run: still owed
Writer = Callable[[ImageSink, Path, str], Awaitable[Path]]


class Collector:
    """Reads a batch's files into the :class:`Book`; yields the records of finished jobs."""

    def __init__(self, api: BatchClient, book: Book, out_dir: Path, writer: Writer) -> None:
        self.api = api
        self.book = book
        self.out_dir = out_dir
        self.writer = writer
        self.lines = 0  # lines read, over all files

    async def collect(
        self, file_id: str, batch_id: str, rows: dict[str, str]
    ) -> AsyncGenerator[JobRecord, None]:
        """Stream one file; ``rows`` maps the batch's custom_ids to their fingerprints."""
        async with self.api.content(file_id) as chunks:
            splitter, sink = LineSplitter(), ImageSink(self.out_dir, "batch-line")
            try:
                async for piece, ends in split_lines(chunks):
                    for body in splitter.feed(piece):
                        await sink.feed_json(body)
                        if sink.held > MAX_RESPONSE_EXTRA_BYTES:
                            raise InvalidResponseError("an output line's body is too large")
                    if ends:
                        record = await self._line(splitter, sink, batch_id, rows)
                        splitter, sink = LineSplitter(), ImageSink(self.out_dir, "batch-line")
                        if record is not None:
                            yield record
                if splitter.rest.strip() or splitter.has_body:  # a last line with no newline
                    record = await self._line(splitter, sink, batch_id, rows)
                    if record is not None:
                        yield record
            finally:
                sink.discard()

    async def _line(
        self, splitter: LineSplitter, sink: ImageSink, batch_id: str, rows: dict[str, str]
    ) -> JobRecord | None:
        try:
            if not splitter.rest.strip():
                return None
            self.lines += 1
            try:
                line = parse_rest(splitter.rest)
            except InvalidResponseError as exc:
                log.warning("%s: %s; skipped", batch_id, exc, extra={"event": "warning"})
                return None
            found = self.book.owed(line.custom_id, rows.get(line.custom_id))
            if found is None:
                return None  # done already, or not this run's: read past
            entry, index = found
            entry.seen(batch_id, line.request_id, line.status_code)
            if line.status_code == 200 and splitter.has_body:
                return await self._image(entry, index, sink, line)
            if line.error_code in NOT_RUN_CODES:
                entry.progress.attempts -= 1  # never ran: not an attempt
                return None
            raw = await sink.end_json() if splitter.has_body else b""
            return self.book.failed(entry, index, describe(_failure(line, raw, self.api)).record())
        finally:
            sink.discard()

    async def _image(
        self, entry: Entry, index: int, sink: ImageSink, line: OutputLine
    ) -> JobRecord | None:
        job, stem = entry.job, entry.job.stems[index]
        try:
            reply = parse_images(await sink.end_json())
            item = reply.data[0]
            if sink.streamed:
                pass
            elif item.url and job.request.response_format == "url":  # as a direct run does
                await self.api.download(item.url, sink)
            elif item.b64_json:  # an unusual body the scanner left whole
                await sink.feed_raw(await asyncio.to_thread(decode_and_verify, item.b64_json))
            else:
                raise InvalidResponseError("the output line's body has no b64_json image")
            image = await sink.verify()
        except APIError as exc:
            failure = describe(exc)
            if sink.size:
                await keep_rejected(job.id, sink, stem, failure, entry.progress, 1)
            return self.book.failed(entry, index, failure.record())
        relative = f"{stem}.{image.extension}"
        await self.writer(sink, self.out_dir, relative)
        if image.format != job.request.format:
            entry.warnings.append(
                f"asked for {job.request.format} but the server sent {image.format}; "
                f"saved as {relative}"
            )
        entry.warnings.extend(
            f"{relative}: {w}" for w in image_warnings(image, size=job.request.size)
        )
        entry.revised = entry.revised or reply.data[0].revised_prompt
        return self.book.ok(entry, index, image.record(relative), reply.usage)


def _failure(line: OutputLine, raw: bytes, api: BatchClient) -> APIError:
    """The error a failed line stands for, as a direct request's would be."""
    if line.status_code is not None and line.status_code >= 300 and raw:
        return status_from_body(line.status_code, raw, CIMultiDict(), api.secrets)
    error = {"error": {"code": line.error_code, "message": line.error_message or "failed"}}
    status = line.status_code if line.status_code and line.status_code >= 400 else 400
    return status_from_body(status, json.dumps(error).encode(), CIMultiDict(), api.secrets)
