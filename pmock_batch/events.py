"""A streamed answer (``stream: true``), read as server-sent events into the image sink.

:class:`EventReader` is the :class:`~pmock_batch.client.BodySink` the client
feeds when a job streams. The events come through :mod:`pmock_batch.sse`:

- ``image_generation.partial_image`` (``image_edit.partial_image``): a preview.
  With ``--save-partials`` its ``b64_json`` is decoded into its own sink and
  saved as ``OUT/.partials/<stem>.<index>.<ext>`` (atomically); otherwise it
  is only counted, its data skipped as it passes. A partial is never the image.
- ``image_generation.completed`` (``image_edit.completed``): the image. Its
  data streams through the job's :class:`~pmock_batch.images.ImageSink`, whose
  scanner decodes ``b64_json`` straight into the temporary file and keeps the
  small rest (``usage``...). The first one counts; later events are skipped.
- ``error``: the stream failed (:class:`~pmock_batch.errors.IncompleteStreamError`).

An event's type is its ``event:`` field or, when the server sends none, the
``"type"`` its data starts with (read from at most :data:`_SNIFF` bytes).
Memory stays bounded: a data line is never held, only the parser's short
fields, at most :data:`_SNIFF` bytes of an undecided event and the JSON
outside an image. A body that starts with ``{`` is a plain JSON answer (a
server that does not stream): it goes to the sink as usual.

At the end, :meth:`EventReader.end_json` hands the client the ``completed``
event as an images response (``{"data": [{"b64_json": ""}], "usage": ...}``),
or raises :class:`~pmock_batch.errors.IncompleteStreamError` if none came.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answers import clean
from .errors import IncompleteStreamError, InvalidResponseError, PmockBatchError
from .images import ImageSink
from .models import PartialFile
from .sse import Data, Dispatch, EventParser, Item, Name

__all__ = ["PARTIALS_DIR", "EventReader", "PartialSaver"]

log = logging.getLogger("pmock_batch")

PARTIALS_DIR = ".partials"  # saved partial images, below OUT; never output
_SNIFF = 4096  # bytes of an unnamed event's data read to find its "type"
_MAX_SMALL = 64 * 1024  # an error event's data kept, at most
_TYPE = re.compile(rb'"type"\s*:\s*"([^"\\]{1,100})"')
_WHITESPACE = b" \t\r\n"

# Where an event's data goes
_UNDECIDED, _FINAL, _PARTIAL, _SAVED, _ERROR, _SKIP = range(6)


@dataclass(frozen=True, slots=True)
class PartialSaver:
    """Where ``--save-partials`` puts one image's partials: ``OUT/.partials/<stem>.*``.

    Each one saved is listed in ``saved`` (the job's record), the newest for each path:
    a retry's partial replaces the file, and the entry, of the same index.
    """

    out_dir: Path
    stem: str
    saved: list[PartialFile] = field(default_factory=list)

    def sink(self) -> ImageSink:
        return ImageSink(self.out_dir, f"{PARTIALS_DIR}/{self.stem}", top=True)

    def keep(self, item: PartialFile) -> None:
        self.saved[:] = [p for p in self.saved if p.path != item.path]
        self.saved.append(item)


def _route(name: str) -> int:
    if name.endswith(".completed"):
        return _FINAL
    if name.endswith(".partial_image"):
        return _PARTIAL
    if name == "error":
        return _ERROR
    return _SKIP


class EventReader:
    """Reads one streamed answer: partials counted (or saved), the image into ``sink``.

    ``on_partial`` is told the number of partials so far as each arrives, and None
    when the exchange is over (:meth:`discard`): the live progress shows it.
    """

    def __init__(
        self,
        sink: ImageSink,
        *,
        saver: PartialSaver | None = None,
        on_partial: Callable[[int | None], None] | None = None,
    ) -> None:
        self.sink = sink
        self.partials = 0  # partial_image events received
        self.saved: list[PartialFile] = []
        self._saver = saver
        self._on_partial = on_partial
        self._parser = EventParser()
        self._json: bool | None = None  # None: the body's first byte is yet to come
        self._route = _UNDECIDED
        self._head = bytearray()  # an undecided event's first data bytes; an error's data
        self._partial: ImageSink | None = None
        self._completed: dict[str, Any] | None = None
        self._final_begun = False

    @property
    def held(self) -> int:
        """Bytes held in memory: short fields, an undecided event's start, JSON outside images."""
        extra = self._partial.held if self._partial is not None else 0
        return self._parser.held + len(self._head) + self.sink.held + extra

    @property
    def answered(self) -> bool:
        """The ``completed`` event began to arrive: the image was made (and billed)."""
        return self._final_begun

    async def feed_json(self, chunk: bytes) -> None:
        if self._json is None:
            start = chunk.lstrip(_WHITESPACE)
            if not start:
                return
            self._json = start.startswith(b"{")
            if not self._json:
                self.sink.expect_event()
        if self._json:
            await self.sink.feed_json(chunk)
            return
        for item in self._parser.feed(chunk):
            await self._item(item)

    async def feed_raw(self, data: bytes) -> None:  # pragma: no cover - the client never calls it
        raise InvalidResponseError("a streamed answer has no image URL to download")

    async def end_json(self) -> bytes:
        """The body ended: the ``completed`` event as an images response, or raise."""
        if self._json:
            return await self.sink.end_json()
        for item in self._parser.finish():
            await self._item(item)
        if self._parser.pending:  # a last event without its blank line still counts
            await self._item(Dispatch())
        if self._completed is None:
            got = f"after {self.partials} partial image{'s' if self.partials != 1 else ''} "
            raise IncompleteStreamError(
                f"the stream ended {got if self.partials else ''}without a completed event"
            )
        done = self._completed
        image = {"b64_json": "" if self.sink.streamed else done.get("b64_json")}
        keys = ("background", "output_format", "quality", "size", "usage")
        body: dict[str, Any] = {k: done[k] for k in keys if done.get(k) is not None}
        if isinstance(done.get("created_at"), int):
            body["created"] = done["created_at"]
        body["data"] = [image]
        return json.dumps(body).encode("utf-8")

    # -- one event ----------------------------------------------------------

    async def _item(self, item: Item) -> None:
        if isinstance(item, Name):
            if self._route == _UNDECIDED and not self._head:
                await self._begin(_route(item.value))
        elif isinstance(item, Data):
            await self._data(item.value)
        else:
            await self._dispatch()

    async def _begin(self, route: int) -> None:
        if self._completed is not None:
            route = _SKIP  # the image came: whatever follows is ignored
        elif route == _PARTIAL and self._saver is not None:
            route = _SAVED
            self._partial = self._saver.sink()
        elif route == _FINAL:
            self._final_begun = True
        self._route = route

    async def _data(self, data: bytes) -> None:
        if self._route == _UNDECIDED:  # no event: line; the data's "type" decides
            room = _SNIFF - len(self._head)
            self._head += data[:room]
            found = _TYPE.search(self._head)
            if found is None and len(self._head) < _SNIFF and b'"b64_json"' not in self._head:
                return  # all of data is in the head
            await self._begin(_route(found[1].decode("ascii", "replace")) if found else _SKIP)
            data, self._head = bytes(self._head) + data[room:], bytearray()
        if self._route == _FINAL:
            await self.sink.feed_json(data)
        elif self._route == _SAVED and self._partial is not None:
            await self._partial.feed_json(data)
        elif self._route == _ERROR:
            self._head += data[: _MAX_SMALL - len(self._head)]

    async def _dispatch(self) -> None:
        if self._route == _UNDECIDED and self._head:  # short data: decide on it whole
            head = bytes(self._head)
            self._head = bytearray()
            found = _TYPE.search(head)
            await self._begin(_route(found[1].decode("ascii", "replace")) if found else _SKIP)
            await self._data(head)
        route, self._route = self._route, _UNDECIDED
        if route == _FINAL:
            self._completed = _object(await self.sink.end_json(), "completed")
        elif route in (_PARTIAL, _SAVED):
            self.partials += 1
            if self._on_partial is not None:
                self._on_partial(self.partials)
            if route == _SAVED:
                await self._save()
        elif route == _ERROR:
            raise IncompleteStreamError(f"the stream sent an error event: {_message(self._head)}")
        self._head = bytearray()

    async def _save(self) -> None:
        """Verify the partial just received and rename it into ``.partials/``."""
        sink, self._partial = self._partial, None
        if sink is None or self._saver is None:
            return
        try:
            rest = _object(await sink.end_json(), "partial_image")
            index = rest.get("partial_image_index")
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 100:
                index = self.partials - 1
            image = await sink.verify()
            relative = f"{PARTIALS_DIR}/{self._saver.stem}.{index}.{image.extension}"
            await sink.commit(self._saver.out_dir, relative)
        except (PmockBatchError, OSError) as exc:  # a preview: never the job's failure
            log.warning(
                "%s: partial image %d not saved: %s",
                self._saver.stem,
                self.partials,
                exc,
                extra={"event": "warning", "job_id": self._saver.stem},
            )
            return
        finally:
            sink.discard()
        item = PartialFile(path=relative, index=index, sha256=image.sha256)
        self.saved = [p for p in self.saved if p.index != index]
        self.saved.append(item)
        self._saver.keep(item)

    def discard(self) -> None:
        """The exchange is over: remove a half-written partial's temporary file, and tell
        ``on_partial`` (with None). Safe to call twice."""
        if self._partial is not None:
            self._partial.discard()
            self._partial = None
        if self._on_partial is not None:
            self._on_partial(None)


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise InvalidResponseError(f"the stream's {what} event is not a JSON object")
    return data


def _message(raw: bytes | bytearray) -> str:
    """The message of an ``error`` event's data, made safe."""
    try:
        data: Any = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    err = data.get("error", data) if isinstance(data, dict) else None
    if isinstance(err, dict):
        text = str(err.get("message") or err.get("code") or "no message")
    else:
        text = bytes(raw).decode("utf-8", "replace").strip() or "no message"
    return clean(text, ())
