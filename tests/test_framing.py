"""The frame walkers: where an image ends, fed any split of its bytes. Pure, no I/O."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from pmock_batch.framing import FrameWalker, JpegWalker, PngWalker

JUNK = b"pmock trailing bytes; " * 3


@functools.cache
def image(fmt: str, **save: object) -> bytes:
    """A small but not trivial image: noise, so IDAT and entropy data hold every byte value."""
    picture = Image.effect_noise((64, 48), 80).convert("RGB")
    buf = io.BytesIO()
    picture.save(buf, fmt, **save)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value)


def walk(data: bytes, cuts: Iterable[int] = ()) -> FrameWalker:
    """Feed ``data`` split at ``cuts``."""
    walker = FrameWalker()
    start = 0
    for cut in sorted(set(cuts)):
        walker.feed(data[start:cut])
        start = cut
    walker.feed(data[start:])
    walker.finish()
    return walker


FORMATS = {
    "png": ("PNG", {}),
    "jpeg": ("JPEG", {}),
    "progressive-jpeg": ("JPEG", {"progressive": True}),
    "restart-jpeg": ("JPEG", {"restart_marker_blocks": 1}),
    "webp": ("WEBP", {}),
}


def sample(name: str) -> bytes:
    fmt, save = FORMATS[name]
    return image(fmt, **save)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(FORMATS)),
    trailing=st.sampled_from([b"", b"\x00", b"\x00" * 7, JUNK, b"\xff\xd9IEND" * 3]),
    cuts=st.lists(st.integers(min_value=0, max_value=40_000), max_size=12),
)
def test_the_end_is_found_whatever_the_split(name: str, trailing: bytes, cuts: list[int]) -> None:
    data = sample(name)
    walker = walk(data + trailing, [c % (len(data) + len(trailing) + 1) for c in cuts])
    assert walker.format == ("webp" if name == "webp" else "png" if name == "png" else "jpeg")
    assert walker.error is None
    assert walker.end == len(data)
    assert walker.trailing == len(trailing)
    assert walker.size == len(data) + len(trailing)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(FORMATS)),
    cut=st.integers(min_value=0),
    splits=st.lists(st.integers(min_value=0, max_value=40_000), max_size=8),
)
def test_an_image_cut_before_its_end_has_no_end(name: str, cut: int, splits: list[int]) -> None:
    data = sample(name)
    short = data[: cut % len(data)]  # anything from nothing to all but the last byte
    walker = walk(short, [s % (len(short) + 1) for s in splits])
    assert walker.end is None
    assert walker.trailing == 0


def test_every_byte_fed_alone() -> None:
    for name in FORMATS:
        data = sample(name) + JUNK
        walker = FrameWalker()
        for i in range(len(data)):
            walker.feed(data[i : i + 1])
        walker.finish()
        expected = (len(data) - len(JUNK), len(JUNK), None)
        assert (walker.end, walker.trailing, walker.error) == expected


# --- PNG ---------------------------------------------------------------------------------


def minimal_png(*, ihdr_crc: int | None = None, iend_crc: int | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr, crc=ihdr_crc)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"", crc=iend_crc)
    )


def test_a_minimal_png_is_whole_and_pillow_agrees() -> None:
    data = minimal_png()
    assert walk(data).end == len(data)
    with Image.open(io.BytesIO(data + JUNK)) as img:  # bytes after IEND: decoders do not mind
        img.load()
        assert img.size == (1, 1)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (minimal_png(ihdr_crc=0), "the PNG image is corrupt (bad CRC in its IHDR chunk)"),
        (minimal_png(iend_crc=1), "the PNG image is corrupt (bad CRC in its IEND chunk)"),
        (
            b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"a\x00b") + minimal_png()[8:],
            "the PNG image is corrupt (its first chunk is tEXt, not IHDR)",
        ),
        (
            minimal_png()[:33] + b"\x80\x00\x00\x00IDAT" + bytes(100),
            "the PNG image is corrupt (a chunk length of 2,147,483,648 bytes)",
        ),
        (
            minimal_png()[:33] + b"\x00\x00\x00\x01ID\x00T" + bytes(100),
            "the PNG image is corrupt (an invalid chunk type b'ID\\x00T')",
        ),
        (
            b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", bytes(12)) + minimal_png()[33:],
            "the PNG image is corrupt (its IHDR chunk is 12 bytes long)",
        ),
        (
            minimal_png()[:33] + png_chunk(b"PLTE", bytes(771)) + minimal_png()[33:],
            "the PNG image is corrupt (its PLTE chunk is 771 bytes long)",
        ),
        (b"\x89PNG\r\n\x1a\x00" + minimal_png()[8:], "the data is not a PNG image (bad signature)"),
    ],
    ids=["ihdr-crc", "iend-crc", "first-not-ihdr", "length", "type", "ihdr-length", "plte", "sig"],
)
def test_png_structure_errors(data: bytes, error: str) -> None:
    walker = PngWalker()
    walker.feed(data + JUNK)
    assert walker.error == error
    assert walker.end is None
    assert walker.size == len(data) + len(JUNK)  # every byte is still counted


def test_png_crc_of_idat_and_ancillary_chunks_is_left_to_decoders() -> None:
    data = minimal_png()
    text = png_chunk(b"tEXt", b"k\x00v", crc=0)  # a wrong CRC in an ancillary chunk
    odd = data[:33] + text + data[33:]
    assert walk(odd).end == len(odd)
    assert walk(odd).error is None


def test_png_a_plte_chunk_is_checked() -> None:
    data = minimal_png()
    good = data[:33] + png_chunk(b"PLTE", bytes(6)) + data[33:]
    bad = data[:33] + png_chunk(b"PLTE", bytes(6), crc=7) + data[33:]
    assert walk(good).end == len(good)
    assert walk(bad).error == "the PNG image is corrupt (bad CRC in its PLTE chunk)"


def test_png_large_chunks_are_skipped_not_buffered() -> None:
    info = PngImagePlugin.PngInfo()
    info.add(b"pmPd", bytes(5_000_000))  # a private chunk of 5 MB
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    walker = PngWalker()
    peak = 0
    for i in range(0, len(data), 65_536):
        walker.feed(data[i : i + 65_536])
        peak = max(peak, len(walker._buf))  # what the walker holds between feeds
    assert walker.end == len(data)
    assert peak <= 768 + 4


# --- JPEG --------------------------------------------------------------------------------


def test_jpeg_an_end_marker_inside_a_thumbnail_is_not_the_end() -> None:
    exif = b"Exif\x00\x00" + b"\xff\xd8" + bytes(50) + b"\xff\xd9" + bytes(20)  # an EOI in APP1
    buf = io.BytesIO()
    Image.effect_noise((64, 48), 80).convert("RGB").save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    assert walk(data).end == len(data)
    cut = data.index(b"\xff\xda") + 40  # cut in the scan, long after the thumbnail's EOI
    assert walk(data[:cut]).end is None


def test_jpeg_stray_bytes_between_segments_are_skipped_as_decoders_do() -> None:
    data = sample("jpeg")
    sos = data.index(b"\xff\xda")
    odd = data[:sos] + b"\x00\x17" + data[sos:]
    walker = JpegWalker()
    walker.feed(odd)
    assert (walker.end, walker.stray, walker.error) == (len(odd), 2, None)


def test_jpeg_a_bad_segment_length_is_an_error() -> None:
    walker = JpegWalker()
    walker.feed(b"\xff\xd8\xff\xe0\x00\x01" + bytes(10) + b"\xff\xd9")
    assert walker.error == "the JPEG image is corrupt (a segment length of 1)"
    assert walker.end is None


# --- WebP and the rest -------------------------------------------------------------------


def test_webp_ends_where_the_riff_size_says() -> None:
    data = sample("webp")
    assert walk(data + bytes(3)).trailing == 3
    assert walk(data[:-1]).end is None


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"GIF89a" + bytes(100), b"\x89PN"])
def test_other_data_has_no_format(data: bytes) -> None:
    walker = walk(data)
    assert walker.format is None
    assert walker.end is None
    assert walker.size == len(data)
