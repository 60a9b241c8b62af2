"""Issue 9 §3 and §4 over real loopback HTTP: a hostile server.

Every byte of an answer is bounded (as decompressed); only ``data[0]`` is
read; image URLs are followed only when asked for, through at most 3
redirects, to addresses the base URL vouches for; and whatever text a server
writes is redacted, then cut, then escaped before anything stores or shows it.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import tracemalloc
from pathlib import Path

import pytest
from aiohttp import web
from helpers import FakeSleep, by_id, read_manifest, run_cli, write_jobs

from pmock_batch.addresses import AddressPolicy, address_kind, host_kind
from pmock_batch.answers import parse_images as _parse_images
from pmock_batch.answers import status_from_body as _status_error
from pmock_batch.client import ImagesClient
from pmock_batch.config import RunConfig
from pmock_batch.errors import InvalidResponseError
from pmock_batch.images import ImageSink
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.mock.app import get_state
from pmock_batch.mock.responses import HOSTILE_CONTROLS
from pmock_batch.mock.success import gzip_padding
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import run_batch
from pmock_batch.text import printable, server_text

KEY = "sk-hostile12"  # 12 characters: the key that straddled the cut
# Raw C0 (but tab and newline), DEL and C1 controls: what no terminal or log line may get.
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf000000030101009a3b6b8e0000000049454e44ae426082"
)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    """Every test here talks to a mock with this key (conftest isolates the rest)."""
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


def _config(tmp_path: Path, base_url: str, **kwargs) -> RunConfig:
    return RunConfig(out_dir=tmp_path / "out", base_url=base_url, api_key=KEY, **kwargs)


async def _batch(tmp_path: Path, base_url: str, lines, **policy):
    path = write_jobs(tmp_path / "jobs.jsonl", lines)
    policy.setdefault("rng", random.Random(3))
    summary = await run_batch(
        _config(tmp_path, base_url, concurrency=2),
        iter_jobs(path, scan(path)),
        policy=RetryPolicy(sleep=FakeSleep(), **policy),
    )
    return summary, by_id(read_manifest(tmp_path / "out"))


def _outputs(tmp_path: Path, result) -> dict[str, str]:
    out = tmp_path / "out"
    return {
        "stdout": result.out,
        "stderr": result.err,
        "manifest": (out / "manifest.jsonl").read_text(encoding="utf-8"),
        "report": (out / "report.html").read_text(encoding="utf-8"),
    }


def _assert_safe(texts: dict[str, str]) -> None:
    for where, text in texts.items():
        assert KEY not in text, where
        assert KEY[:8] not in text, where  # nor most of it, cut or echoed
        assert not RAW_CONTROL.search(text), (where, RAW_CONTROL.search(text))


# --- §3: bound every byte ------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["padded_json", "gzip_bomb"])
async def test_a_200_padded_past_the_cap_is_invalid_and_retried_once(tmp_path, make_mock, fault):
    """8 MiB of whitespace (gzip: 8 KB on the wire) before valid JSON: past the 4 MiB cap."""
    server = await make_mock(MockOptions(image_px=8, script={"a fox": [fault] * 5}))
    summary, records = await _batch(tmp_path, server.base_url, [{"id": "fox", "prompt": "a fox"}])
    record = records["fox"]
    assert record["status"] == "failed"
    assert record["error"]["kind"] == "invalid_response"
    assert "more than 4,194,304 bytes outside its image" in record["error"]["message"]
    assert server.stats.requests == 2  # billed: one retry at most
    assert record["billed_retries"] == 1 and summary.billed_retries == 1
    assert not list((tmp_path / "out").glob("fox.*"))


async def test_a_padded_200_then_a_good_one(tmp_path, make_mock):
    server = await make_mock(MockOptions(image_px=8, script={"a fox": ["gzip_bomb", "ok"]}))
    _, records = await _batch(tmp_path, server.base_url, [{"id": "fox", "prompt": "a fox"}])
    assert records["fox"]["status"] == "ok" and records["fox"]["billed_retries"] == 1
    assert server.stats.requests == 2


async def test_a_gzip_bomb_is_counted_as_it_expands_and_memory_stays_bounded(tmp_path, make_mock):
    """32 MiB of whitespace in a ~32 KB gzip body, with a 64 KiB cap: refused early.

    The connection is released: with one connection allowed, the next request
    on the same client still gets through.
    """
    padding = 32 * 1024 * 1024
    server = await make_mock(
        MockOptions(image_px=8, padding_bytes=padding, script={"a fox": ["gzip_bomb"]})
    )
    gzip_padding(padding)  # the mock's own work, done before measuring
    config = _config(tmp_path, server.base_url, concurrency=1)
    body = {"prompt": "a fox", "model": "gpt-image-2"}
    async with ImagesClient(config, max_extra_bytes=64 * 1024) as client:
        sink = ImageSink(tmp_path, "fox")
        tracemalloc.start()
        try:
            with pytest.raises(InvalidResponseError, match="more than 65,536 bytes outside"):
                await client.generate(body, sink)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            sink.discard()
        assert peak < 8 * 1024 * 1024, peak  # not the 32 MiB it expands to
        async with asyncio.timeout(10):  # a leaked connection would block here (limit 1)
            reply = await client.generate(body, ImageSink(tmp_path, "fox2"))
        assert reply.status == 200
    assert server.stats.requests == 2


async def test_the_whole_body_is_capped_too(tmp_path, make_mock):
    """An image larger than the image cap is refused as the body passes its base64 size."""
    server = await make_mock(MockOptions(image_px=64, payload_mb=0.3))
    config = _config(tmp_path, server.base_url)
    body = {"prompt": "a fox", "model": "gpt-image-2"}
    async with ImagesClient(config, max_image_bytes=50_000, max_extra_bytes=4096) as client:
        sink = ImageSink(tmp_path, "fox")
        try:
            with pytest.raises(InvalidResponseError, match="more than 70,764 bytes in all"):
                await client.generate(body, sink)
        finally:
            sink.discard()
        with pytest.raises(InvalidResponseError, match="more than 70,764 bytes in all"):
            await client.generate(body)  # no sink: the whole body is read, but capped


async def test_a_body_without_a_sink_is_capped(tmp_path, make_mock):
    server = await make_mock(
        MockOptions(image_px=8, padding_bytes=1 << 20, script={"*": ["padded_json"] * 9})
    )
    async with ImagesClient(
        _config(tmp_path, server.base_url), max_image_bytes=3000, max_extra_bytes=4096
    ) as client:
        with pytest.raises(InvalidResponseError, match="in all"):
            await client.generate({"prompt": "a fox"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"data": [{"b64_json": "QUJD"}], "created": \x1b[2J}', "not JSON"),
        (b'{"data": "' + KEY.encode() + b'"}', r"unexpected shape \(data: list_type\)"),
    ],
)
def test_a_malformed_200_is_described_safely(raw, message):
    with pytest.raises(InvalidResponseError, match=message) as info:
        _parse_images(raw)
    assert KEY not in str(info.value) and not RAW_CONTROL.search(str(info.value))


# --- §3: image URLs --------------------------------------------------------------------------


async def test_a_url_is_not_followed_when_b64_json_was_asked(tmp_path, make_mock):
    server = await make_mock(MockOptions(image_px=8, script={"a fox": ["url", "url"]}))
    lines = [{"id": "fox", "prompt": "a fox", "response_format": "b64_json"}]
    _, records = await _batch(tmp_path, server.base_url, lines)
    assert records["fox"]["status"] == "failed"
    assert "has a url, not the b64_json that was asked for" in records["fox"]["error"]["message"]
    assert server.stats.requests == 2  # billed: retried once
    assert not server.stats.download_attempts  # never fetched


async def test_a_url_is_followed_when_asked(tmp_path, make_mock):
    server = await make_mock(MockOptions(image_px=8, url_redirects=3))
    lines = [{"id": "fox", "prompt": "a fox", "model": "dall-e-2", "response_format": "url"}]
    _, records = await _batch(tmp_path, server.base_url, lines)
    assert records["fox"]["status"] == "ok"
    assert server.stats.downloads == 1


async def test_more_than_3_redirects_are_refused(tmp_path, make_mock):
    server = await make_mock(MockOptions(image_px=8, url_redirects=4))
    lines = [{"id": "fox", "prompt": "a fox", "model": "dall-e-2", "response_format": "url"}]
    _, records = await _batch(tmp_path, server.base_url, lines)
    assert records["fox"]["status"] == "failed"
    assert "redirects more than 3 times" in records["fox"]["error"]["message"]
    assert server.stats.downloads == 0
    assert server.stats.requests == 2  # a new (billed) POST once, not 4 GETs each


@pytest.fixture
async def image_host(aiohttp_server):
    """A loopback image host that records each request's headers; /to?url=... redirects."""
    seen: list[dict[str, str]] = []

    async def image(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        return web.Response(body=PNG_1X1, content_type="image/png")

    async def redirect(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        raise web.HTTPFound(request.query["url"])

    app = web.Application()
    app.router.add_get("/img.png", image)
    app.router.add_get("/to", redirect)
    server = await aiohttp_server(app, host="127.0.0.1")
    server.seen = seen
    return server


async def test_the_key_is_never_sent_with_a_download(tmp_path, image_host):
    url = f"http://127.0.0.1:{image_host.port}/img.png"
    async with ImagesClient(_config(tmp_path, f"http://127.0.0.1:{image_host.port}/v1")) as client:
        sink = ImageSink(tmp_path, "pic")
        await client.download(url, sink)
        assert (await sink.verify()).format == "png"
        sink.discard()
    [headers] = image_host.seen
    assert "Authorization" not in headers and KEY not in json.dumps(headers)


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/img.png", "file:///etc/passwd"])
async def test_a_redirect_to_another_scheme_is_refused(tmp_path, image_host, target):
    url = f"http://127.0.0.1:{image_host.port}/to?url={target}"
    async with ImagesClient(_config(tmp_path, f"http://127.0.0.1:{image_host.port}/v1")) as client:
        with pytest.raises(InvalidResponseError, match="scheme"):
            await client.download(url, ImageSink(tmp_path, "pic"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LocalHost", "[::ffff:127.0.0.1]"])
async def test_loopback_is_refused_when_the_base_url_is_public(tmp_path, image_host, host):
    """The policy a public base URL gets: an IP literal, or a name that resolves to loopback."""
    url = f"http://{host}:{image_host.port}/img.png"
    config = _config(tmp_path, "https://api.example.com/v1")
    async with ImagesClient(config, download_policy=AddressPolicy()) as client:
        with pytest.raises(InvalidResponseError, match="a loopback address"):
            await client.download(url, ImageSink(tmp_path, "pic"))
        redirect = f"http://{host}:{image_host.port}/to?url=http://127.0.0.1:1/x.png"
        with pytest.raises(InvalidResponseError, match="a loopback address"):
            await client.download(redirect, ImageSink(tmp_path, "pic"))
    assert image_host.seen == []  # nothing was sent


async def test_a_redirect_to_a_refused_address_is_refused(tmp_path, image_host):
    """Each hop is checked: a public-looking first hop cannot bounce to a private one."""
    policy = AddressPolicy(frozenset({"public", "loopback"}))
    url = f"http://127.0.0.1:{image_host.port}/to?url=http://10.255.255.1:9/x.png"
    async with ImagesClient(
        _config(tmp_path, "http://127.0.0.1:1/v1"), download_policy=policy
    ) as client:
        with pytest.raises(InvalidResponseError, match=r"10\.255\.255\.1: a private address"):
            await client.download(url, ImageSink(tmp_path, "pic"))
    assert len(image_host.seen) == 1


@pytest.mark.parametrize("base_host", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("image_host_name", ["127.0.0.1", "localhost"])
async def test_a_loopback_base_url_may_download_from_loopback(
    tmp_path, image_host, base_host, image_host_name
):
    """Decided: ``localhost`` is loopback (RFC 6761), so either spelling vouches for the other."""
    config = _config(tmp_path, f"http://{base_host}:{image_host.port}/v1")
    async with ImagesClient(config) as client:
        sink = ImageSink(tmp_path, "pic")
        await client.download(f"http://{image_host_name}:{image_host.port}/img.png", sink)
        assert sink.size == len(PNG_1X1)
        sink.discard()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("0.0.0.0", "loopback"),  # noqa: S104 (an address to classify, not to bind)
        ("::1", "loopback"),
        ("::", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fe80::1", "link_local"),
        ("fe80::1%eth0", "link_local"),
        ("100.64.0.1", "reserved"),
        ("224.0.0.1", "reserved"),
        ("8.8.8.8", "public"),
        ("172.32.0.1", "public"),
        ("1.1.1.1", "public"),
        ("2606:4700:4700::1111", "public"),
    ],
)
def test_address_kinds(address, kind):
    assert address_kind(address) == kind
    assert AddressPolicy().allows(address) is (kind == "public")
    assert AddressPolicy.for_base({kind}).allows(address)


def test_the_base_url_decides_the_other_kinds():
    assert host_kind("localhost") == host_kind("LOCALHOST.") == host_kind("a.localhost")
    assert host_kind("[::1]") == "loopback" and host_kind("api.openai.com") is None
    policy = AddressPolicy.for_base({"private"})
    assert policy.allows("10.0.0.7") and policy.allows("192.168.0.2")
    assert not policy.allows("127.0.0.1") and not policy.allows("169.254.169.254")
    assert not AddressPolicy().allows("not an address")


# --- §4: strings from servers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("tab\tstays", "tab\tstays"),
        ("\x1b[2Jclear", "\\x1b[2Jclear"),
        ("\x1b]52;c;cHduZWQ=\x07", "\\x1b]52;c;cHduZWQ=\\x07"),
        ("\x9b31m", "\\x9b31m"),
        ("line\nbreak\r\n", "line\\x0abreak\\x0d\\x0a"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("\x85\u2028\u2029", "\\x85\\u2028\\u2029"),
        ("é ü 日本 🦊", "é ü 日本 🦊"),
    ],
)
def test_printable_escapes_every_c0_and_c1_control_but_tab(text, shown):
    assert printable(text) == shown
    assert not RAW_CONTROL.search(printable(text))


def test_every_c0_and_c1_control_is_escaped():
    every = "".join(map(chr, range(0x00, 0xA0)))
    assert not RAW_CONTROL.search(printable(every).replace("\t", ""))


def test_server_text_redacts_before_it_cuts():
    text = "x" * 1989 + KEY + " and more"  # the key straddles character 2,000
    shown = server_text(text, (KEY,), limit=2000)
    assert shown == "x" * 1989 + "[redacted] "


def test_a_status_error_is_redacted_everywhere_and_before_the_cut():
    message = "x" * (2000 - len(KEY) + 1) + KEY + " tail"
    raw = json.dumps(
        {"error": {"message": message, "code": KEY, "param": f"p {KEY}", "type": f"\x1b[2J{KEY}"}}
    ).encode()
    exc = _status_error(400, raw, {}, (KEY,))
    for text in (str(exc), exc.code, exc.param, exc.type):
        assert text is not None and KEY[:4] not in text, text
    assert exc.type == "\\x1b[2J[redacted]"


async def _hostile_runs(tmp_path, make_mock, capsys):
    """Three runs against a hostile server: plain logs, JSON logs with --json, and -v.

    Its key-echoing, screen-clearing, clipboard-writing text is in every field
    it writes: a 400's message, code, type and param (cat), a malformed 200
    (dog, its pydantic error) and a good image's revised_prompt (fox).
    """
    server = await make_mock(
        MockOptions(image_px=8, hostile=True, script={"a cat": ["400"], "a dog": ["bad_shape"] * 2})
    )
    write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "cat", "prompt": "a cat"},
            {"id": "dog", "prompt": "a dog"},
            {"id": "fox", "prompt": "a fox"},
        ],
    )
    out = tmp_path / "out"
    base = [str(tmp_path / "jobs.jsonl"), "--base-url", server.base_url, "--out", str(out)]
    runs = []
    for extra in ([], ["--log-format", "json", "--json"], ["-v"]):
        get_state(server.app).reset()  # each run starts the scripts again
        result = await run_cli([*base, "--force", *extra], capsys)
        assert result.code == 1, result.err
        records = by_id(read_manifest(out))
        assert records["fox"]["status"] == "ok"
        assert records["cat"]["status"] == records["dog"]["status"] == "failed"
        runs.append((_outputs(tmp_path, result), records))
    return runs


async def test_server_text_reaches_no_terminal_or_log_with_control_characters(
    tmp_path, make_mock, capsys, cli_sleep
):
    for texts, records in await _hostile_runs(tmp_path, make_mock, capsys):
        for where, text in texts.items():
            assert not RAW_CONTROL.search(text), (where, RAW_CONTROL.search(text))
        # escaped, not dropped: what the server sent stays readable
        assert printable(HOSTILE_CONTROLS) in records["fox"]["revised_prompt"]
        assert printable(HOSTILE_CONTROLS) in records["cat"]["error"]["message"]


async def test_code_and_param_are_redacted(tmp_path, make_mock, capsys, cli_sleep):
    for texts, records in await _hostile_runs(tmp_path, make_mock, capsys):
        error = records["cat"]["error"]
        assert error["code"].startswith("code [redacted] ")
        assert error["param"].startswith("param [redacted] ")
        for where, text in texts.items():
            assert KEY not in text, where


async def test_a_key_straddling_the_cut_leaves_nothing(tmp_path, make_mock, capsys, cli_sleep):
    for _, records in await _hostile_runs(tmp_path, make_mock, capsys):
        message = records["cat"]["error"]["message"]
        assert KEY[:4] not in message and message.count("[redacted]") == 2


async def test_a_malformed_200_does_not_echo_its_values(tmp_path, make_mock, capsys, cli_sleep):
    for texts, records in await _hostile_runs(tmp_path, make_mock, capsys):
        message = records["dog"]["error"]["message"]
        assert message == ("the server's 200 answer has an unexpected shape (created: int_parsing)")
        for where, text in texts.items():
            assert "input_value" not in text and KEY[:8] not in text, where


async def test_revised_prompt_is_redacted(tmp_path, make_mock, capsys, cli_sleep):
    for texts, records in await _hostile_runs(tmp_path, make_mock, capsys):
        assert records["fox"]["revised_prompt"].startswith("a fox (revised) [redacted] \\x1b")
        for where, text in texts.items():
            assert KEY[:8] not in text, where
