"""The server-sent events parser (pure) and the reader that routes a stream into the sink."""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from pmock_batch.errors import IncompleteStreamError, InvalidResponseError
from pmock_batch.events import EventReader, PartialSaver
from pmock_batch.images import ImageSink
from pmock_batch.sse import MAX_FIELD_BYTES, Data, Dispatch, EventParser, Name


def _events(stream: bytes, size: int) -> list[tuple[str, bytes]]:
    """Parse ``stream`` fed in pieces of ``size`` bytes: (name, data) per event."""
    parser = EventParser()
    out: list[tuple[str, bytes]] = []
    name, data = "", b""
    items = []
    for start in range(0, len(stream), size):
        items += list(parser.feed(stream[start : start + size]))
    items += list(parser.finish())
    for item in items:
        if isinstance(item, Name):
            name = item.value
        elif isinstance(item, Data):
            data += item.value
        elif isinstance(item, Dispatch):
            out.append((name, data))
            name, data = "", b""
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_events_whatever_the_line_ends_and_chunks(size: int, eol: bytes) -> None:
    text = (
        b": a comment" + eol + b"event: one" + eol + b"data: {\"a\": 1}" + eol + eol
        + b"id: 7" + eol + b"retry: 100" + eol
        + b"event:two" + eol + b"data:x" + eol + b"data" + eol + b"data:  y" + eol + eol
        + eol + eol
        + b"data: last" + eol
    )  # fmt: skip
    # the last event has no blank line: the parser leaves it pending (the reader decides)
    assert _events(text, size) == [("one", b'{"a": 1}'), ("two", b"x\n\n y")]


def test_an_overlong_short_field_is_refused() -> None:
    parser = EventParser()
    with pytest.raises(InvalidResponseError, match="overlong"):
        list(parser.feed(b"event: " + b"x" * (MAX_FIELD_BYTES + 1)))


def test_a_long_data_line_is_never_held() -> None:
    parser = EventParser()
    list(parser.feed(b"data: "))
    for _ in range(100):
        items = list(parser.feed(b"A" * 100_000))
        assert items == [Data(b"A" * 100_000)] and parser.held == 0


# -- the reader ----------------------------------------------------------------


def _png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


def _event(name: str | None, data: dict) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _partial(index: int, named: bool = True) -> bytes:
    data = {
        "type": "image_generation.partial_image",
        "b64_json": base64.b64encode(_png("gray")).decode(),
        "partial_image_index": index,
    }
    return _event("image_generation.partial_image" if named else None, data)


def _completed(named: bool = True, kind: str = "image_generation") -> bytes:
    data = {
        "type": f"{kind}.completed",
        "b64_json": base64.b64encode(_png("red")).decode(),
        "output_format": "png",
        "usage": {"output_tokens": 300},
    }
    return _event(f"{kind}.completed" if named else None, data)


async def _read(tmp_path: Path, stream: bytes, *, size: int = 5, save: bool = False):
    sink = ImageSink(tmp_path, "fox")
    saver = PartialSaver(tmp_path, "fox") if save else None
    seen: list[int | None] = []
    reader = EventReader(sink, saver=saver, on_partial=seen.append)
    try:
        for start in range(0, len(stream), size):
            await reader.feed_json(stream[start : start + size])
        body = json.loads(await reader.end_json())
        return sink, reader, body, seen
    finally:
        reader.discard()


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.parametrize("kind", ["image_generation", "image_edit"])
async def test_the_image_is_the_completed_event(tmp_path: Path, named: bool, kind: str) -> None:
    stream = _partial(0, named) + _partial(1, named) + _completed(named, kind)
    sink, reader, body, seen = await _read(tmp_path, stream)
    assert seen == [1, 2, None] and reader.partials == 2 and reader.answered
    assert body["usage"] == {"output_tokens": 300} and body["data"] == [{"b64_json": ""}]
    info = await sink.verify()
    await sink.commit(tmp_path, "fox.png")
    assert (tmp_path / "fox.png").read_bytes() == _png("red")
    assert info.format == "png"
    assert not (tmp_path / ".partials").exists()


async def test_saved_partials_are_atomic_files_with_their_index(tmp_path: Path) -> None:
    stream = _partial(1) + _partial(0) + _completed()
    sink, reader, _, _ = await _read(tmp_path, stream, size=64, save=True)
    assert sorted((p.index, p.path) for p in reader.saved) == [
        (0, ".partials/fox.0.png"),
        (1, ".partials/fox.1.png"),
    ]
    assert (tmp_path / ".partials" / "fox.0.png").read_bytes() == _png("gray")
    assert sorted(p.name for p in (tmp_path / ".partials").iterdir()) == ["fox.0.png", "fox.1.png"]
    sink.discard()


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (_partial(0), "ended after 1 partial image without a completed event"),
        (b": keep-alive\n\n", "ended without a completed event"),
        (
            _partial(0) + _event("error", {"error": {"message": "server overloaded"}}),
            "error event: server overloaded",
        ),
    ],
)
async def test_a_stream_without_its_image_is_incomplete(
    tmp_path: Path, stream: bytes, message: str
) -> None:
    with pytest.raises(IncompleteStreamError, match=message) as caught:
        await _read(tmp_path, stream)
    assert not caught.value.answered


async def test_a_json_answer_goes_to_the_sink_as_usual(tmp_path: Path) -> None:
    body = {"data": [{"b64_json": base64.b64encode(_png("blue")).decode()}], "usage": {"a": 1}}
    raw = b"  " + json.dumps(body).encode()
    sink, reader, parsed, _ = await _read(tmp_path, raw)
    assert parsed["usage"] == {"a": 1} and sink.streamed and reader.partials == 0
    sink.discard()


async def test_a_last_event_without_its_blank_line_still_counts(tmp_path: Path) -> None:
    sink, _, body, _ = await _read(tmp_path, _partial(0) + _completed()[:-1])
    assert body["usage"] == {"output_tokens": 300}
    sink.discard()


async def test_events_after_the_image_are_skipped(tmp_path: Path) -> None:
    stream = _completed() + _partial(0) + _event("image_generation.completed", {"b64_json": "!"})
    sink, reader, _, _ = await _read(tmp_path, stream)
    assert reader.partials == 0
    assert (await sink.verify()).format == "png"
    sink.discard()


@pytest.mark.parametrize("size", [1000, 1 << 20])
async def test_unnamed_events_longer_than_the_sniff_are_routed_by_their_type(
    tmp_path: Path, size: int
) -> None:
    noise = Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG")
    big = out.getvalue()
    assert len(base64.b64encode(big)) > 4096
    completed = {"type": "image_generation.completed", "b64_json": base64.b64encode(big).decode()}
    stream = _partial(0, named=False) + _event(None, completed)
    sink, reader, _, _ = await _read(tmp_path, stream, size=size)
    assert reader.partials == 1 and reader.held < 100  # the JSON outside the image
    await sink.commit(tmp_path, "fox.png")
    assert (tmp_path / "fox.png").read_bytes() == big
