"""Thumbnails for the report: small JPEGs under ``OUT/.thumbs/``, made on request.

Only ``pmock-batch report --thumbnails`` decodes images; a run's own report
shows the images themselves, lazily.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from PIL import Image

from .cards import quote_part, relative_url
from .files import AtomicFile, contained_file
from .models import FileRecord

__all__ = ["THUMBS_DIR", "THUMB_PX", "THUMB_QUALITY", "thumbnail"]

THUMBS_DIR = ".thumbs"
THUMB_PX = 512  # longest side of a thumbnail: sharp on a 2x screen at card size
THUMB_QUALITY = 82


def _flatten(img: Image.Image) -> Image.Image:
    """An RGB copy of ``img``, transparent areas on white (JPEG has no alpha)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def thumbnail(out_dir: Path, file: FileRecord) -> str | None:
    """Make (or reuse) a JPEG thumbnail of ``file``; its relative URL, or None if impossible.

    Only a regular file inside OUT reached through no link is read; the
    thumbnail is written through :class:`~pmock_batch.files.AtomicFile`, so a
    link at ``.thumbs`` or below raises :class:`~pmock_batch.errors.OutputPathError`.
    """
    if relative_url(file.path) is None:
        return None
    parts = PurePosixPath(file.path).parts
    thumb_parts = (THUMBS_DIR, *parts[:-1], parts[-1] + ".jpg")
    url = "/".join(quote_part(p) for p in thumb_parts)
    source = contained_file(out_dir, file.path)
    if source is None:
        return None
    try:
        source_mtime = source.stat().st_mtime_ns
        done = contained_file(out_dir, "/".join(thumb_parts))
        if done is not None and done.stat().st_mtime_ns >= source_mtime:
            return url
        with Image.open(source) as img:
            img.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale
            img.thumbnail((THUMB_PX, THUMB_PX))
            flat = _flatten(img)
        with AtomicFile(out_dir, "/".join(thumb_parts)) as tmp:
            flat.save(tmp.file, "JPEG", quality=THUMB_QUALITY, optimize=True)
            tmp.commit()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return url
