"""Streaming decode of a JSON body's ``b64_json`` value, chunk by chunk.

A 4K PNG arrives as a 10-25 MB base64 string inside JSON. Holding it whole,
then a decoded copy, then parsing it, costs several times the image in memory.
:class:`B64JsonScanner` instead watches the body stream by: it tracks JSON
string state and nesting outside the value, finds ``data[0].b64_json`` (the
``"b64_json"`` string of the first element of the body's ``"data"`` array;
no other ``"b64_json"`` counts), and hands out the value's base64 text piece by piece while
keeping everything else (the small remainder, with the value emptied) for a
normal JSON parse. :class:`B64Decoder` decodes base64 incrementally with
strict validation. Both are pure: no I/O, no event loop.

The scanner is strict: inside the value it accepts the base64 alphabet and
JSON escapes that decode to it (``\\/``, ``\\uXXXX``) or to whitespace
(``\\n``, ``\\r``, which MIME-wrapped base64 carries); anything else raises
:class:`~pmock_batch.errors.InvalidResponseError`. A body with no such key
simply ends up whole in :attr:`B64JsonScanner.remainder`, and the caller
parses that as usual.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

import pybase64

from .errors import InvalidResponseError

__all__ = ["B64Decoder", "B64JsonScanner"]

_KEY = b"b64_json"
_DATA = b"data"
_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_WHITESPACE = frozenset(b" \t\r\n")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {ord("/"): ord("/"), ord("n"): None, ord("r"): None, ord("t"): None}
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")  # jumps over whitespace padding in one call
_STRUCTURE = re.compile(rb'["{}\[\]]')  # all that matters inside a container off the path
_LITERAL = re.compile(rb'[^ \t\r\n"{}\[\]:,]*')  # the rest of a number, true, false, null

# Scanner states
_OUTSIDE = 0  # in JSON text, before the value
_IN_VALUE = 3  # inside the value: base64 text
_DONE = 4  # the value ended; everything else is remainder

# How many of the open containers are on the path to the value: the body
# object (1), its "data" array (2), the array's first element (3).
_TOP, _ARRAY, _ITEM = 1, 2, 3


class B64JsonScanner:
    """Find ``data[0].b64_json`` of a streamed JSON body: ``{"data": [{"b64_json": "..."}]}``.

    Only that path counts: a ``"b64_json"`` key anywhere else (in another
    object, in ``data[1]``, inside a string) is ordinary JSON, kept in the
    remainder. :attr:`outside` counts the bytes kept, so that a caller can cap them.
    With ``top=True`` the value is the body's own ``b64_json`` instead: a
    streamed event's ``{"type": ..., "b64_json": "..."}`` (see :mod:`pmock_batch.events`).
    """

    def __init__(self, *, top: bool = False) -> None:
        self._value_path = _TOP if top else _ITEM  # the object whose "b64_json" is the value
        self._top_key = _KEY if top else _DATA  # the key on the path in the body object
        self.remainder = bytearray()  # the body without the value's text
        self.found = False  # a b64_json string value was seen (and maybe finished)
        self._state = _OUTSIDE
        self._in_string = False
        self._escaped = False
        self._string = bytearray()  # the current key's raw bytes (first 9 only)
        self._is_key = False  # the current string is a key of an object on the path
        self._pending = bytearray()  # an escape inside the value split across chunks
        self._depth = 0  # containers open
        self._path = 0  # of which on the path: _TOP, _ARRAY, _ITEM (always the outermost)
        self._expect_key = False  # on the path, in an object: the next string is a key
        self._matched = False  # on the path: the last key was the one the path goes through
        self._at_value = False  # on the path: after the matched key's ':'
        self._first = False  # in the data array: its first element has not begun

    @property
    def done(self) -> bool:
        """The value has been read to its closing quote."""
        return self._state == _DONE

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Consume one body chunk; yield the base64 text it holds, in order."""
        i, n = 0, len(chunk)
        while i < n:
            if self._state == _IN_VALUE:
                piece, i = self._value(chunk, i)
                if piece:
                    yield piece
            elif self._state == _DONE:
                self.remainder += chunk[i:]
                return
            else:
                i = self._outside(chunk, i)

    def close(self) -> None:
        """The body has ended. Raises if it ended inside the value."""
        if self._state == _IN_VALUE:
            raise InvalidResponseError("the response body ended inside the b64_json value")

    def _outside(self, chunk: bytes, i: int) -> int:
        """Scan JSON text until the value opens; keep it all in the remainder.

        Strings are skipped with ``bytes.find`` and whitespace with one regex
        search; only punctuation and the first byte of a literal are looked
        at one by one, to follow the path ``data[0].b64_json``.
        """
        start, n = i, len(chunk)
        while i < n:
            if self._in_string:
                i = self._string_part(chunk, i)
                continue
            # Off the path only strings and brackets matter: jump to the next one.
            found = (_STRUCTURE if self._depth > self._path else _NOT_SPACE).search(chunk, i)
            if found is None:
                i = n
                break
            i = found.start()
            c = chunk[i]
            i += 1
            direct = (
                self._depth == self._path
            )  # directly inside the innermost container on the path
            if c == 0x22:  # '"'
                if direct and self._at_value and self._path == self._value_path:
                    self._state = _IN_VALUE
                    self.found = True
                    break
                self._in_string = True
                self._is_key = direct and self._expect_key and self._path in (_TOP, _ITEM)
                self._string.clear()
                if not self._is_key:
                    self._value_begins(direct)
            elif c in (0x7B, 0x5B):  # '{' or '['
                if direct and (
                    (c == 0x7B and self._path == 0)
                    or (c == 0x7B and self._path == _ARRAY and self._first)
                    or (
                        c == 0x5B
                        and self._path == _TOP
                        and self._at_value
                        and self._top_key == _DATA
                    )
                ):
                    self._path += 1
                    self._expect_key = c == 0x7B
                    self._first = c == 0x5B
                    self._at_value = self._matched = False
                else:
                    self._value_begins(direct)
                self._depth += 1
            elif c in (0x7D, 0x5D):  # '}' or ']'
                self._depth = max(0, self._depth - 1)
                if self._path > self._depth:
                    self._path = self._depth
                    self._value_begins(True)  # the container just closed was a value
            elif c == 0x3A:  # ':'
                if direct and self._matched:
                    self._at_value = True
                self._matched = False
            elif c == 0x2C:  # ','
                if direct:
                    self._expect_key = True
                    self._at_value = self._matched = self._first = False
            else:  # a number, true, false or null
                self._value_begins(direct)
                literal = _LITERAL.match(chunk, i)
                if literal is not None:
                    i = literal.end()
        self.remainder += chunk[start:i]
        return i

    def _value_begins(self, direct: bool) -> None:
        """A value starts (or a container closes) where the path might have gone on."""
        if direct:
            self._at_value = self._matched = self._first = self._expect_key = False

    def _string_part(self, chunk: bytes, i: int) -> int:
        """Skip string text up to its closing quote; note a key's first bytes."""
        n = len(chunk)
        if self._escaped:
            self._escaped = False
            self._keep(chunk[i : i + 1])
            return i + 1
        quote = chunk.find(b'"', i)
        slash = chunk.find(b"\\", i)
        stop = min(p for p in (quote, slash, n) if p >= 0)
        self._keep(chunk[i:stop])
        i = stop
        if i == n:
            return i
        i += 1
        if chunk[i - 1] == 0x5C:  # a backslash: the next byte is escaped
            self._escaped = True
            self._keep(b"\\")
            return i
        self._in_string = False  # the closing quote
        if self._is_key:
            self._is_key = self._expect_key = False
            target = self._top_key if self._path == _TOP else _KEY
            self._matched = bytes(self._string) == target
        return i

    def _keep(self, data: bytes) -> None:
        """Note a key's first bytes: enough to tell whether it is the one on the path."""
        if not self._is_key:
            return
        room = len(_KEY) + 1 - len(self._string)
        if room > 0:
            self._string += data[:room]

    def _value(self, chunk: bytes, i: int) -> tuple[bytes, int]:
        """Take base64 text from ``chunk[i:]`` up to the closing quote."""
        n = len(chunk)
        if not self._pending:
            # The common case, a value without escapes: the text is a slice of the
            # chunk (the chunk itself, mid-value), not a copy built up byte string by
            # byte string. An image's base64 is megabytes; every copy of it shows.
            quote = chunk.find(b'"', i)
            end = n if quote < 0 else quote
            if chunk.find(b"\\", i, end) < 0:
                piece = chunk[i:end]
                if quote < 0:
                    return piece, n
                self.remainder += chunk[quote:]  # the closing quote, and what follows
                self._state = _DONE
                return piece, n
        out = bytearray()
        while i < n:
            if self._pending:
                i = self._escape(chunk, i, out)
                continue
            quote = chunk.find(b'"', i)
            slash = chunk.find(b"\\", i)
            stop = min(p for p in (quote, slash, n) if p >= 0)
            out += chunk[i:stop]
            i = stop
            if i == n:
                break
            if chunk[i] == 0x22:  # the value ends
                self.remainder += b'"'
                self._state = _DONE
                i += 1
                self.remainder += chunk[i:]
                i = n
                break
            self._pending.append(chunk[i])  # a backslash starts an escape
            i += 1
        return bytes(out), i

    def _escape(self, chunk: bytes, i: int, out: bytearray) -> int:
        """Continue an escape sequence that may span chunks."""
        self._pending.append(chunk[i])
        i += 1
        kind = self._pending[1]
        if kind in _SIMPLE_ESCAPES:
            value = _SIMPLE_ESCAPES[kind]
            if value is not None:
                out.append(value)
            self._pending.clear()
            return i
        if kind != ord("u"):
            escape = "\\" + chr(kind)  # shown by repr: the byte may be a control character
            raise InvalidResponseError(f"unexpected escape {escape!r} inside the b64_json value")
        if len(self._pending) < 6:
            return i
        digits = bytes(self._pending[2:6])
        if not all(c in _HEX for c in digits):
            raise InvalidResponseError("bad \\u escape inside the b64_json value")
        code = int(digits, 16)
        self._pending.clear()
        if code in _ALPHABET:
            out.append(code)
        elif code not in _WHITESPACE:
            raise InvalidResponseError(f"character U+{code:04X} inside the b64_json value")
        return i


class B64Decoder:
    """Strict incremental base64: decode whole quanta, carry the rest to the next call."""

    def __init__(self) -> None:
        self._carry = b""
        self._ended = False  # a padded quantum was decoded: nothing may follow

    def feed(self, text: bytes) -> bytes:
        """Decode as much of ``text`` (plus any carry) as forms whole 4-character quanta."""
        parts = self.pieces(text)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pieces(self, text: bytes) -> list[bytes]:
        """:meth:`feed`, as a list of decoded pieces whose join is what it returns.

        Without copying ``text``: the carry is completed to one quantum and
        decoded on its own, then the whole quanta of ``text`` through a view.
        """
        if not text:
            return []
        if self._ended:
            raise InvalidResponseError("b64_json has data after its padding")
        parts: list[bytes] = []
        carry, start = self._carry, 0
        if carry:
            start = 4 - len(carry)
            quantum = carry + text[:start]
            if len(quantum) < 4 or 0x3D in quantum:  # short, or padded: as one piece
                return self._whole(carry + text)
            parts.append(_decode(quantum))
        cut = len(text) - (len(text) - start) % 4
        self._carry = text[cut:]
        if cut > start:
            if text[cut - 1] == 0x3D:  # '=': this was the final quantum
                self._ended = True
            parts.append(_decode(memoryview(text)[start:cut] if start or cut < len(text) else text))
        return parts

    def _whole(self, data: bytes) -> list[bytes]:
        cut = len(data) - len(data) % 4
        self._carry = data[cut:]
        if not cut:
            return []
        if data[cut - 1] == 0x3D:  # '=': this was the final quantum
            self._ended = True
        return [_decode(data[:cut])]

    def finish(self) -> bytes:
        """Decode what is left. Missing padding is tolerated; a lone character is not."""
        rest, self._carry = self._carry, b""
        if not rest:
            return b""
        if len(rest) == 1 or self._ended:
            raise InvalidResponseError("b64_json is not valid base64: truncated")
        self._ended = True
        return _decode(rest + b"=" * (-len(rest) % 4))


def _decode(data: bytes | memoryview) -> bytes:
    try:
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidResponseError(f"b64_json is not valid base64: {exc}") from exc
