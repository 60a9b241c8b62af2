"""The writer: image verification on real bytes, the sink, warnings and rejected names."""

from __future__ import annotations

import base64
import hashlib
import io
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pmock_batch.errors import InvalidResponseError
from pmock_batch.images import (
    ImageInfo,
    ImageSink,
    decode_and_verify,
    image_warnings,
    rejected_path,
)

NOT_AN_IMAGE = "the image data is not a PNG, JPEG or WebP image"
TRUNCATED = {
    "png": "the PNG image is truncated (no IEND chunk)",
    "jpeg": "the JPEG image is truncated (no end-of-image marker)",
    "webp": "the WebP image is truncated",
}
PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}


def make_image(fmt: str, size: tuple[int, int] = (7, 5), mode: str = "RGB") -> bytes:
    color = (10, 120, 200, 128)[: len(mode)]
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, PIL_NAMES[fmt])
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- verification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size", "mode", "extension"),
    [
        ("png", (7, 5), "RGB", "png"),
        ("png", (1, 1), "RGBA", "png"),
        ("png", (300, 20), "L", "png"),
        ("jpeg", (7, 5), "RGB", "jpg"),
        ("jpeg", (64, 128), "L", "jpg"),
        ("webp", (7, 5), "RGB", "webp"),
        ("webp", (33, 17), "RGBA", "webp"),
    ],
)
async def test_the_sink_reads_format_and_size(
    tmp_path: Path, fmt: str, size: tuple[int, int], mode: str, extension: str
) -> None:
    data = make_image(fmt, size, mode)
    sink = ImageSink(tmp_path, "img")
    await sink.feed_raw(data)
    image = await sink.verify()
    sink.discard()
    assert image == ImageInfo(fmt, size[0], size[1], hashlib.sha256(data).hexdigest(), len(data))
    assert image.extension == extension
    assert decode_and_verify(b64(data)) == data


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize(
    "cut", [lambda n: n - 1, lambda n: n // 2, lambda n: 16], ids=["last-byte", "half", "header"]
)
def test_truncated_images_are_rejected(fmt: str, cut: Callable[[int], int]) -> None:
    data = make_image(fmt, (40, 30))
    with pytest.raises(InvalidResponseError) as caught:
        decode_and_verify(b64(data[: cut(len(data))]))
    assert str(caught.value) == TRUNCATED[fmt]


@pytest.mark.parametrize(
    "data",
    [
        random.Random(0).randbytes(512),
        b"",
        b"\x89PN",  # too short for the PNG magic
        b"RIFF\x10\x00\x00\x00WAVEfmt ",  # RIFF, but not WebP
        b"%PDF-1.7\n",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        make_image("gif"),
    ],
    ids=["random", "empty", "short", "wav", "pdf", "svg", "gif"],
)
def test_what_is_not_a_raster_image_is_rejected(data: bytes) -> None:
    with pytest.raises(InvalidResponseError) as caught:
        decode_and_verify(b64(data))
    assert str(caught.value) == NOT_AN_IMAGE


def test_an_unreadable_header_is_rejected() -> None:
    broken = b"\xff\xd8\xff\x00" + bytes(40) + b"\xff\xd9"  # SOI and EOI, no header between
    with pytest.raises(InvalidResponseError) as caught:
        decode_and_verify(b64(broken))
    assert str(caught.value).startswith("the jpeg image header is unreadable: ")
    assert isinstance(caught.value.__cause__, Exception)


def test_a_png_whose_first_chunk_is_not_ihdr_is_rejected() -> None:
    png = make_image("png")
    broken = png[:8] + b"\x00\x00\x00\x0dJUNK" + png[16:]  # IHDR renamed
    with pytest.raises(InvalidResponseError) as caught:
        decode_and_verify(b64(broken))
    assert str(caught.value) == "the PNG image is corrupt (its first chunk is JUNK, not IHDR)"


# --- decode_and_verify --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_decode_and_verify(fmt: str) -> None:
    data = make_image(fmt, (9, 4))
    assert decode_and_verify(b64(data)) == data


@pytest.mark.parametrize(
    ("b64", "message"),
    [
        ("!!!!", "b64_json is not valid base64: Non-base64 digit found"),
        ("abc", "b64_json is not valid base64: Non-base64 digit found"),
        ("iVBO RK", "b64_json is not valid base64: Non-base64 digit found"),
        ("aGVsbG8=", NOT_AN_IMAGE),  # valid base64 of b"hello"
        ("", NOT_AN_IMAGE),
    ],
)
def test_decode_and_verify_rejects(b64: str, message: str) -> None:
    with pytest.raises(InvalidResponseError) as caught:
        decode_and_verify(b64)
    assert str(caught.value) == message


def test_decode_and_verify_rejects_a_truncated_base64_image() -> None:
    b64 = base64.b64encode(make_image("png", (50, 50))).decode()
    with pytest.raises(InvalidResponseError) as caught:
        decode_and_verify(b64[: len(b64) // 2 // 4 * 4])
    assert str(caught.value) == TRUNCATED["png"]


# --- bytes after the end, dimensions, rejected names ----------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("extra", [b"\x00" * 3, b"junk after the end" * 50])
def test_bytes_after_the_end_are_accepted(fmt: str, extra: bytes) -> None:
    data = make_image(fmt, (9, 4)) + extra
    assert decode_and_verify(b64(data)) == data
    Image.open(io.BytesIO(data)).load()  # as decoders do


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_the_sink_keeps_bytes_after_the_end_and_counts_them(tmp_path: Path, fmt: str) -> None:
    good = make_image(fmt, (40, 30))
    extra = b"trailing " * 1000
    data = good + extra
    sink = ImageSink(tmp_path, "img")
    for i in range(0, len(data), 777):  # split anywhere, as the network does
        await sink.feed_raw(data[i : i + 777])
    info = await sink.verify()
    assert (info.format, info.width, info.height) == (fmt, 40, 30)
    assert info.trailing == len(extra)
    assert info.bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    path = await sink.commit(tmp_path, "img.bin")
    assert path.read_bytes() == data  # kept exactly as received


async def test_the_sink_rejects_a_png_cut_before_iend_even_with_bytes_after_the_cut(
    tmp_path: Path,
) -> None:
    good = make_image("png", (40, 30))
    sink = ImageSink(tmp_path, "img")
    await sink.feed_raw(good[: len(good) // 2])
    with pytest.raises(InvalidResponseError) as caught:
        await sink.verify()
    assert str(caught.value) == TRUNCATED["png"]
    sink.discard()


def _info(fmt: str = "png", width: int = 1024, height: int = 1024, trailing: int = 0) -> ImageInfo:
    return ImageInfo(fmt, width, height, "0" * 64, 100, trailing=trailing)


@pytest.mark.parametrize(
    ("info", "size", "expected"),
    [
        (_info(), "1024x1024", []),
        (_info(), "auto", []),
        (_info(width=1, height=1), None, []),
        (_info(width=1, height=1), "auto", []),
        (_info(width=1, height=1), "1024x1024", ["asked for size 1024x1024 but the image is 1x1"]),
        (_info(width=1024, height=1536), "1536x1024", [
            "asked for size 1536x1024 but the image is 1024x1536"
        ]),
        (_info(trailing=12), "1024x1024", [
            "12 bytes after IEND; decoders ignore them and the file is kept as received"
        ]),
        (_info("jpeg", trailing=1), None, [
            "1 byte after the end-of-image marker; decoders ignore them and the file is kept "
            "as received"
        ]),
        (_info("webp", 16, 16, trailing=2048), "1024x1024", [
            "2,048 bytes after the RIFF data; decoders ignore them and the file is kept as "
            "received",
            "asked for size 1024x1024 but the image is 16x16",
        ]),
    ],
)  # fmt: skip
def test_image_warnings(info: ImageInfo, size: str | None, expected: list[str]) -> None:
    assert image_warnings(info, size=size) == expected


def test_rejected_path_never_reuses_a_name(tmp_path: Path) -> None:
    assert rejected_path(tmp_path, "icons/home", 2) == ".rejected/icons/home.2.bin"
    (tmp_path / ".rejected/icons").mkdir(parents=True)
    (tmp_path / ".rejected/icons/home.2.bin").write_bytes(b"x")
    assert rejected_path(tmp_path, "icons/home", 2) == ".rejected/icons/home.2-2.bin"
    (tmp_path / ".rejected/icons/home.2-2.bin").write_bytes(b"x")
    assert rejected_path(tmp_path, "icons/home", 2) == ".rejected/icons/home.2-3.bin"
    assert rejected_path(tmp_path, "icons/home", 3) == ".rejected/icons/home.3.bin"
