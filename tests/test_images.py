"""The writer: image verification on real bytes, safe paths, and atomic writes."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pmock_batch.errors import InvalidResponseError, OutputPathError
from pmock_batch.images import (
    TMP_SUFFIX,
    ImageInfo,
    ImageSink,
    VerifiedImage,
    decode_and_verify,
    image_warnings,
    rejected_path,
    safe_path,
    sniff_format,
    verify_image,
    write_atomic,
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


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- verify_image -------------------------------------------------------------------------


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
def test_verify_image_reads_format_and_size(
    fmt: str, size: tuple[int, int], mode: str, extension: str
) -> None:
    data = make_image(fmt, size, mode)
    image = verify_image(data)
    assert image == VerifiedImage(
        data=data,
        format=fmt,
        width=size[0],
        height=size[1],
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert image.extension == extension
    assert sniff_format(data) == fmt


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize(
    "cut", [lambda n: n - 1, lambda n: n // 2, lambda n: 16], ids=["last-byte", "half", "header"]
)
def test_verify_image_rejects_truncated_images(fmt: str, cut: Callable[[int], int]) -> None:
    data = make_image(fmt, (40, 30))
    with pytest.raises(InvalidResponseError) as caught:
        verify_image(data[: cut(len(data))])
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
def test_verify_image_rejects_what_is_not_a_raster_image(data: bytes) -> None:
    with pytest.raises(InvalidResponseError) as caught:
        verify_image(data)
    assert str(caught.value) == NOT_AN_IMAGE


def test_verify_image_rejects_an_unreadable_header() -> None:
    broken = b"\xff\xd8\xff\x00" + bytes(40) + b"\xff\xd9"  # SOI and EOI, no header between
    with pytest.raises(InvalidResponseError) as caught:
        verify_image(broken)
    assert str(caught.value).startswith("the jpeg image header is unreadable: ")
    assert isinstance(caught.value.__cause__, Exception)


def test_verify_image_rejects_a_png_whose_first_chunk_is_not_ihdr() -> None:
    png = make_image("png")
    broken = png[:8] + b"\x00\x00\x00\x0dJUNK" + png[16:]  # IHDR renamed
    with pytest.raises(InvalidResponseError) as caught:
        verify_image(broken)
    assert str(caught.value) == "the PNG image is corrupt (its first chunk is JUNK, not IHDR)"


def test_verified_image_extension_differs_from_format_for_jpeg() -> None:
    assert verify_image(make_image("jpeg")).extension == "jpg"


# --- decode_and_verify --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_decode_and_verify(fmt: str) -> None:
    data = make_image(fmt, (9, 4))
    image = decode_and_verify(base64.b64encode(data).decode())
    assert (image.data, image.format, image.width, image.height) == (data, fmt, 9, 4)


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


# --- safe_path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a.png", "a.png"),
        ("icons/home.png", "icons/home.png"),
        ("a/../b.png", "b.png"),  # stays inside
        ("./c.png", "c.png"),
    ],
)
def test_safe_path_inside(tmp_path: Path, relative: str, expected: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert safe_path(out, relative) == out.resolve() / expected


@pytest.mark.parametrize("relative", ["../x", "../out-sibling/x.png", "a/../../x", "", "."])
def test_safe_path_rejects_escapes(tmp_path: Path, relative: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputPathError) as caught:
        safe_path(out, relative)
    assert str(caught.value) == f"refusing to write {relative!r}: it is outside {out}"


def test_safe_path_rejects_an_absolute_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = str(tmp_path / "elsewhere.png")
    with pytest.raises(OutputPathError) as caught:
        safe_path(out, target)
    assert str(caught.value) == f"refusing to write {target!r}: it is outside {out}"


def test_safe_path_rejects_a_symlink_that_points_outside(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputPathError) as caught:
        safe_path(out, "link/x.png")
    assert str(caught.value) == f"refusing to write 'link/x.png': {out}/link is a symbolic link"


def test_safe_path_refuses_a_symlink_even_when_it_stays_inside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "link").symlink_to(out / "real", target_is_directory=True)
    with pytest.raises(OutputPathError) as caught:
        safe_path(out, "link/x.png")
    assert str(caught.value) == f"refusing to write 'link/x.png': {out}/link is a symbolic link"
    (out / "x.png").symlink_to(out / "real" / "x.png")
    with pytest.raises(OutputPathError, match=r"x\.png is a symbolic link"):
        safe_path(out, "x.png")


# --- write_atomic -------------------------------------------------------------------------


async def test_write_atomic_writes_exact_bytes_in_nested_folders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = make_image("png") + bytes(range(256))
    path = await write_atomic(out, "icons/small/home.png", data)
    assert path == out.resolve() / "icons" / "small" / "home.png"
    assert path.read_bytes() == data
    assert files_under(out) == ["icons/small/home.png"]
    assert not [name for name in files_under(tmp_path) if name.endswith(TMP_SUFFIX)]


async def test_write_atomic_replaces_an_existing_file_by_renaming(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = await write_atomic(out, "a.png", b"old bytes")
    old_inode = path.stat().st_ino
    with path.open("rb") as reader:  # a reader of the old file keeps the whole old file
        new = await write_atomic(out, "a.png", b"new, longer bytes")
        assert reader.read() == b"old bytes"
    assert new == path
    assert path.read_bytes() == b"new, longer bytes"
    assert path.stat().st_ino != old_inode  # a new file renamed into place, not rewritten
    assert files_under(out) == ["a.png"]


async def test_write_atomic_many_files_leave_no_temporary_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for i in range(10):
        await write_atomic(out, f"d{i % 3}/img{i}.webp", bytes([i]) * (i + 1))
    assert files_under(out) == sorted(f"d{i % 3}/img{i}.webp" for i in range(10))
    assert all(
        (out / f"d{i % 3}/img{i}.webp").read_bytes() == bytes([i]) * (i + 1) for i in range(10)
    )


@pytest.mark.parametrize("relative", ["../evil.png", "a/../../evil.png"])
async def test_write_atomic_refuses_escapes(tmp_path: Path, relative: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputPathError):
        await write_atomic(out, relative, b"x")
    assert files_under(tmp_path) == []  # nothing written anywhere, in or out of OUT


async def test_write_atomic_refuses_an_absolute_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputPathError):
        await write_atomic(out, str(tmp_path / "evil.png"), b"x")
    assert not (tmp_path / "evil.png").exists()


async def test_write_atomic_refuses_a_symlink_escape(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputPathError):
        await write_atomic(out, "link/evil.png", b"x")
    assert list(outside.iterdir()) == []


async def test_a_folder_at_the_target_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "taken.png").mkdir(parents=True)  # a directory where the file should go
    with pytest.raises(OutputPathError) as caught:
        await write_atomic(out, "taken.png", b"data")
    assert str(caught.value) == f"refusing to write 'taken.png': {out}/taken.png is a folder"
    assert files_under(out) == []
    assert sorted(os.listdir(out)) == ["taken.png"]


async def test_a_failed_rename_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    await write_atomic(out, "a.png", b"old")

    def broken_replace(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pmock_batch.files.os.replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        await write_atomic(out, "a.png", b"new")
    assert sorted(os.listdir(out)) == ["a.png"]
    assert (out / "a.png").read_bytes() == b"old"


# --- bytes after the end, dimensions, rejected names ----------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("extra", [b"\x00" * 3, b"junk after the end" * 50])
def test_verify_image_accepts_bytes_after_the_end(fmt: str, extra: bytes) -> None:
    data = make_image(fmt, (9, 4)) + extra
    image = verify_image(data)
    assert (image.data, image.format, image.width, image.height) == (data, fmt, 9, 4)
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
