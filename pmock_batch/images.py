"""The writer: decode base64, verify the image, write it atomically.

The engine streams each image through an :class:`ImageSink`: the base64
text is decoded as it arrives, hashed, walked to find where the image ends
(:mod:`pmock_batch.framing`), and written to a temporary file in about 1 MB
writes, then verified from its head and that walk and renamed into place.
Bytes after the image's end do not fail it (decoders ignore them); the file
is kept as received. An image that fails can be kept instead, as received,
under ``.rejected/`` (:func:`rejected_path`, :meth:`ImageSink.keep`).
:func:`decode_and_verify` checks a ``b64_json`` already in memory the same way.
Every file is written through :class:`~pmock_batch.files.AtomicFile`: no
symbolic link below OUT is ever followed or replaced. Thread hops are few and
large (``benchmarks/aiofiles_hops.py``): ~1 MB writes, one commit hop.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pybase64
from PIL import Image, UnidentifiedImageError

from .b64stream import B64Decoder, B64JsonScanner
from .errors import InvalidResponseError, ResponseTooLargeError
from .files import AtomicFile, write_atomic
from .framing import END_MARKERS, FrameWalker, sniff
from .models import FileRecord

__all__ = [
    "EXTENSIONS",
    "MAX_IMAGE_BYTES",
    "REJECTED_DIR",
    "ImageInfo",
    "ImageSink",
    "check_frame",
    "decode_and_verify",
    "file_name",
    "image_warnings",
    "read_header",
    "rejected_path",
    "webp_size",
]

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
REJECTED_DIR = ".rejected"  # images that failed verification, kept as received; never output


def file_name(stem: str, fmt: str) -> str:
    """The name of an image file: its stem and its format's extension (``fox.jpg``).

    A run names a file by the format the server sent; a ``--dry-run`` plan,
    before anything is sent, by the format asked for.
    """
    return f"{stem}.{EXTENSIONS[fmt]}"


_TRUNCATED = {
    "png": "the PNG image is truncated (no IEND chunk)",
    "jpeg": "the JPEG image is truncated (no end-of-image marker)",
    "webp": "the WebP image is truncated",
}
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
_HEAD = 64 * 1024  # bytes kept from the start of a streamed image, for its header
_HEAD_MORE = 1 << 20  # re-read this much from disk when a header is larger than _HEAD
_FLUSH = 1 << 20  # streamed bytes are written to disk in writes of about this size
MAX_IMAGE_BYTES = 512 * 1024 * 1024  # a streamed image larger than this is refused


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What was checked about an image: its real format, dimensions, hash and size."""

    format: str  # png, jpeg or webp: what the bytes are, not what was asked for
    width: int
    height: int
    sha256: str
    bytes: int
    trailing: int = 0  # bytes after the image's end marker, kept in the file as received

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    def record(self, path: str) -> FileRecord:
        """The manifest's record of this image, saved at ``path`` (relative to OUT)."""
        return FileRecord(
            path=path,
            sha256=self.sha256,
            bytes=self.bytes,
            format=self.format,
            width=self.width,
            height=self.height,
        )


def check_frame(frame: FrameWalker) -> str:
    """The format of a walked image, if it is whole. Raises :class:`InvalidResponseError`."""
    frame.finish()
    fmt = frame.format
    if fmt is None:
        raise InvalidResponseError("the image data is not a PNG, JPEG or WebP image")
    if frame.error is not None:
        raise InvalidResponseError(frame.error)
    if frame.end is None:
        raise InvalidResponseError(_TRUNCATED[fmt])
    return fmt


def read_header(fmt: str, head: bytes) -> tuple[int, int]:
    """Width and height from an image's first bytes. Raises :class:`InvalidResponseError`."""
    if fmt == "webp":  # Pillow's WebP decoder wants the whole file; the header is enough
        dims = webp_size(head)
        if dims is None:
            raise InvalidResponseError("the webp image header is unreadable")
        return dims
    try:
        with Image.open(io.BytesIO(head)) as img:  # reads the header only
            width, height = img.size
            actual = _PIL_FORMATS.get(img.format or "")
    except Image.DecompressionBombError as exc:  # a header that claims enormous dimensions
        raise InvalidResponseError(
            f"the {fmt} image is refused as a decompression bomb: {exc}"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidResponseError(f"the {fmt} image header is unreadable: {exc}") from exc
    if actual != fmt or width <= 0 or height <= 0:
        raise InvalidResponseError(f"the {fmt} image header is inconsistent")
    return width, height


def image_warnings(info: ImageInfo, *, size: str | None) -> list[str]:
    """What is odd about a good image: bytes after its end, or dimensions not as asked.

    ``size`` is the request's ``WxH`` (``auto`` or None: any dimensions will do).
    """
    warnings: list[str] = []
    if info.trailing:
        warnings.append(
            f"{info.trailing:,} byte{'s' if info.trailing != 1 else ''} after "
            f"{END_MARKERS[info.format]}; "
            "decoders ignore them and the file is kept as received"
        )
    if size and size != "auto":
        asked = size.lower().partition("x")
        got = f"{info.width}x{info.height}"
        if (asked[0], asked[2]) != (str(info.width), str(info.height)):
            warnings.append(f"asked for size {size} but the image is {got}")
    return warnings


def webp_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a WebP header (VP8, VP8L or VP8X), or None."""
    if len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
    elif chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(head[26:28], "little") & 0x3FFF
        height = int.from_bytes(head[28:30], "little") & 0x3FFF
    elif chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
    else:
        return None
    return (width, height) if width > 0 and height > 0 else None


def decode_and_verify(b64: str) -> bytes:
    """Decode strict base64 and check it is a whole image; return the bytes.

    For a ``b64_json`` the streaming scanner left whole (an unusual body). The
    sink checks the bytes again as it takes them. Raises
    :class:`InvalidResponseError`. Meant to run in a worker thread.
    """
    try:
        data = pybase64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidResponseError(f"b64_json is not valid base64: {exc}") from exc
    frame = FrameWalker()
    frame.feed(data)
    read_header(check_frame(frame), data)
    return data


def rejected_path(out_dir: Path, stem: str, attempt: int) -> str:
    """Where to keep attempt ``attempt``'s rejected bytes: ``.rejected/<stem>.<attempt>.bin``.

    A name an earlier run already used (or anything else there, a link
    included) gets ``-2``, ``-3``... so nothing kept is ever overwritten.
    Relative to ``out_dir``, with forward slashes.
    """
    base = f"{REJECTED_DIR}/{stem}.{attempt}"
    name, more = f"{base}.bin", 2
    while os.path.lexists(out_dir / name):
        name, more = f"{base}-{more}.bin", more + 1
    return name


def _create(out_dir: Path, relative: str, data: list[bytes]) -> AtomicFile:
    tmp = AtomicFile(out_dir, relative)  # in the folder of the image-to-be
    try:
        _append(tmp, data)
    except BaseException:
        tmp.discard()
        raise
    return tmp


def _append(tmp: AtomicFile, data: list[bytes]) -> None:
    for piece in data:
        tmp.write(piece)


def _finish(tmp: AtomicFile | None, out_dir: Path, data: list[bytes], relative: str) -> Path:
    """Write the last bytes, fsync, close and rename into place. Runs in a worker thread.

    On failure the temporary file is removed here: the sink has handed it over.
    """
    if tmp is None:  # under 1 MB: never written yet
        return write_atomic(out_dir, relative, data)
    try:
        _append(tmp, data)
        return tmp.commit(relative)
    except BaseException:
        tmp.discard()
        raise


class ImageSink:
    """Receives one image as it streams in and writes it to a temporary file.

    The client feeds it the JSON body chunk by chunk (:meth:`feed_json`): the
    ``b64_json`` value is decoded as it arrives and written in ~1 MB writes,
    hashed on the way, so neither the base64 text nor the image is ever held
    whole. :meth:`feed_raw` takes image bytes directly (URL downloads). Then
    :meth:`verify` checks the image from its head and the walk of its
    structure, :meth:`commit` renames it into place (:meth:`keep` into
    ``.rejected/``); :meth:`discard` removes it.
    """

    def __init__(self, out_dir: Path, stem: str, *, top: bool = False) -> None:
        self.out_dir = out_dir
        self.stem = stem
        self.size = 0
        # top: the JSON is a streamed event's, with its own "b64_json" (see events.py)
        self._scanner = B64JsonScanner(top=top)
        self._decoder = B64Decoder()
        self._sha = hashlib.sha256()
        self._head = bytearray()
        self._frame = FrameWalker()  # finds the image's end as the bytes pass
        self._answered = False
        # Decoded pieces not written yet: a list, not one growing buffer, so that no
        # byte is copied on its way to the file.
        self._buf: list[bytes] = []
        self._buffered = 0
        self._tmp: AtomicFile | None = None  # written only from worker threads

    @property
    def streamed(self) -> bool:
        """The JSON body held a ``b64_json`` string, which went to the file."""
        return self._scanner.found

    def expect_event(self) -> None:
        """Take an event's JSON (``{"type": ..., "b64_json": ...}``) instead of a body's."""
        self._scanner = B64JsonScanner(top=True)

    @property
    def held(self) -> int:
        """Bytes of the JSON body held in memory: all of it but the ``b64_json`` value."""
        return len(self._scanner.remainder)

    @property
    def answered(self) -> bool:
        """Some of a 2xx answer's body arrived: the server did (and billed) the work."""
        return self._answered

    async def feed_json(self, chunk: bytes) -> None:
        self._answered = True
        for text in self._scanner.feed(chunk):
            for piece in self._decoder.pieces(text):
                await self._take(piece)

    async def end_json(self) -> bytes:
        """The body has ended: flush the decoder; return the JSON without the image."""
        self._answered = True
        self._scanner.close()
        if self._scanner.found:
            await self._take(self._decoder.finish())
        return bytes(self._scanner.remainder)

    async def feed_raw(self, data: bytes) -> None:
        await self._take(data)

    async def _take(self, data: bytes) -> None:
        if not data:
            return
        if self.size + len(data) > MAX_IMAGE_BYTES:
            raise ResponseTooLargeError(
                f"the image is larger than {MAX_IMAGE_BYTES:,} bytes; refused"
            )
        self._sha.update(data)
        if len(self._head) < _HEAD:
            self._head += data[: _HEAD - len(self._head)]
        self._frame.feed(data)
        self.size += len(data)
        self._buf.append(bytes(data))  # a no-op for bytes; a caller's bytearray is copied
        self._buffered += len(data)
        if self._buffered >= _FLUSH:
            await self._flush()

    async def _flush(self) -> None:
        """Write the buffered bytes: one thread hop, which also creates the file the first time."""
        buf, self._buf, self._buffered = self._buf, [], 0  # hand it over; no copy
        if self._tmp is None:
            self._tmp = await asyncio.to_thread(_create, self.out_dir, self._name(), buf)
        elif buf:
            await asyncio.to_thread(_append, self._tmp, buf)

    def _name(self) -> str:
        """The image's likely name, from its first bytes, before it is verified (for messages)."""
        fmt = sniff(bytes(self._head))
        return f"{self.stem}.{EXTENSIONS[fmt]}" if fmt is not None else self.stem

    async def verify(self) -> ImageInfo:
        """Check the received bytes are a whole PNG, JPEG or WebP image."""
        if not self.size:
            raise InvalidResponseError("the server's answer holds an empty image")
        head = bytes(self._head)
        fmt = check_frame(self._frame)
        try:
            width, height = read_header(fmt, head)
        except InvalidResponseError:
            if self.size <= _HEAD:
                raise
            head = await self._read_head(_HEAD_MORE)  # a JPEG with large metadata up front
            width, height = read_header(fmt, head)
        return ImageInfo(
            fmt, width, height, self._sha.hexdigest(), self.size, trailing=self._frame.trailing
        )

    async def _read_head(self, count: int) -> bytes:
        await self._flush()
        assert self._tmp is not None
        return await asyncio.to_thread(self._tmp.read_start, count)

    async def commit(self, out_dir: Path, relative: str) -> Path:
        """Write what is left, fsync, close and rename to ``out_dir/relative``: one thread hop.

        An image under 1 MB was never written yet: then this one hop also
        creates the file. Few, large hops: see ``benchmarks/aiofiles_hops.py``.
        ``out_dir`` must be the sink's own. Raises
        :class:`~pmock_batch.errors.OutputPathError` for a link (or anything but
        a regular file) at ``relative`` or on the way to it: nothing is renamed.
        """
        if out_dir != self.out_dir:
            raise ValueError(f"the sink writes under {self.out_dir}, not {out_dir}")
        buf, self._buf, self._buffered = self._buf, [], 0
        tmp, self._tmp = self._tmp, None  # handed over: _finish removes it if it fails
        return await asyncio.to_thread(_finish, tmp, self.out_dir, buf, relative)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the bytes received so far."""
        return self._sha.hexdigest()

    def restart(self) -> None:
        """Drop the image bytes received so far, to receive them again (a retried download)."""
        self.discard()
        self.size = 0
        self._sha = hashlib.sha256()
        self._head = bytearray()
        self._buf, self._buffered = [], 0
        self._frame = FrameWalker()

    async def keep(self, out_dir: Path, relative: str) -> Path:
        """Move what was received, as it is, to ``out_dir/relative`` (a rejected image).

        Like :meth:`commit`, but the target may be in another folder (``.rejected/``).
        """
        return await self.commit(out_dir, relative)

    def discard(self) -> None:
        """Close and remove the temporary file, if any. Safe to call more than once.

        Synchronous on purpose: it runs on error and cancellation paths, where
        an ``await`` could be interrupted and leave the file open.
        """
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.discard()
        self._scanner.remainder = bytearray()  # the JSON held (up to the cap) goes now, too
