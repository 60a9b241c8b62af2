"""Pure: an output file's lines, split as they stream, without holding any line whole.

An output line is ``{"id", "custom_id", "response": {"status_code",
"request_id", "body": {...}}, "error"}``, and ``body`` holds an image's
base64: tens of MB. :func:`split_lines` cuts a stream of chunks at newlines
(JSON text never has a raw newline inside a string). :class:`LineSplitter`
walks one line's JSON structure and hands out the bytes of ``response.body``
as they pass (for an :class:`~pmock_batch.images.ImageSink`'s ``feed_json``),
keeping the rest of the line, with ``null`` in the body's place, for an
ordinary parse. It jumps through strings and over structure with regular
expressions, so a 20 MB base64 string costs a few searches, not a loop per byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidResponseError

__all__ = ["MAX_LINE_REST", "LineSplitter", "OutputLine", "parse_rest", "split_lines"]

MAX_LINE_REST = 4 * 1024 * 1024  # bytes of a line kept outside its body
# The rest of a string up to its closing quote (or the chunk's end), escapes and all,
# in one C-level match: base64 with an escaped "\/" every few bytes costs no Python loop.
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_STRUCTURE = re.compile(rb'["{}\[\]:,]')
_KEY_KEEP = 16  # bytes of a string kept to recognise a key
_BODY_PATH = (None, b"response", b"body")


async def split_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[bytes, bool]]:
    """Yield ``(piece, ends_line)`` for a stream: each line in one or more pieces."""
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            yield chunk[start:end], True
            start = end + 1
        if start < len(chunk):
            yield chunk[start:], False


class LineSplitter:
    """One output line: yields ``response.body``'s bytes, keeps the rest (:attr:`rest`)."""

    def __init__(self) -> None:
        self.rest = bytearray()
        self.has_body = False
        self._stack: list[bytes | None] = []  # the key each open container sits under
        self._in_string = False
        self._escaped = False
        self._string = bytearray()  # the first bytes of the current string
        self._last_string: bytes | None = None
        self._key: bytes | None = None  # after "key": until the value opens or ends
        self._body_depth = 0  # > 0: inside the body, at this stack depth

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume a piece of the line; return the body's bytes it holds."""
        out: list[bytes] = []
        i, n = 0, len(chunk)
        body_from, kept_from = (0, -1) if self._body_depth else (-1, 0)
        while i < n:
            if self._in_string:
                i = self._string_part(chunk, i)
                continue
            m = _STRUCTURE.search(chunk, i)
            if m is None:
                break
            j = i = m.start()
            i += 1
            c = chunk[j]
            if c == 0x22:  # "
                self._in_string, self._string = True, bytearray()
            elif c == 0x3A:  # :
                self._key = self._last_string
            elif c == 0x2C:  # ,
                self._key = None
            elif c in b"{[":
                self._stack.append(self._key)
                self._key = None
                if not self._body_depth and tuple(self._stack) == _BODY_PATH and c == 0x7B:
                    self._keep(chunk[kept_from:j] + b"null")
                    self._body_depth, self.has_body = len(self._stack), True
                    body_from, kept_from = j, -1
            else:  # } or ]
                depth = len(self._stack)
                if self._stack:
                    self._stack.pop()
                self._key = None
                if self._body_depth and depth == self._body_depth:
                    out.append(chunk[body_from:i])
                    self._body_depth = 0
                    body_from, kept_from = -1, i
        if self._body_depth:
            out.append(chunk[body_from:])
        else:
            self._keep(chunk[kept_from:])
        return out

    def _string_part(self, chunk: bytes, i: int) -> int:
        if self._escaped:  # a backslash ended the last piece: this byte is its escape
            self._escaped = False
            i += 1
        m = _STRING_REST.match(chunk, i)
        end = m.end() if m is not None else i
        if not self._body_depth and len(self._string) < _KEY_KEEP:
            self._string += chunk[i : min(end, i + _KEY_KEEP)]
        if end >= len(chunk):
            return end
        if chunk[end] == 0x5C:  # a backslash at the very end of the piece
            self._escaped = True
            return end + 1
        self._in_string = False  # the closing quote
        self._last_string = bytes(self._string)
        return end + 1

    def _keep(self, data: bytes) -> None:
        if len(self.rest) + len(data) > MAX_LINE_REST:
            raise InvalidResponseError(
                f"an output line holds more than {MAX_LINE_REST:,} bytes outside its body"
            )
        self.rest += data


@dataclass(frozen=True, slots=True)
class OutputLine:
    """What one output (or error-file) line says, outside its body."""

    custom_id: str
    status_code: int | None  # None: no response (``error`` says why)
    request_id: str | None
    error_code: str | None
    error_message: str | None


def parse_rest(rest: bytes | bytearray) -> OutputLine:
    """Parse a line's :attr:`LineSplitter.rest`. Raises :class:`InvalidResponseError`."""
    try:
        data: Any = json.loads(rest)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidResponseError("an output line is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        raise InvalidResponseError("an output line has no custom_id")
    response: dict[str, Any] = data["response"] if isinstance(data.get("response"), dict) else {}
    error: dict[str, Any] = data["error"] if isinstance(data.get("error"), dict) else {}
    status = response.get("status_code")
    request_id = response.get("request_id")
    return OutputLine(
        custom_id=data["custom_id"],
        status_code=status if isinstance(status, int) and not isinstance(status, bool) else None,
        request_id=str(request_id) if request_id is not None else None,
        error_code=str(error["code"]) if error.get("code") is not None else None,
        error_message=str(error["message"]) if error.get("message") is not None else None,
    )
