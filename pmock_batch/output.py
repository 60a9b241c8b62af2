"""The writer: decode base64, verify the image, write it atomically.

Decoding, verifying and hashing happen together in one worker thread
(:func:`decode_and_verify`), so a large image never blocks the event loop.
Writing uses aiofiles with few, large calls: one open, one write, one fsync,
one close and one rename per image.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiofiles.os
from PIL import Image, UnidentifiedImageError

from .errors import InvalidResponseError, OutputPathError

__all__ = [
    "EXTENSIONS",
    "TMP_SUFFIX",
    "VerifiedImage",
    "decode_and_verify",
    "remove_stray_temps",
    "safe_path",
    "sniff_format",
    "verify_image",
    "write_atomic",
]

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
TMP_SUFFIX = ".pmock-tmp"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xae\x42\x60\x82"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    """Decoded image bytes that were checked to be a whole PNG, JPEG or WebP."""

    data: bytes
    format: str  # png, jpeg or webp: what the bytes are, not what was asked for
    width: int
    height: int
    sha256: str

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def sniff_format(data: bytes) -> str | None:
    """The raster format named by the magic bytes, or None."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def verify_image(data: bytes) -> VerifiedImage:
    """Check magic bytes, header and ending; record format and dimensions.

    Raises :class:`InvalidResponseError` for bytes that are not a whole raster image.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidResponseError("the image data is not a PNG, JPEG or WebP image")
    if fmt == "png" and not data.rstrip(b"\x00").endswith(_PNG_END):
        raise InvalidResponseError("the PNG image is truncated (no IEND chunk)")
    if fmt == "jpeg" and b"\xff\xd9" not in data[-64:]:
        raise InvalidResponseError("the JPEG image is truncated (no end-of-image marker)")
    if fmt == "webp" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise InvalidResponseError("the WebP image is truncated")
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            actual = _PIL_FORMATS.get(img.format or "")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidResponseError(f"the {fmt} image header is unreadable: {exc}") from exc
    if actual != fmt or width <= 0 or height <= 0:
        raise InvalidResponseError(f"the {fmt} image header is inconsistent")
    return VerifiedImage(
        data=data, format=fmt, width=width, height=height, sha256=hashlib.sha256(data).hexdigest()
    )


def decode_and_verify(b64: str) -> VerifiedImage:
    """Decode strict base64 and verify the image. Meant to run in a worker thread."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidResponseError(f"b64_json is not valid base64: {exc}") from exc
    return verify_image(data)


def safe_path(out_dir: Path, relative: str) -> Path:
    """Join ``relative`` under ``out_dir``; refuse anything that would land outside it."""
    root = out_dir.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or target == root:
        raise OutputPathError(f"refusing to write {relative!r}: it is outside {out_dir}")
    return target


async def write_atomic(out_dir: Path, relative: str, data: bytes) -> Path:
    """Write ``data`` to ``out_dir/relative`` via a temporary file and a rename.

    A crash at any point leaves either the old file or the new one under the
    final name, never a truncated one. Temporary files are hidden dot-files
    ending in ``.pmock-tmp`` in the same directory, so the rename is atomic.
    """
    target = safe_path(out_dir, relative)
    await aiofiles.os.makedirs(target.parent, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        async with aiofiles.open(tmp, "wb") as fh:
            await fh.write(data)
            await fh.flush()
            await aiofiles.os.wrap(os.fsync)(fh.fileno())
        await aiofiles.os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            await aiofiles.os.remove(tmp)
        raise
    return target


def remove_stray_temps(out_dir: Path) -> int:
    """Delete temporary files a crashed run left in ``out_dir``; return how many.

    Call it only while holding the run lock, so no live run owns them.
    """
    if not out_dir.is_dir():
        return 0
    removed = 0
    for path in out_dir.rglob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    for path in out_dir.glob(".*.compact.tmp"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed
