"""The streaming b64_json scanner and decoder, fuzzed against json.dumps and base64."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmock_batch.b64stream import B64Decoder, B64JsonScanner
from pmock_batch.errors import InvalidResponseError
from pmock_batch.images import ImageSink


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points:
        chunks.append(data[last:p])
        last = p
    chunks.append(data[last:])
    return chunks


def _scan(body: bytes, cuts: list[int]) -> tuple[bytes, bytes, B64JsonScanner]:
    scanner = B64JsonScanner()
    decoder = B64Decoder()
    out = bytearray()
    for chunk in _split(body, cuts):
        for text in scanner.feed(chunk):
            out += decoder.feed(text)
    scanner.close()
    if scanner.found:
        out += decoder.finish()
    return bytes(out), bytes(scanner.remainder), scanner


prompts = st.text(min_size=0, max_size=40)
extras = st.dictionaries(
    st.sampled_from(["revised_prompt", "note", "url", "b64", "json"]),
    st.one_of(st.text(max_size=20), st.integers(), st.none()),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(min_size=0, max_size=3000),
    prompt=prompts,
    extra=extras,
    ensure_ascii=st.booleans(),
    escape_slashes=st.booleans(),
    indent=st.sampled_from([None, 1]),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=12),
)
def test_scanner_matches_json_loads(
    payload, prompt, extra, ensure_ascii, escape_slashes, indent, cuts
) -> None:
    b64 = base64.b64encode(payload).decode()
    doc = {
        "created": 1,
        "prompt_echo": prompt,
        "data": [{**extra, "b64_json": b64}],
        "usage": {"total_tokens": 7},
    }
    text = json.dumps(doc, ensure_ascii=ensure_ascii, indent=indent)
    if escape_slashes:  # some encoders (PHP's, by default) write / as \/
        text = text.replace("/", "\\/")
    body = text.encode()
    decoded, remainder, scanner = _scan(body, cuts)
    assert scanner.found and scanner.done
    assert decoded == payload == base64.b64decode(json.loads(body)["data"][0]["b64_json"])
    rest = json.loads(remainder)
    assert rest["data"][0]["b64_json"] == ""
    expected = json.loads(body)
    expected["data"][0]["b64_json"] = ""
    assert rest == expected


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    cuts=st.lists(st.integers(min_value=0, max_value=10000), max_size=20),
)
def test_decoder_matches_b64decode_at_any_chunk_boundary(payload, cuts) -> None:
    text = base64.b64encode(payload)
    decoder = B64Decoder()
    out = b"".join(decoder.feed(chunk) for chunk in _split(text, cuts)) + decoder.finish()
    assert out == payload


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=50), st.lists(st.integers(min_value=0, max_value=500), max_size=5))
def test_a_body_without_b64_json_passes_through_whole(prompt, cuts) -> None:
    body = json.dumps({"data": [{"url": "http://x/y.png", "revised_prompt": prompt}]}).encode()
    decoded, remainder, scanner = _scan(body, cuts)
    assert not scanner.found and decoded == b""
    assert remainder == body


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [{"b64_json": null}]}',
        b'{"note": "the key \\"b64_json\\": \\"QUJD\\" is only text", "data": []}',
        b'{"data": [{"x": "b64_json", "y": 1}]}',
        b'{"b64_jsonx": "QUJD"}',
    ],
)
def test_lookalikes_are_not_taken_for_the_value(body) -> None:
    decoded, remainder, scanner = _scan(body, [])
    assert not scanner.found and decoded == b""
    assert remainder == body


def test_escapes_inside_the_value_are_decoded() -> None:
    body = b'{"data": [{"b64_json": "QU\\u004aD\\nQUJD\\/\\/\\/\\/"}]}'
    decoded, remainder, _ = _scan(body, [7, 25, 26, 27])
    assert decoded == base64.b64decode("QUJDQUJD////")
    assert json.loads(remainder) == {"data": [{"b64_json": ""}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"data": [{"b64_json": "QUJD', "ended inside"),
        (b'{"data": [{"b64_json": "QU\\x"}]}', "unexpected escape"),
        (b'{"data": [{"b64_json": "QU\\u00e9D"}]}', r"U\+00E9"),
        (b'{"data": [{"b64_json": "QQ==QUJD"}]}', "after its padding|not valid base64"),
        (b'{"data": [{"b64_json": "QU*D"}]}', "not valid base64"),
        (b'{"data": [{"b64_json": "QUJDQ"}]}', "truncated"),
    ],
)
def test_malformed_values_are_rejected(body, message) -> None:
    with pytest.raises(InvalidResponseError, match=message):
        _scan(body, [3, 30])


async def test_image_sink_streams_a_large_image_to_a_temp_file(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.frombytes("RGB", (800, 800), os.urandom(800 * 800 * 3))
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=0)
    png = buf.getvalue()
    body = json.dumps({"data": [{"b64_json": base64.b64encode(png).decode()}]}).encode()
    sink = ImageSink(tmp_path, "big/pic")
    for i in range(0, len(body), 65536):
        await sink.feed_json(body[i : i + 65536])
    remainder = await sink.end_json()
    assert json.loads(remainder) == {"data": [{"b64_json": ""}]}
    info = await sink.verify()
    assert (info.format, info.width, info.height, info.bytes) == ("png", 800, 800, len(png))
    temps = list((tmp_path / "big").glob(".pic.*.pmock-tmp"))
    assert len(temps) == 1  # written as it arrived, ~1 MB at a time
    path = await sink.commit(tmp_path, "big/pic.png")
    assert path.read_bytes() == png
    assert not list((tmp_path / "big").glob("*.pmock-tmp"))
    sink.discard()  # after commit: nothing left to remove
    assert path.exists()


async def test_image_sink_discard_removes_the_temp_file(tmp_path: Path) -> None:
    sink = ImageSink(tmp_path, "x")
    await sink.feed_raw(b"\x89PNG" + bytes(2_000_000))
    assert list(tmp_path.glob(".x.*.pmock-tmp"))
    with pytest.raises(InvalidResponseError):
        await sink.verify()
    sink.discard()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("lossless", [False, True])
async def test_image_sink_verifies_a_large_webp_from_its_header(tmp_path: Path, lossless) -> None:
    """Pillow cannot open a WebP from its first bytes; the sink reads the header itself."""
    import io

    from PIL import Image

    img = Image.frombytes("RGB", (1200, 900), os.urandom(1200 * 900 * 3))
    buf = io.BytesIO()
    img.save(buf, "WEBP", lossless=lossless, quality=100)
    webp = buf.getvalue()
    assert len(webp) > 1_000_000
    body = json.dumps({"data": [{"b64_json": base64.b64encode(webp).decode()}]}).encode()
    sink = ImageSink(tmp_path, "pic")
    for i in range(0, len(body), 100_000):
        await sink.feed_json(body[i : i + 100_000])
    await sink.end_json()
    info = await sink.verify()
    assert (info.format, info.width, info.height, info.bytes) == ("webp", 1200, 900, len(webp))
    sink.discard()


# --- issue 9 §3: data[0].b64_json and nothing else ---------------------------------------

decoy_values = st.one_of(
    st.text(alphabet="ABCD+/=", max_size=12),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=600),
    decoy=st.binary(min_size=1, max_size=60),
    before=st.booleans(),
    nested=st.sampled_from(["meta", "meta_list", "item_inner", "data1", "string"]),
    extra=extras,
    indent=st.sampled_from([None, 0, 2]),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_only_data_0_b64_json_is_taken(payload, decoy, before, nested, extra, indent, cuts):
    """A b64_json anywhere else, before or after the real one, is ordinary JSON."""
    image = base64.b64encode(payload).decode()
    fake = base64.b64encode(decoy).decode()
    item: dict[str, object] = {**extra}
    doc: dict[str, object] = {"created": 1}
    rest: list[object] = []
    if nested == "meta":
        doc["meta"] = {"b64_json": fake}
    elif nested == "meta_list":
        doc["meta"] = [{"b64_json": fake}, {"data": [{"b64_json": fake}]}]
    elif nested == "item_inner":
        item["inner"] = {"b64_json": fake, "data": [{"b64_json": fake}]}
    elif nested == "data1":
        rest = [{"b64_json": fake}]
    else:
        doc["note"] = f'"b64_json": "{fake}"'
    item["b64_json"] = image
    if before:  # the decoy comes first in the text
        doc["data"] = [item, *rest]
        body_doc = {**doc}
    else:
        body_doc = {"data": [item, *rest], **{k: v for k, v in doc.items()}}
    text = json.dumps(body_doc, indent=indent)
    body = text.encode()
    decoded, remainder, scanner = _scan(body, cuts)
    assert scanner.found and scanner.done
    assert decoded == payload
    expected = json.loads(body)
    expected["data"][0]["b64_json"] = ""
    assert json.loads(remainder) == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"meta": {"b64_json": "QUJD"}, "data": [{"url": "http://x/y.png"}]}',
        b'{"data": [{"url": "http://x/y.png"}, {"b64_json": "QUJD"}]}',
        b'{"data": [null, {"b64_json": "QUJD"}]}',
        b'{"data": [[{"b64_json": "QUJD"}]]}',
        b'{"data": {"b64_json": "QUJD"}}',
        b'{"data": [{"inner": {"b64_json": "QUJD"}}]}',
        b'{"x": {"data": [{"b64_json": "QUJD"}]}}',
        b'[{"data": [{"b64_json": "QUJD"}]}]',
        b'{"b64_json": "QUJD", "data": []}',
        b'{"data": "[{\\"b64_json\\": \\"QUJD\\"}]"}',
        b'{"data": [{"b64_json": 5, "x": "b64_json"}]}',
    ],
)
def test_b64_json_off_the_path_is_not_the_image(body) -> None:
    decoded, remainder, scanner = _scan(body, [5, 17])
    assert not scanner.found and decoded == b""
    assert remainder == body


def test_whitespace_padding_is_skipped_and_kept() -> None:
    body = b" \n" * 5000 + b'{"data":\n [ {"b64_json" :  "QUJD"}]}' + b"\t" * 100
    decoded, remainder, scanner = _scan(body, [3000, 10003])
    assert scanner.found and decoded == b"ABC"
    assert json.loads(remainder) == {"data": [{"b64_json": ""}]}
    assert len(remainder) == len(body) - 4
