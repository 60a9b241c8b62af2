"""Real, deterministic images for the mock: one picture per prompt, quick to make.

The picture is a flat background with a few shapes whose colours, places and
sizes come from the SHA-256 of the prompt, and the prompt itself written on a
band at the bottom. The same prompt always gives the same bytes; different
prompts give visibly different pictures. Drawing uses a handful of primitives
and PNGs are written with a fast compression level, so even 3840x2160 takes a
fraction of a second; :class:`ImageCache` keeps recent results and renders
misses in a worker thread.

With a payload size the bottom rows are replaced by incompressible noise until
the encoded image is about that many bytes; when even all-noise pixels are
not enough, noise goes into a chunk decoders skip (a private PNG chunk, JPEG
APP15 segments, WebP XMP). Clients see realistic sizes and valid images.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import math
import random
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .lru import BytesLRU

__all__ = [
    "AUTO_SIZE",
    "CONTENT_TYPES",
    "DEFAULT_QUALITY",
    "ImageCache",
    "ImageSpec",
    "bomb_png",
    "encode_image",
    "parse_size",
    "render_image",
]

AUTO_SIZE = (1024, 1024)  # what ``size: auto`` (or no size) means
DEFAULT_QUALITY = 90  # JPEG/WebP quality when output_compression is not given
PNG_COMPRESS_LEVEL = 1  # fast; the pictures are flat colour and compress well anyway
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
CACHE_MAX_ENTRIES = 128
CACHE_MAX_BYTES = 512 * 1024 * 1024
PAYLOAD_TOLERANCE = 0.05  # a noise-padded image may miss its target by this fraction
PAD_CHUNK = b"pmPd"  # a private, ancillary PNG chunk that decoders skip
JPEG_SEGMENT = 65_533  # the most data one JPEG marker segment can hold
NOISE_SEED = 0x5EED

_font_lock = threading.Lock()  # FreeType faces are not safe to share between threads
_noise_lock = threading.Lock()
_noise = b""


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """Everything that decides an image's bytes; also its cache key."""

    prompt: str
    width: int
    height: int
    format: str = "png"  # png, jpeg or webp
    transparent: bool = False
    quality: int | None = None  # JPEG/WebP quality (output_compression)
    payload_bytes: int | None = None  # pad with noise to about this size

    @property
    def size(self) -> str:
        """The size as ``WxH``."""
        return f"{self.width}x{self.height}"

    @property
    def mode(self) -> str:
        """The Pillow mode: RGBA for a transparent PNG or WebP, else RGB."""
        return "RGBA" if self.transparent and self.format in ("png", "webp") else "RGB"


def parse_size(size: str | None) -> tuple[int, int]:
    """``"1536x1024"`` -> ``(1536, 1024)``; ``None`` and ``"auto"`` -> 1024x1024."""
    if size is None or size == "auto":
        return AUTO_SIZE
    width, _, height = size.partition("x")
    return int(width), int(height)


def _digest_bytes(prompt: str) -> Iterator[int]:
    """An endless, deterministic stream of bytes derived from the prompt."""
    seed = hashlib.sha256(prompt.encode("utf-8")).digest()
    block = seed
    counter = 0
    while True:
        yield from block
        counter += 1
        block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_picture(spec: ImageSpec) -> Image.Image:
    """The picture for ``spec.prompt`` at the spec's size and mode."""
    w, h = spec.width, spec.height
    stream = _digest_bytes(spec.prompt)

    def colour(alpha: int = 255) -> tuple[int, int, int, int]:
        return next(stream), next(stream), next(stream), alpha

    background = colour(0 if spec.mode == "RGBA" else 255)
    image = Image.new(spec.mode, (w, h), background)
    draw = ImageDraw.Draw(image)
    short = min(w, h)
    for _ in range(3 + next(stream) % 4):
        kind = next(stream) % 3
        cx, cy = next(stream) * w // 255, next(stream) * h // 255
        r = short * (8 + next(stream) % 24) // 100
        fill = colour()
        if kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r * 2 // 3, cx + r, cy + r * 2 // 3), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    _draw_caption(draw, spec.prompt, w, h)
    return image


def _draw_caption(draw: ImageDraw.ImageDraw, prompt: str, w: int, h: int) -> None:
    size = max(12, h // 24)
    band = size * 2
    draw.rectangle((0, h - band, w, h), fill=(0, 0, 0, 255))
    fits = max(4, int(w / (size * 0.62)))
    text = prompt if len(prompt) <= fits else prompt[: fits - 3] + "..."
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    with _font_lock:
        draw.text(
            (size // 2, h - band + size // 2), text, fill=(255, 255, 255, 255), font=_font(size)
        )


def _noise_bytes(count: int) -> bytes:
    """``count`` incompressible, deterministic bytes (one shared buffer, grown on demand)."""
    global _noise
    with _noise_lock:
        if len(_noise) < count:
            _noise = random.Random(NOISE_SEED).randbytes(max(count, 2 * len(_noise)))
        return _noise[:count]


def _encode(image: Image.Image, spec: ImageSpec, *, pad: int = 0) -> bytes:
    """Encode ``image``; ``pad`` adds that many noise bytes in a chunk decoders skip."""
    buf = io.BytesIO()
    filler = _noise_bytes(pad) if pad > 0 else b""
    if spec.format == "png":
        info = PngImagePlugin.PngInfo()
        if filler:
            info.add(PAD_CHUNK, filler, after_idat=True)
        image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info)
    elif spec.format == "jpeg":
        image.save(buf, "JPEG", quality=_quality(spec), extra=_jpeg_segments(filler))
    elif spec.format == "webp":
        image.save(buf, "WEBP", quality=_quality(spec), method=0, xmp=filler)
    else:
        raise ValueError(f"unsupported image format {spec.format!r}")
    return buf.getvalue()


encode_image = _encode  # for an edit's answer (mock/edits.py)


def _jpeg_segments(filler: bytes) -> bytes:
    """``filler`` split into APP15 marker segments (at most 65,533 data bytes each)."""
    out = bytearray()
    for start in range(0, len(filler), JPEG_SEGMENT):
        part = filler[start : start + JPEG_SEGMENT]
        out += b"\xff\xef" + (len(part) + 2).to_bytes(2, "big") + part
    return bytes(out)


def _quality(spec: ImageSpec) -> int:
    return DEFAULT_QUALITY if spec.quality is None else spec.quality


def _with_noise(image: Image.Image, rows: int) -> Image.Image:
    """A copy of ``image`` whose bottom ``rows`` rows are noise."""
    w, h = image.size
    noisy = image.copy()
    band = Image.frombytes(image.mode, (w, rows), _noise_bytes(w * rows * len(image.mode)))
    noisy.paste(band, (0, h - rows))
    return noisy


def _encode_to_size(image: Image.Image, spec: ImageSpec, target: int) -> bytes:
    """Encode with enough noise rows (and, past all rows, padding) for about ``target`` bytes."""
    base = _encode(image, spec)
    if len(base) >= target:
        return base
    w, h = image.size
    rows = min(h, math.ceil((target - len(base)) / (w * len(image.mode))))
    for _ in range(3):
        noisy = _with_noise(image, rows)
        data = _encode(noisy, spec)
        if abs(len(data) - target) <= PAYLOAD_TOLERANCE * target or (
            rows == h and len(data) < target
        ):
            break
        per_row = max(1.0, (len(data) - len(base)) / rows)
        rows = max(1, min(h, math.ceil((target - len(base)) / per_row)))
    if len(data) < target * (1 - PAYLOAD_TOLERANCE):
        data = _encode(noisy, spec, pad=target - len(data))
    return data


def render_image(spec: ImageSpec) -> bytes:
    """The encoded image for ``spec``: CPU-bound, so call it from a worker thread."""
    image = draw_picture(spec)
    if spec.payload_bytes:
        return _encode_to_size(image, spec, spec.payload_bytes)
    return _encode(image, spec)


class ImageCache:
    """Recently rendered images; misses render once in a thread, even when asked for twice."""

    def __init__(
        self, *, max_entries: int = CACHE_MAX_ENTRIES, max_bytes: int = CACHE_MAX_BYTES
    ) -> None:
        self._store: BytesLRU[ImageSpec] = BytesLRU(max_entries=max_entries, max_bytes=max_bytes)
        self._pending: dict[ImageSpec, asyncio.Task[bytes]] = {}

    def __len__(self) -> int:
        return len(self._store)

    async def get(self, spec: ImageSpec, *, keep: bool = True) -> bytes:
        """The image for ``spec``, from the cache or freshly rendered off the event loop.

        ``keep=False`` renders a miss without keeping it: a batch's output file
        streams thousands of images once each, and must not fill the cache with them.
        """
        cached = self._store.get(spec)
        if cached is not None:
            return cached
        task = self._pending.get(spec)
        if task is None and not keep:
            return await asyncio.to_thread(render_image, spec)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(render_image, spec))
            self._pending[spec] = task
            task.add_done_callback(functools.partial(self._settle, spec))
        return await asyncio.shield(task)

    def _settle(self, spec: ImageSpec, task: asyncio.Task[bytes]) -> None:
        self._pending.pop(spec, None)
        if not task.cancelled() and task.exception() is None:
            self._store.put(spec, task.result())

    async def aclose(self) -> None:
        """Wait for renders still running, so none outlives the server."""
        if self._pending:
            await asyncio.gather(*self._pending.values(), return_exceptions=True)


BOMB_PX = 40_000  # 1.6 billion pixels: far over Pillow's decompression-bomb limit


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@functools.cache
def bomb_png(side: int = BOMB_PX) -> bytes:
    """A small, whole, well-formed PNG whose header claims ``side`` x ``side`` pixels.

    Its chunks and CRCs are all sound, but its IDAT holds a stub, not the
    pixels: opening it is what a decompression bomb asks for, and Pillow
    refuses (``DecompressionBombError``) from the header alone.
    """
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )
