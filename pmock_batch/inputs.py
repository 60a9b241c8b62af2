"""An edit job's input files: safe paths, real images within the limits, hashed once.

A job line with ``"image"`` is an edit. :class:`InputFiles` turns its
``image`` (a path or a list of up to :data:`MAX_IMAGES` paths) and optional
``mask`` into :class:`EditInputs`, or a list of ``(field, problem)`` naming
the file. A path is relative to the job file's folder; it must stay inside
that folder's tree or under an extra allowed root (``--inputs DIR``), after
every link is followed, and be a regular file. Each image is a PNG, JPEG or
WebP under :data:`MAX_IMAGE_BYTES`; the mask a PNG with an alpha channel
under :data:`MAX_MASK_BYTES`, the size of the first image.

Each distinct file is looked at and hashed (SHA-256, streamed) once per
:class:`InputFiles`: the result is kept by resolved path, size and
modification time, so 1,000 jobs that share a reference image cost one read,
and a file changed between runs is hashed again.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from .errors import InputFileError
from .files import open_regular

__all__ = [
    "CONTENT_TYPES",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "MAX_MASK_BYTES",
    "EditInputs",
    "InputFile",
    "InputFiles",
]

MAX_IMAGES = 16
MAX_IMAGE_BYTES = 50 * 1024 * 1024  # per input image
MAX_MASK_BYTES = 4 * 1024 * 1024
# Pillow's format name -> the content type a file part carries.
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_HASH_CHUNK = 1 << 20
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

Problems = list[tuple[str, str]]


def _stamp(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input file, checked: where it is, what it is, its digest."""

    path: Path  # resolved: no links, absolute
    name: str  # as the job line wrote it
    content_type: str  # image/png, image/jpeg or image/webp
    size: int
    width: int
    height: int
    sha256: str
    alpha: bool
    stamp: tuple[int, int, int, int] = (0, 0, 0, 0)  # (device, inode, size, mtime in ns)

    @property
    def filename(self) -> str:
        """The file part's name: the file's own name."""
        return self.path.name

    def open(self) -> BinaryIO:
        """The file, opened for sending: no link at its last step, and the very file that
        was checked and hashed (same inode, size and time), or :class:`InputFileError`."""
        try:
            handle = open_regular(self.path)
        except OSError as exc:
            raise InputFileError(f"{self.name}: cannot be opened ({exc.strerror or exc})") from exc
        info = os.fstat(handle.fileno())
        if _stamp(info) != self.stamp:
            handle.close()
            raise InputFileError(
                f"{self.name}: changed since it was checked; run again to check and hash it anew"
            )
        return handle


@dataclass(frozen=True, slots=True)
class EditInputs:
    """An edit's images (1 to 16) and its optional mask."""

    images: tuple[InputFile, ...]
    mask: InputFile | None = None

    def canonical(self) -> dict[str, Any]:
        """What the fingerprint adds for an edit: the digests, in order."""
        out: dict[str, Any] = {"image_sha256": [f.sha256 for f in self.images]}
        if self.mask is not None:
            out["mask_sha256"] = self.mask.sha256
        return out

    def described(self) -> dict[str, Any]:
        """The input files as a record shows them: the names the line gave."""
        out: dict[str, Any] = {"image": [f.name for f in self.images]}
        if self.mask is not None:
            out["mask"] = self.mask.name
        return out


class InputFiles:
    """Checks and hashes input files, once each, relative to the job file's folder."""

    def __init__(self, base: Path, *, roots: Sequence[Path] = ()) -> None:
        self.base = Path(os.path.abspath(base))
        self.roots = tuple(Path(os.path.realpath(r)) for r in (base, *roots))
        self._seen: dict[tuple[str, int, int, int, int], InputFile | str] = {}
        self.hashed = 0  # files read and hashed, for tests and the curious

    def edit_inputs(self, image: Any, mask: Any) -> EditInputs | Problems:
        """The checked inputs of one line, or its problems (each names the file)."""
        names = [image] if isinstance(image, str) else image
        if not isinstance(names, list) or not names:
            return [("image", "expected a path or a list of paths")]
        if len(names) > MAX_IMAGES:
            return [("image", f"{len(names)} images; at most {MAX_IMAGES} are allowed")]
        problems: Problems = []
        images: list[InputFile] = []
        for index, name in enumerate(names):
            where = "image" if isinstance(image, str) else f"image[{index}]"
            if not isinstance(name, str) or not name:
                problems.append((where, "expected a non-empty path"))
                continue
            found = self._file(name, MAX_IMAGE_BYTES)
            if isinstance(found, str):
                problems.append((where, f"{name}: {found}"))
            else:
                images.append(found)
        checked_mask: InputFile | None = None
        if mask is not None:
            if not isinstance(mask, str) or not mask:
                return [*problems, ("mask", "expected a path")]
            found = self._file(mask, MAX_MASK_BYTES)
            if isinstance(found, str):
                problems.append(("mask", f"{mask}: {found}"))
            elif found.content_type != "image/png" or not found.alpha:
                problems.append(("mask", f"{mask}: must be a PNG with an alpha channel"))
            elif images and (found.width, found.height) != (images[0].width, images[0].height):
                first = images[0]
                problems.append(
                    (
                        "mask",
                        f"{mask}: is {found.width}x{found.height}, but the first image "
                        f"{first.name} is {first.width}x{first.height}; they must match",
                    )
                )
            else:
                checked_mask = found
        if problems:
            return problems
        return EditInputs(tuple(images), checked_mask)

    def _file(self, name: str, limit: int) -> InputFile | str:
        """The checked file ``name``, or why it is refused."""
        raw = Path(name)
        path = raw if raw.is_absolute() else self.base / raw
        try:
            real = Path(os.path.realpath(path, strict=True))
            info = os.stat(real)
        except FileNotFoundError:
            return "no such file"
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        except RuntimeError:  # a loop of links
            return "is a loop of links"
        except ValueError:  # a NUL byte
            return "is not a valid path"
        if not any(real.is_relative_to(root) for root in self.roots):
            allowed = " or ".join(str(r) for r in self.roots)
            return f"is outside the allowed folders ({allowed}); add one with --inputs DIR"
        if not stat.S_ISREG(info.st_mode):
            return "is not a regular file"
        if info.st_size > limit:
            return f"is {info.st_size:,} bytes; at most {limit:,} are allowed"
        key = (str(real), *_stamp(info))
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = self._read(real, _stamp(info))
        if isinstance(seen, str):
            return seen
        return replace(seen, name=name)

    def _read(self, path: Path, stamp: tuple[int, int, int, int]) -> InputFile | str:
        """Look at the header and hash the file, streaming it."""
        try:
            with open_regular(path) as fh:
                if _stamp(os.fstat(fh.fileno())) != stamp:  # replaced since it was looked at
                    return "changed while it was being checked; run again"
                try:
                    with Image.open(fh) as image:
                        fmt, (width, height) = image.format, image.size
                        alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
                except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
                    return "is not an image pmock-batch can read (PNG, JPEG or WebP)"
                if fmt not in CONTENT_TYPES:
                    return f"is {fmt}, not PNG, JPEG or WebP"
                fh.seek(0)
                digest = hashlib.file_digest(fh, "sha256")
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        self.hashed += 1
        return InputFile(
            path, "", CONTENT_TYPES[fmt], stamp[2], width, height, digest.hexdigest(), alpha, stamp
        )
