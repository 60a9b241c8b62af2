"""An incremental parser of server-sent events (``text/event-stream``): pure, bounded memory.

A streamed image arrives as a few events whose ``data:`` line can be tens of
megabytes of base64 inside JSON. :class:`EventParser` never holds such a line:
it hands out a ``data`` field's value piece by piece, as the body arrives, and
keeps only the short fields (``event:``, ``id:``, ``retry:``), up to
:data:`MAX_FIELD_BYTES`. Lines end with LF, CRLF or CR (a CR at the end of one
chunk and an LF at the start of the next are one line end), as the HTML
specification says. Comments (``:``) and ``id``/``retry`` are skipped.

:meth:`EventParser.feed` yields, in order:

- :class:`Name`: the event's ``event:`` field;
- :class:`Data`: a piece of the event's data (several ``data:`` lines are
  joined with ``\\n``, as the specification says);
- :class:`Dispatch`: a blank line ended the event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import InvalidResponseError

__all__ = ["MAX_FIELD_BYTES", "Data", "Dispatch", "EventParser", "Name"]

MAX_FIELD_BYTES = 64 * 1024  # a non-data line longer than this is refused


@dataclass(frozen=True, slots=True)
class Name:
    """The ``event:`` field of the event being read."""

    value: str


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of the ``data`` of the event being read."""

    value: bytes


@dataclass(frozen=True, slots=True)
class Dispatch:
    """The event ended (a blank line)."""


_DISPATCH = Dispatch()
Item = Name | Data | Dispatch

# Where the parser is within a line
_START = 0  # at the start of a line: nothing read yet
_FIELD = 1  # reading the field name (before any ':')
_SPACE = 2  # just after "data:": one optional space is dropped
_DATA = 3  # inside a data line's value: handed out as it comes
_VALUE = 4  # inside a short field's value: kept, up to MAX_FIELD_BYTES
_SKIP = 5  # inside a comment: dropped


class EventParser:
    """Feed body chunks; get :class:`Name`, :class:`Data` and :class:`Dispatch` items."""

    def __init__(self) -> None:
        self._state = _START
        self._field = bytearray()
        self._value = bytearray()
        self._after_cr = False  # the last byte was a CR: an LF now is the same line end
        self._has_data = False  # the event has had a data line: the next one is joined by \n
        self.pending = False  # the event being read has fields not yet dispatched

    @property
    def held(self) -> int:
        """Bytes held in memory: the short field being read."""
        return len(self._field) + len(self._value)

    def feed(self, chunk: bytes) -> Iterator[Item]:
        i, n = 0, len(chunk)
        if self._after_cr and n and chunk[0] == 0x0A:
            i = 1
        self._after_cr = False
        while i < n:
            if self._state == _DATA:
                end = _line_end(chunk, i)
                if end > i:
                    yield Data(chunk[i:end])
                i = end
            elif self._state in (_VALUE, _SKIP):
                end = _line_end(chunk, i)
                if self._state == _VALUE:
                    self._value += chunk[i:end]
                    if len(self._value) > MAX_FIELD_BYTES:
                        raise InvalidResponseError("the event stream has an overlong line")
                i = end
            elif self._state == _SPACE:
                if chunk[i] == 0x20:
                    i += 1
                self._state = _DATA
                continue
            else:
                c = chunk[i]
                if c in (0x0A, 0x0D):
                    pass  # the line end, handled below
                elif c == 0x3A and self._state == _START:  # ':' first: a comment
                    self._state = _SKIP
                    i += 1
                    continue
                elif c == 0x3A:
                    i += 1
                    yield from self._field_named()
                    continue
                else:
                    end = _field_end(chunk, i)
                    self._field += chunk[i:end]
                    if len(self._field) > MAX_FIELD_BYTES:
                        raise InvalidResponseError("the event stream has an overlong line")
                    self._state = _FIELD
                    i = end
                    continue
            if i < n:  # at a line end
                yield from self._line_ended()
                if chunk[i] == 0x0D:
                    if i + 1 < n:
                        i += 2 if chunk[i + 1] == 0x0A else 1
                    else:
                        self._after_cr = True
                        i += 1
                else:
                    i += 1

    def finish(self) -> Iterator[Item]:
        """The body ended: a last line without its line end still counts."""
        if self._state != _START:
            yield from self._line_ended()

    def _field_named(self) -> Iterator[Item]:
        """The field name ended at a ':'."""
        name = bytes(self._field)
        self._field.clear()
        if name == b"data":
            yield from self._data_begins()
            self._state = _SPACE
        else:
            self._value.clear()
            self._field += name  # kept until the line ends
            self._state = _VALUE

    def _data_begins(self) -> Iterator[Item]:
        if self._has_data:
            yield Data(b"\n")
        self._has_data = self.pending = True

    def _line_ended(self) -> Iterator[Item]:
        state, self._state = self._state, _START
        if state == _START:  # a blank line: dispatch
            if self.pending:
                self._has_data = self.pending = False
                yield _DISPATCH
            return
        if state == _FIELD:  # a field with no ':': its value is empty
            name = bytes(self._field)
            self._field.clear()
            if name == b"data":
                yield from self._data_begins()
            elif name == b"event":
                self.pending = True
                yield Name("")
            return
        if state == _VALUE:
            name, value = bytes(self._field), bytes(self._value)
            self._field.clear()
            self._value.clear()
            if name == b"event":
                self.pending = True
                text = value[1:] if value.startswith(b" ") else value
                yield Name(text.decode("utf-8", "replace"))


def _line_end(chunk: bytes, i: int) -> int:
    """The index of the next CR or LF in ``chunk`` from ``i``, or its length."""
    lf = chunk.find(b"\n", i)
    cr = chunk.find(b"\r", i, lf if lf >= 0 else len(chunk))
    if cr >= 0:
        return cr
    return lf if lf >= 0 else len(chunk)


def _field_end(chunk: bytes, i: int) -> int:
    """The index of the next ':', CR or LF in ``chunk`` from ``i``, or its length."""
    end = _line_end(chunk, i)
    colon = chunk.find(b":", i, end)
    return colon if colon >= 0 else end
