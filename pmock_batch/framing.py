"""Where an image's bytes end: PNG chunks, JPEG markers, WebP's RIFF size.

A decoder stops at the image's end marker and ignores what follows, so a file
with bytes after PNG's ``IEND``, JPEG's end-of-image or WebP's RIFF data is a
good image, and one cut before its end is not. :class:`FrameWalker` finds the
end as the bytes stream past, in bounded memory, whatever their split:

* **PNG**: walks the chunks (length, type, CRC). The CRC is checked only for
  the small critical chunks (``IHDR``, ``PLTE``, ``IEND``); ``IDAT`` and the
  ancillary chunks are skipped by their length, never buffered. The first
  chunk must be ``IHDR``; a chunk length over 2**31-1 or a type that is not
  four ASCII letters is an error, as it is for libpng.
* **JPEG**: walks the marker segments by their lengths (so an end-of-image
  inside an EXIF thumbnail is skipped) and scans entropy-coded data for the
  next marker, as libjpeg does; stray bytes between segments are skipped.
* **WebP**: the end is where the RIFF size says.

Pure: no I/O, no event loop. The walker never raises; it records an error and
stops looking, so the caller can keep every byte it received.
"""

from __future__ import annotations

import zlib

__all__ = [
    "END_MARKERS",
    "JPEG_MAGIC",
    "PNG_MAGIC",
    "FrameWalker",
    "JpegWalker",
    "PngWalker",
    "sniff",
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
SNIFF_BYTES = 12  # enough to tell PNG, JPEG and WebP apart
MAX_CHUNK_LENGTH = 2**31 - 1  # the PNG specification's limit
_CHECKED = {b"IHDR": 13, b"PLTE": 768, b"IEND": 0}  # chunks whose CRC is checked: max length
END_MARKERS = {"png": "IEND", "jpeg": "the end-of-image marker", "webp": "the RIFF data"}


def sniff(head: bytes) -> str | None:
    """The raster format named by the magic bytes (``png``, ``jpeg``, ``webp``), or None."""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(head) >= SNIFF_BYTES and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


# PNG walker states
_P_SIGNATURE = 0  # reading the 8-byte signature
_P_HEADER = 1  # reading a chunk's length and type
_P_CHECKED = 2  # reading a small critical chunk's data and CRC, to check the CRC
_P_SKIP = 3  # skipping a chunk's data and CRC unread


class _Walker:
    """What every walker says after feeding: where the image ended, or what is wrong."""

    def __init__(self) -> None:
        self.size = 0  # bytes fed
        self.end: int | None = None  # the offset just past the image's last byte, once seen
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return self.end is not None or self.error is not None


class PngWalker(_Walker):
    """Walks a PNG's chunk structure, fed any split of its bytes.

    After feeding, :attr:`end` is the offset just past ``IEND``'s CRC (None
    while it has not been seen) and :attr:`error` says what is wrong, if
    anything. Bytes fed after the end or an error are only counted (:attr:`size`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.chunks = 0  # chunks walked (IEND included)
        self._state = _P_SIGNATURE
        self._buf = bytearray()  # the signature, a chunk header, or a checked chunk + CRC
        self._need = len(PNG_MAGIC)  # bytes wanted in _buf, or left to skip
        self._type = b""  # the type of the chunk being read

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        i = 0
        view = memoryview(data)
        while i < n and not self.done:
            if self._state == _P_SKIP:
                take = min(self._need, n - i)
                i += take
                self._need -= take
                if not self._need:
                    self._expect(_P_HEADER, 8)
                continue
            take = min(self._need - len(self._buf), n - i)
            self._buf += view[i : i + take]
            i += take
            if len(self._buf) == self._need:
                self._complete(self.size + i)
        self.size += n

    def _expect(self, state: int, need: int) -> None:
        self._state = state
        self._need = need
        self._buf.clear()

    def _complete(self, offset: int) -> None:
        """``_buf`` holds what was wanted; ``offset`` is the absolute position after it."""
        if self._state == _P_SIGNATURE:
            if bytes(self._buf) != PNG_MAGIC:
                self.error = "the data is not a PNG image (bad signature)"
            else:
                self._expect(_P_HEADER, 8)
        elif self._state == _P_HEADER:
            self._header(bytes(self._buf))
        else:  # _P_CHECKED: the chunk's data, then its CRC
            body = bytes(self._buf)
            if zlib.crc32(self._type + body[:-4]) != int.from_bytes(body[-4:], "big"):
                name = self._type.decode("ascii")
                self.error = f"the PNG image is corrupt (bad CRC in its {name} chunk)"
                return
            self.chunks += 1
            if self._type == b"IEND":
                self.end = offset
            else:
                self._expect(_P_HEADER, 8)

    def _header(self, header: bytes) -> None:
        length = int.from_bytes(header[:4], "big")
        kind = header[4:8]
        name = kind.decode("latin-1")
        if length > MAX_CHUNK_LENGTH:
            self.error = f"the PNG image is corrupt (a chunk length of {length:,} bytes)"
        elif not all(65 <= c <= 90 or 97 <= c <= 122 for c in kind):
            self.error = f"the PNG image is corrupt (an invalid chunk type {kind!r})"
        elif not self.chunks and kind != b"IHDR":
            self.error = f"the PNG image is corrupt (its first chunk is {name}, not IHDR)"
        elif kind in _CHECKED and (
            length > _CHECKED[kind] or (kind == b"IHDR" and length != _CHECKED[kind])
        ):
            self.error = f"the PNG image is corrupt (its {name} chunk is {length} bytes long)"
        if self.error is not None:
            return
        self._type = kind
        if kind in _CHECKED:
            self._expect(_P_CHECKED, length + 4)
        else:
            self.chunks += 1
            self._expect(_P_SKIP, length + 4)


# JPEG walker states
_J_MARKER = 0  # between segments: looking for 0xFF
_J_CODE = 1  # after 0xFF: the marker code
_J_LENGTH = 2  # reading a segment's two length bytes
_J_SKIP = 3  # skipping a segment's payload
_J_ENTROPY = 4  # entropy-coded data after SOS: scanning for 0xFF
_J_ENTROPY_FF = 5  # after 0xFF inside entropy-coded data
_SOS = 0xDA
_EOI = 0xD9
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7: no length


class JpegWalker(_Walker):
    """Walks a JPEG's marker segments to its end-of-image marker, fed any split of its bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.stray = 0  # bytes between segments that are not markers (decoders skip them)
        self._state = _J_MARKER
        self._marker = 0
        self._length = bytearray()
        self._skip = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        i = 0
        raw = bytes(data) if not isinstance(data, bytes) else data
        while i < n and not self.done:
            state = self._state
            if state == _J_SKIP:
                take = min(self._skip, n - i)
                i += take
                self._skip -= take
                if not self._skip:
                    self._state = _J_ENTROPY if self._marker == _SOS else _J_MARKER
            elif state == _J_ENTROPY:
                j = raw.find(b"\xff", i)
                if j < 0:
                    i = n
                else:
                    i = j + 1
                    self._state = _J_ENTROPY_FF
            elif state == _J_MARKER:
                j = raw.find(b"\xff", i)
                if j < 0:
                    self.stray += n - i
                    i = n
                else:
                    self.stray += j - i
                    i = j + 1
                    self._state = _J_CODE
            elif state == _J_LENGTH:
                self._length.append(raw[i])
                i += 1
                if len(self._length) == 2:
                    length = int.from_bytes(self._length, "big")
                    if length < 2:
                        self.error = f"the JPEG image is corrupt (a segment length of {length})"
                    else:
                        self._skip = length - 2
                        self._state = _J_SKIP if self._skip else self._after_segment()
            else:  # _J_CODE or _J_ENTROPY_FF: this byte follows 0xFF
                code = raw[i]
                i += 1
                self._code(code, self.size + i, in_entropy=state == _J_ENTROPY_FF)
        self.size += n

    def _after_segment(self) -> int:
        return _J_ENTROPY if self._marker == _SOS else _J_MARKER

    def _code(self, code: int, offset: int, *, in_entropy: bool) -> None:
        if code == 0xFF:  # a fill byte: the marker code is still to come
            return
        if code == _EOI:
            self.end = offset
        elif in_entropy and (code == 0x00 or 0xD0 <= code <= 0xD7):
            self._state = _J_ENTROPY  # a stuffed 0xFF, or a restart marker: data goes on
        elif code == 0x00 or code in _STANDALONE:
            self._state = _J_MARKER
        else:
            self._marker = code
            self._length.clear()
            self._state = _J_LENGTH


class FrameWalker:
    """Sniffs the format from the first bytes, then finds the image's end as bytes stream in.

    :attr:`format` is None until enough bytes arrived, and stays None for a
    format that is not PNG, JPEG or WebP. :attr:`end` is the offset just past
    the image's end (None if not seen yet), :attr:`error` a structural problem.
    """

    def __init__(self) -> None:
        self.size = 0
        self.format: str | None = None
        self._head = bytearray()
        self._walker: PngWalker | JpegWalker | None = None
        self._riff_end: int | None = None
        self._sniffed = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._sniffed:
            self._head += data
            if len(self._head) >= SNIFF_BYTES:
                self._start(bytes(self._head))
            self.size += len(data)
            return
        self.size += len(data)
        if self._walker is not None:
            self._walker.feed(data)

    def _start(self, head: bytes) -> None:
        self._sniffed = True
        self._head = bytearray()
        self.format = sniff(head)
        if self.format == "png":
            self._walker = PngWalker()
        elif self.format == "jpeg":
            self._walker = JpegWalker()
        elif self.format == "webp":
            self._riff_end = int.from_bytes(head[4:8], "little") + 8
        if self._walker is not None:
            self._walker.feed(head)

    def finish(self) -> None:
        """The data has ended: sniff what there is, if that has not happened yet."""
        if not self._sniffed:
            self._start(bytes(self._head))

    @property
    def end(self) -> int | None:
        if self._walker is not None:
            return self._walker.end
        if self._riff_end is not None and self._riff_end <= self.size:
            return self._riff_end
        return None

    @property
    def error(self) -> str | None:
        return self._walker.error if self._walker is not None else None

    @property
    def trailing(self) -> int:
        """Bytes after the image's end (0 while the end has not been seen)."""
        end = self.end
        return self.size - end if end is not None else 0
