"""The mock server over real loopback HTTP: images, validation, stats and every fault."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from PIL import Image

from pmock_batch.mock import (
    MockOptions,
    MockServer,
    create_app,
    format_duration,
    get_state,
    images,
    load_script,
    parse_fault_rates,
    parse_outcome,
    parse_script,
    render_image,
    serve,
)
from pmock_batch.mock.images import ImageSpec
from pmock_batch.mock.ratelimit import RequestLimiter, TokenBucketLimiter

PMOCK_PATH = "/api/ai/openai/v1/images/generations"
ERROR_KEYS = {"message", "type", "param", "code"}


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession,
    server: MockServer,
    body: Any,
    *,
    path: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Answer:
    url = server.url + path if path else server.base_url + "/images/generations"
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with session.post(url, headers=headers, **kwargs) as resp:
        data = await resp.read()
        return Answer(resp.status, resp.headers, json.loads(data) if data else None)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (a few ms at a time) until ``condition()`` holds; fail after about 2 seconds."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


def decode(answer: Answer) -> Image.Image:
    assert answer.status == 200, answer.body
    data = base64.b64decode(answer.body["data"][0]["b64_json"], validate=True)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def b64_bytes(answer: Answer) -> bytes:
    return base64.b64decode(answer.body["data"][0]["b64_json"], validate=True)


def assert_error(answer: Answer, status: int, *, code: str | None, param: str | None = None):
    assert answer.status == status, answer.body
    assert set(answer.body) == {"error"}
    assert set(answer.body["error"]) == ERROR_KEYS
    assert answer.body["error"]["code"] == code
    assert answer.body["error"]["param"] == param
    assert answer.body["error"]["message"]
    return answer.body["error"]


# -- images ------------------------------------------------------------------------------


async def test_default_request_returns_a_real_1024_png_in_openai_shape(mock_server, session):
    answer = await post(session, mock_server, {"prompt": "a red fox"})
    image = decode(answer)
    assert (image.format, image.size, image.mode) == ("PNG", (1024, 1024), "RGB")
    body = answer.body
    assert isinstance(body["created"], int)
    assert abs(body["created"] - time.time()) < 60
    assert (body["size"], body["output_format"], body["background"]) == (
        "1024x1024",
        "png",
        "opaque",
    )
    assert body["quality"] == "medium"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"] == {
        "text_tokens": usage["input_tokens"],
        "image_tokens": 0,
    }
    assert set(body["data"][0]) == {"b64_json"}
    assert answer.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    ("size", "fmt", "expected_size", "pil_format"),
    [
        ("1024x1536", "png", (1024, 1536), "PNG"),
        ("1536x1024", "jpeg", (1536, 1024), "JPEG"),
        ("2048x1152", "webp", (2048, 1152), "WEBP"),
        ("auto", "png", (1024, 1024), "PNG"),
    ],
)
async def test_size_and_format_are_honoured(
    mock_server, session, size, fmt, expected_size, pil_format
):
    answer = await post(
        session, mock_server, {"prompt": "a fox", "size": size, "output_format": fmt}
    )
    image = decode(answer)
    assert (image.format, image.size) == (pil_format, expected_size)
    assert answer.body["size"] == "{}x{}".format(*expected_size)
    assert answer.body["output_format"] == fmt


@pytest.mark.parametrize("fmt", ["png", "webp"])
async def test_transparent_background_has_an_alpha_channel(mock_server, session, fmt):
    body = {"prompt": "a fox", "background": "transparent", "output_format": fmt}
    answer = await post(session, mock_server, body)
    image = decode(answer)
    assert image.mode == "RGBA"
    assert image.getchannel("A").getextrema()[0] == 0  # some pixels are see-through
    assert answer.body["background"] == "transparent"


async def test_output_compression_is_the_jpeg_quality(mock_server, session):
    sizes = []
    for quality in (5, 95):
        body = {"prompt": "a fox", "output_format": "jpeg", "output_compression": quality}
        sizes.append(len(b64_bytes(await post(session, mock_server, body))))
    assert sizes[0] < sizes[1]


async def test_images_are_deterministic_per_prompt_and_differ_between_prompts(make_mock, session):
    first, second = await make_mock(), await make_mock()  # two caches: no shared bytes
    fox_a = b64_bytes(await post(session, first, {"prompt": "a fox"}))
    fox_b = b64_bytes(await post(session, second, {"prompt": "a fox"}))
    owl = b64_bytes(await post(session, first, {"prompt": "an owl"}))
    assert fox_a == fox_b
    assert fox_a != owl
    small_fox = Image.open(io.BytesIO(fox_a)).convert("RGB").resize((32, 32)).tobytes()
    small_owl = Image.open(io.BytesIO(owl)).convert("RGB").resize((32, 32)).tobytes()
    changed = sum(small_fox[i : i + 3] != small_owl[i : i + 3] for i in range(0, len(small_fox), 3))
    assert changed > 32 * 32 // 4  # a visible difference, not a pixel or two


async def test_concurrent_misses_render_once(monkeypatch):
    calls: list[ImageSpec] = []

    def counting_render(spec: ImageSpec) -> bytes:
        calls.append(spec)
        return render_image(spec)

    monkeypatch.setattr(images, "render_image", counting_render)
    cache = images.ImageCache()
    spec = ImageSpec(prompt="a fox", width=1024, height=1024)
    results = await asyncio.gather(*(cache.get(spec) for _ in range(5)))
    assert len(set(results)) == 1
    assert await cache.get(spec) == results[0]
    assert calls == [spec]
    await cache.aclose()


def test_a_4k_png_renders_quickly():
    spec = ImageSpec(prompt="a wide landscape", width=3840, height=2160)
    started = time.perf_counter()
    data = render_image(spec)
    assert time.perf_counter() - started < 1.5
    assert Image.open(io.BytesIO(data)).size == (3840, 2160)


async def test_url_response_format_serves_the_file(mock_server, session):
    answer = await post(session, mock_server, {"prompt": "a fox", "response_format": "url"})
    assert answer.status == 200
    url = answer.body["data"][0]["url"]
    assert url.startswith(mock_server.url + "/_mock/files/")
    assert url.endswith(".png")
    async with session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(await resp.read()))
        assert image.size == (1024, 1024)
    assert mock_server.stats.downloads == 1
    async with session.get(mock_server.url + "/_mock/files/nope.png") as resp:
        assert resp.status == 404
        assert set((await resp.json())["error"]) == ERROR_KEYS


async def test_revised_prompt_option(make_mock, session):
    server = await make_mock(MockOptions(revised_prompt=True))
    answer = await post(session, server, {"prompt": "a fox"})
    assert answer.body["data"][0]["revised_prompt"] == "a fox (revised)"


async def test_pmock_path_and_camel_case_fields_are_accepted(mock_server, session):
    body = {
        "prompt": "a fox",
        "outputFormat": "jpeg",
        "outputCompression": 40,
        "responseFormat": "b64_json",
    }
    answer = await post(session, mock_server, body, path=PMOCK_PATH)
    assert decode(answer).format == "JPEG"
    assert mock_server.stats.log[0].path == PMOCK_PATH


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "a fox", "size": "999x999"}, "size", "invalid_value"),
        ({"prompt": "a fox", "colour": "red"}, "colour", "unknown_parameter"),
        ({"prompt": "a fox", "n": 2}, "n", "invalid_value"),
        ({"prompt": "a fox", "n": "1"}, "n", "invalid_type"),
        ({"size": "1024x1024"}, "prompt", "missing_required_parameter"),
        ({"prompt": ""}, "prompt", "invalid_value"),
        (
            {"prompt": "a fox", "output_format": "jpeg", "background": "transparent"},
            "background",
            "invalid_value",
        ),
        (
            {"prompt": "a fox", "output_format": "png", "outputFormat": "png"},
            "output_format",
            "duplicate_parameter",
        ),
        (["a fox"], None, "invalid_type"),
    ],
)
async def test_bad_requests_get_400_in_openai_shape(mock_server, session, body, param, code):
    error = assert_error(await post(session, mock_server, body), 400, code=code, param=param)
    assert error["type"] == "invalid_request_error"


async def test_unknown_field_suggests_the_right_name(mock_server, session):
    answer = await post(session, mock_server, {"prompt": "a fox", "sise": "1024x1024"})
    error = assert_error(answer, 400, code="unknown_parameter", param="sise")
    assert "'size'" in error["message"]


async def test_body_that_is_not_json_or_not_an_object_gets_400(mock_server, session):
    answer = await post(session, mock_server, None, raw=b"{not json")
    assert_error(answer, 400, code="invalid_json")
    assert mock_server.stats.log[0].body is None
    answer = await post(session, mock_server, None, raw=b"null")
    assert_error(answer, 400, code="invalid_type")
    assert mock_server.stats.outcomes == {"400": 2}


async def test_unknown_routes_and_methods_answer_in_openai_shape(mock_server, session):
    async with session.get(mock_server.base_url + "/images/generations") as resp:
        assert resp.status == 405
        assert set((await resp.json())["error"]) == ERROR_KEYS
    async with session.post(mock_server.url + "/v1/nothing", json={}) as resp:
        assert resp.status == 404


# -- stats -------------------------------------------------------------------------------


async def test_peak_in_flight_counts_concurrent_requests_through_latency(make_mock, session):
    server = await make_mock(MockOptions(latency=0.05))
    answers = await asyncio.gather(
        *(post(session, server, {"prompt": f"fox {i}"}) for i in range(5))
    )
    assert [a.status for a in answers] == [200] * 5
    assert server.stats.peak_in_flight == 5
    assert server.stats.in_flight == 0
    await post(session, server, {"prompt": "alone"})
    assert server.stats.peak_in_flight == 5
    assert server.stats.requests == 6


async def test_stats_endpoint_log_and_reset(mock_server, session):
    key = "sk-proj-0123456789abcdefSECRET"
    await post(
        session, mock_server, {"prompt": "a fox"}, headers={"Authorization": f"Bearer {key}"}
    )
    await post(session, mock_server, {"prompt": "a fox", "size": "bad"})
    async with session.get(mock_server.url + "/_mock/stats") as resp:
        stats = await resp.json()
    assert stats["requests"] == 2
    assert stats["in_flight"] == 0
    assert stats["peak_in_flight"] == 1
    assert stats["attempts"] == {"a fox": 2}
    assert stats["successes"] == {"a fox": 1}
    assert stats["outcomes"] == {"ok": 1, "400": 1}
    assert stats["log"][0] == {
        "path": "/v1/images/generations",
        "body": {"prompt": "a fox"},
        "has_authorization": True,
        "authorization": "Bearer sk-proj-…",  # the key's first 8 characters only
        "outcome": "ok",
    }
    assert "SECRET" not in json.dumps(stats)
    assert mock_server.stats.log[0].authorization == f"Bearer {key}"  # in-process: all of it
    assert stats["log"][1]["has_authorization"] is False
    assert stats == mock_server.stats.to_json()
    async with session.post(mock_server.url + "/_mock/reset") as resp:
        assert (await resp.json())["requests"] == 0
    assert mock_server.stats.requests == 0
    assert mock_server.stats.attempts["a fox"] == 0
    assert not mock_server.stats.log


async def test_log_is_capped(make_mock, session):
    server = await make_mock(MockOptions(log_limit=2))
    for i in range(4):
        await post(session, server, {"prompt": f"p{i}"})
    assert [entry.body["prompt"] for entry in server.stats.log] == ["p2", "p3"]
    assert server.stats.requests == 4


# -- server lifecycle --------------------------------------------------------------------


async def test_server_urls_and_idempotent_stop():
    server = MockServer()
    with pytest.raises(RuntimeError):
        _ = server.port
    async with server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.base_url == server.url + "/v1"
    await server.stop()


async def test_serve_runs_until_cancelled(session):
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(MockOptions(), on_ready=ready.set_result))
    url = await asyncio.wait_for(ready, 5)
    async with session.post(url + "/v1/images/generations", json={"prompt": "a fox"}) as resp:
        assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_hang_ends_when_the_server_stops(make_mock, session):
    server = await make_mock(MockOptions(script={"*": ["hang"]}))
    request = asyncio.create_task(post(session, server, {"prompt": "a fox"}))
    await eventually(lambda: server.stats.in_flight == 1)
    started = time.perf_counter()
    await server.stop()
    assert time.perf_counter() - started < 2
    with pytest.raises(aiohttp.ClientError):
        await request


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "status", "code", "kind"),
    [
        ("500", 500, None, "server_error"),
        ("503", 503, None, "server_error"),
        ("400", 400, None, "invalid_request_error"),
        ("401", 401, "invalid_api_key", "invalid_request_error"),
        ("404", 404, None, "invalid_request_error"),
        ("408", 408, "timeout", "invalid_request_error"),
        ("409", 409, "conflict", "invalid_request_error"),
        ("quota", 429, "insufficient_quota", "insufficient_quota"),
        ("moderation", 400, "moderation_blocked", "image_generation_user_error"),
    ],
)
async def test_scripted_error_statuses(make_mock, session, outcome, status, code, kind):
    server = await make_mock(MockOptions(script={"a fox": [outcome]}))
    error = assert_error(await post(session, server, {"prompt": "a fox"}), status, code=code)
    assert error["type"] == kind
    assert decode(await post(session, server, {"prompt": "a fox"})).size == (1024, 1024)
    name = parse_outcome(outcome).name
    assert server.stats.outcomes == {name: 1, "ok": 1}


async def test_scripted_429_carries_retry_after(make_mock, session):
    server = await make_mock(MockOptions(script={"*": ["429", "429:2.5", "quota"]}, retry_after=3))
    first = await post(session, server, {"prompt": "a fox"})
    assert_error(first, 429, code="rate_limit_exceeded")
    assert (first.headers["Retry-After"], first.headers["retry-after-ms"]) == ("3", "3000")
    second = await post(session, server, {"prompt": "a fox"})
    assert (second.headers["Retry-After"], second.headers["retry-after-ms"]) == ("2.5", "2500")
    third = await post(session, server, {"prompt": "a fox"})
    assert_error(third, 429, code="insufficient_quota")
    assert "Retry-After" not in third.headers
    assert server.stats.outcomes == {"429": 2, "quota": 1}


async def test_script_runs_by_attempt_then_ok_and_prompt_beats_wildcard(make_mock, session):
    server = await make_mock(
        MockOptions(script={"a fox": ["500", "503", "ok", "500"], "*": ["404"]})
    )
    statuses = [(await post(session, server, {"prompt": "a fox"})).status for _ in range(6)]
    assert statuses == [500, 503, 200, 500, 200, 200]
    assert (await post(session, server, {"prompt": "an owl"})).status == 404
    assert (await post(session, server, {"prompt": "an owl"})).status == 200
    assert server.stats.attempts == {"a fox": 6, "an owl": 2}
    assert server.stats.successes == {"a fox": 3, "an owl": 1}
    assert [entry.outcome for entry in server.stats.log][:4] == ["500", "503", "ok", "500"]


async def test_drop_closes_the_connection_without_an_answer(make_mock, session):
    server = await make_mock(MockOptions(script={"a fox": ["drop"]}))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, server, {"prompt": "a fox"})
    assert (await post(session, server, {"prompt": "a fox"})).status == 200
    assert server.stats.outcomes == {"drop": 1, "ok": 1}


async def test_truncate_sends_part_of_the_promised_body(make_mock, session):
    server = await make_mock(MockOptions(script={"a fox": ["truncate"]}))
    url = server.base_url + "/images/generations"
    async with session.post(url, json={"prompt": "a fox"}) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) > 1000
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_corrupt_is_base64_of_a_broken_image(make_mock, session):
    server = await make_mock(MockOptions(script={"a fox": ["corrupt", "bad_base64"]}))
    data = b64_bytes(await post(session, server, {"prompt": "a fox"}))
    assert data.startswith(b"\x89PNG")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()
    answer = await post(session, server, {"prompt": "a fox"})
    assert answer.status == 200
    with pytest.raises(binascii.Error):
        base64.b64decode(answer.body["data"][0]["b64_json"], validate=True)


@pytest.mark.parametrize(("fmt", "end"), [("png", b"IEND\xaeB`\x82"), ("jpeg", b"\xff\xd9")])
async def test_trailing_bytes_follow_the_images_end(make_mock, session, fmt, end):
    server = await make_mock(MockOptions(trailing_bytes=50))
    data = b64_bytes(await post(session, server, {"prompt": "a fox", "output_format": fmt}))
    assert data[-50:] == b"pmock trailing bytes; pmock trailing bytes; pmock "
    assert data[:-50].endswith(end)
    image = Image.open(io.BytesIO(data))
    image.load()  # decoders stop at the end and ignore what follows
    assert image.size == (1024, 1024)


async def test_trailing_bytes_follow_the_webp_riff_data(make_mock, session):
    server = await make_mock(MockOptions(trailing_bytes=7))
    data = b64_bytes(await post(session, server, {"prompt": "a fox", "output_format": "webp"}))
    assert int.from_bytes(data[4:8], "little") + 8 == len(data) - 7
    Image.open(io.BytesIO(data)).load()


async def test_download_script_fails_each_files_gets_by_attempt(make_mock, session):
    server = await make_mock(MockOptions(download_script=("503", "truncate")))
    answer = await post(session, server, {"prompt": "a fox", "response_format": "url"})
    url = answer.body["data"][0]["url"]
    async with session.get(url) as resp:
        assert resp.status == 503
    async with session.get(url) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    async with session.get(url) as resp:
        assert resp.status == 200
        assert Image.open(io.BytesIO(await resp.read())).size == (1024, 1024)
    name = url.rpartition("/")[2]
    assert server.stats.download_attempts == {name: 3}
    assert server.stats.downloads == 1
    assert server.stats.requests == 1


async def test_hang_outlasts_the_client_timeout(make_mock, session):
    server = await make_mock(MockOptions(script={"a fox": ["hang"]}))
    started = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.1):
            await post(session, server, {"prompt": "a fox"})
    assert time.perf_counter() - started < 1
    await eventually(lambda: server.stats.in_flight == 0)  # cancelled once the client hangs up


async def test_short_hang_then_drop(make_mock, session):
    server = await make_mock(MockOptions(script={"a fox": ["hang"]}, hang_seconds=0.02))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, server, {"prompt": "a fox"})


async def _outcomes(server: MockServer, session, prompts, *, concurrent: bool) -> dict[str, str]:
    async def one(prompt: str) -> None:
        with contextlib.suppress(aiohttp.ClientError):
            await post(session, server, {"prompt": prompt})

    if concurrent:
        await asyncio.gather(*(one(p) for p in prompts))
    else:
        for p in prompts:
            await one(p)
    return {entry.body["prompt"]: entry.outcome for entry in server.stats.log}


async def test_seeded_fault_rates_are_reproducible_in_any_order(make_mock):
    rates = {"500": 0.3, "drop": 0.2}
    prompts = [f"prompt {i}" for i in range(30)]
    runs = []
    for seed, concurrent in [(7, False), (7, True), (8, False)]:
        server = await make_mock(MockOptions(fault_rates=rates, seed=seed))
        async with aiohttp.ClientSession() as session:
            runs.append(await _outcomes(server, session, prompts, concurrent=concurrent))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    counts = {kind: list(runs[0].values()).count(kind) for kind in ("ok", "500", "drop")}
    assert all(counts[kind] > 0 for kind in counts), counts


def test_seeded_latency_jitter_is_reproducible_and_bounded():
    options = MockOptions(latency=0.5, latency_jitter=0.25, seed=3)
    first, second = get_state(create_app(options)), get_state(create_app(options))
    delays = [first.latency("a fox", attempt) for attempt in range(1, 20)]
    assert delays == [second.latency("a fox", attempt) for attempt in range(1, 20)]
    assert all(0.5 <= d <= 0.75 for d in delays)
    assert len(set(delays)) > 1


# -- rate limit --------------------------------------------------------------------------


async def test_rpm_limit_with_headers_on_every_response(make_mock, session, fake_clock):
    server = await make_mock(MockOptions(rpm=2), clock=fake_clock)
    first = await post(session, server, {"prompt": "a fox"})
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    fake_clock.advance(10)
    second = await post(session, server, {"prompt": "a fox", "size": "bad"})  # a 400 still counts
    assert second.status == 400
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    fake_clock.advance(0.5)
    third = await post(session, server, {"prompt": "a fox"})
    assert_error(third, 429, code="rate_limit_exceeded")
    assert third.headers["Retry-After"] == "49.5"  # until the first slot frees
    assert third.headers["retry-after-ms"] == "49500"
    assert third.headers["x-ratelimit-reset-requests"] == "59.5s"
    fake_clock.advance(49.5)
    assert (await post(session, server, {"prompt": "a fox"})).status == 200
    assert server.stats.outcomes == {"ok": 2, "400": 1, "429": 1}


def test_limiter_window_slides(fake_clock):
    limiter = RequestLimiter(3, clock=fake_clock)
    for _ in range(3):
        assert limiter.admit().allowed
        fake_clock.advance(10)
    refused = limiter.admit()  # at 30 s: full until the first admission is 60 s old
    assert (refused.allowed, refused.remaining) == (False, 0)
    assert refused.retry_after == pytest.approx(30)
    assert refused.reset == pytest.approx(50)
    fake_clock.advance(30)
    answer = limiter.admit()
    assert (answer.allowed, answer.remaining) == (True, 0)
    assert limiter.peek().retry_after == pytest.approx(10)


def test_limiter_enforces_the_limit_per_second_too(fake_clock):
    """1,200 per minute is 20 per second: a burst of 32 gets 20 through, then waits."""
    limiter = RequestLimiter(1200, clock=fake_clock)
    answers = [limiter.admit() for _ in range(32)]
    assert [a.allowed for a in answers] == [True] * 20 + [False] * 12
    assert answers[-1].retry_after == pytest.approx(1.0)
    assert answers[-1].remaining == 1180
    fake_clock.advance(0.5)
    assert not limiter.admit().allowed
    fake_clock.advance(0.5)
    assert sum(limiter.admit().allowed for _ in range(25)) == 20


async def test_bucket_limit_refills_continuously_with_openai_headers(
    make_mock, session, fake_clock
):
    """1,200 per minute, burst 3: remaining counts down, then one token every 50 ms."""
    server = await make_mock(MockOptions(rpm=1200, limiter="bucket", burst=3), clock=fake_clock)
    answers = [await post(session, server, {"prompt": "a fox"}) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["x-ratelimit-limit-requests"] for a in answers} == {"1200"}
    assert answers[0].headers["x-ratelimit-reset-requests"] == "50ms"  # one token short
    assert answers[2].headers["x-ratelimit-reset-requests"] == "150ms"  # until full again
    refused = answers[3]
    assert_error(refused, 429, code="rate_limit_exceeded")
    assert refused.headers["retry-after-ms"] == "50"  # the next token
    assert refused.headers["Retry-After"] == "0.05"
    fake_clock.advance(0.03)
    assert (await post(session, server, {"prompt": "a fox"})).status == 429  # 0.6 of a token
    fake_clock.advance(0.02)
    again = await post(session, server, {"prompt": "a fox"})
    assert again.status == 200
    assert again.headers["x-ratelimit-remaining-requests"] == "0"
    fake_clock.advance(60)
    full = await post(session, server, {"prompt": "a fox"})
    assert full.headers["x-ratelimit-remaining-requests"] == "2"  # capped at the burst
    assert server.stats.outcomes == {"ok": 5, "429": 2}


async def test_bucket_burst_defaults_to_one_second_and_reset_refills(
    make_mock, session, fake_clock
):
    server = await make_mock(MockOptions(rpm=120, limiter="bucket"), clock=fake_clock)
    statuses = [(await post(session, server, {"prompt": "a fox"})).status for _ in range(3)]
    assert statuses == [200, 200, 429]  # 120 per minute: a burst of 2
    async with session.post(server.url + "/_mock/reset") as response:
        assert response.status == 200
    assert (await post(session, server, {"prompt": "a fox"})).status == 200


def test_token_bucket_limiter_alone(fake_clock):
    bucket = TokenBucketLimiter(60, clock=fake_clock, burst=2)  # one token per second
    assert [bucket.admit().allowed for _ in range(3)] == [True, True, False]
    assert bucket.peek().retry_after == pytest.approx(1.0)
    fake_clock.advance(0.999)
    assert not bucket.admit().allowed
    fake_clock.advance(0.001)
    answer = bucket.admit()
    assert (answer.allowed, answer.remaining, answer.reset) == (True, 0, pytest.approx(2.0))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.12, "120ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (6.5, "6.5s"),
        (90, "1m30s"),
        (60, "1m0s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# -- key and moderation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", [None, "Bearer sk-wrong", "sk-right", "Basic sk-right", "Bearer sk-rïght"]
)
async def test_required_key_rejects_missing_or_wrong_keys(make_mock, session, header):
    server = await make_mock(MockOptions(require_key="sk-right"))
    headers = {"Authorization": header} if header else None
    answer = await post(session, server, {"prompt": "a fox"}, headers=headers)
    assert answer.body == {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "param": None,
        }
    }
    assert answer.status == 401
    assert "sk-" not in json.dumps(answer.body)
    ok = await post(
        session, server, {"prompt": "a fox"}, headers={"Authorization": "Bearer sk-right"}
    )
    assert ok.status == 200
    assert server.stats.log[-1].authorization == "Bearer sk-right"


async def test_moderation_words_block_case_insensitively(make_mock, session):
    server = await make_mock(MockOptions(moderation_words=["Forbidden"]))
    answer = await post(session, server, {"prompt": "a FORBIDDEN fox"})
    error = assert_error(answer, 400, code="moderation_blocked")
    assert error["type"] == "image_generation_user_error"
    assert "safety system" in error["message"]
    assert (await post(session, server, {"prompt": "a fox"})).status == 200
    assert server.stats.outcomes == {"moderation": 1, "ok": 1}


# -- payload size ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size"), [("png", "1024x1024"), ("jpeg", "1024x1024"), ("png", "1024x1536")]
)
async def test_payload_mb_makes_realistically_large_valid_images(make_mock, session, fmt, size):
    server = await make_mock(MockOptions(payload_mb=1.5))
    answer = await post(session, server, {"prompt": "a fox", "output_format": fmt, "size": size})
    data = b64_bytes(answer)
    assert abs(len(data) - 1_500_000) <= 0.05 * 1_500_000
    image = decode(answer)
    assert image.size == tuple(int(x) for x in size.split("x"))


def test_payload_beyond_what_noise_pixels_hold_is_padded():
    spec = ImageSpec(
        prompt="a fox", width=1024, height=1024, format="webp", payload_bytes=4_000_000
    )
    data = render_image(spec)
    assert abs(len(data) - 4_000_000) <= 0.05 * 4_000_000
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (1024, 1024)


async def test_image_px_draws_every_image_small_whatever_the_size(make_mock, session):
    server = await make_mock(MockOptions(image_px=16))
    for size in ("1024x1024", "3840x2160", "auto"):
        answer = await post(session, server, {"prompt": "a fox", "size": size})
        image = decode(answer)
        assert (image.format, image.size) == ("PNG", (16, 16))
        assert answer.body["size"] == "16x16"


async def test_image_px_with_payload_mb_pads_the_small_image(make_mock, session):
    server = await make_mock(MockOptions(image_px=8, payload_mb=0.1))
    answer = await post(session, server, {"prompt": "a fox", "size": "3840x2160"})
    assert abs(len(b64_bytes(answer)) - 100_000) <= 0.05 * 100_000
    assert decode(answer).size == (8, 8)


# -- option parsing ----------------------------------------------------------------------


def test_parse_fault_rates():
    assert parse_fault_rates("500=0.1, drop=0.05,429=0") == {"500": 0.1, "drop": 0.05, "429": 0.0}
    assert parse_fault_rates("") == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("500", "KIND=RATE"),
        ("500=x", "not a number"),
        ("500=1.5", "from 0 to 1"),
        ("teapot=0.1", "unknown outcome"),
        ("ok=0.1", "'ok'"),
        ("500=0.6,503=0.6", "add up"),
        ("500=0.1,500=0.2", "twice"),
        ("200=0.1", "'ok'"),
        ("302=0.1", "400 to 599"),
    ],
)
def test_parse_fault_rates_rejects_bad_input(text, words):
    with pytest.raises(ValueError, match=words):
        parse_fault_rates(text)


def test_parse_script_and_load_script(tmp_path):
    assert parse_script("a fox=500,drop,ok") == {"a fox": ("500", "drop", "ok")}
    assert parse_script(["x=y=429:2.5", "*=quota"]) == {"x=y": ("429:2.5",), "*": ("quota",)}
    assert parse_script('{"a": ["500", 503]}') == {"a": ("500", "503")}
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"a fox": ["500", "ok"], "*": ["hang"]}), encoding="utf-8")
    assert load_script(path) == {"a fox": ("500", "ok"), "*": ("hang",)}


@pytest.mark.parametrize(
    ("specs", "words"),
    [
        ("no equals sign", "PROMPT=OUTCOME"),
        ("=500", "PROMPT=OUTCOME"),
        ("a=500,teapot", "unknown outcome"),
        ("a=429:soon", "not a number"),
        ("a=429:-1", ">= 0"),
        (["a=500", "a=ok"], "twice"),
        ("{not json", "not valid JSON"),
        ('["500"]', "PROMPT=OUTCOME"),
        ('{"a": "500"}', "list of strings"),
    ],
)
def test_parse_script_rejects_bad_input(specs, words):
    with pytest.raises(ValueError, match=words):
        parse_script(specs)


def test_load_script_reports_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read script file"):
        load_script(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latency": -1},
        {"latency_jitter": float("nan")},
        {"rpm": 0},
        {"payload_mb": 0},
        {"image_px": 0},
        {"image_px": 4097},
        {"image_px": 1.5},
        {"image_px": True},
        {"fault_rates": {"500": 2}},
        {"script": {"a": ["teapot"]}},
        {"script": {"a": "500"}},
        {"moderation_words": "word"},
        {"trailing_bytes": -1},
        {"trailing_bytes": 16 * 1024 * 1024 + 1},
        {"trailing_bytes": 1.5},
        {"trailing_bytes": True},
        {"download_script": ["corrupt"]},
        {"download_script": ["teapot"]},
        {"download_script": "ok,hang"},
        {"rpm": 60, "limiter": "leaky"},
        {"rpm": 60, "limiter": "bucket", "burst": 0},
        {"rpm": 60, "limiter": "bucket", "burst": 2.5},
        {"rpm": 60, "burst": 5},  # the window limiter has no burst
    ],
)
def test_options_are_checked_on_creation(kwargs):
    with pytest.raises(ValueError):
        MockOptions(**kwargs)


def test_options_hide_the_key():
    assert "sk-secret" not in repr(MockOptions(require_key="sk-secret"))


# -- the official SDK --------------------------------------------------------------------


async def test_openai_sdk_is_compatible(make_mock):
    server = await make_mock(MockOptions(script={"no quota": ["quota"]}, require_key="test"))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    try:
        result = await client.images.generate(model="gpt-image-2", prompt="a fox", size="1024x1536")
        assert result.data is not None
        image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
        assert (image.format, image.size) == ("PNG", (1024, 1536))
        assert result.size == "1024x1536"
        assert result.usage is not None and result.usage.total_tokens > 0
        bad_size: Any = "999x999"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.images.generate(model="gpt-image-2", prompt="a fox", size=bad_size)
        assert bad.value.code == "invalid_value"
        with pytest.raises(openai.RateLimitError) as quota:
            await client.images.generate(model="gpt-image-2", prompt="no quota")
        assert quota.value.code == "insufficient_quota"
    finally:
        await client.close()
    assert server.stats.log[0].authorization == "Bearer test"
    wrong = openai.AsyncOpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError):
            await wrong.images.generate(model="gpt-image-2", prompt="a fox")
    finally:
        await wrong.close()


# -- the openai dialect -------------------------------------------------------------------


@pytest.fixture
async def openai_mock(make_mock):
    return await make_mock(MockOptions(dialect="openai"))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a fox", "response_format": "b64_json"}, "response_format"),
        ({"prompt": "a fox", "model": "gpt-image-1", "response_format": "url"}, "response_format"),
        ({"prompt": "a fox", "input_fidelity": "high"}, "input_fidelity"),
        ({"prompt": "a fox", "colour": "red"}, "colour"),
        ({"prompt": "a fox", "outputFormat": "png"}, "outputFormat"),
        ({"prompt": "a fox", "extra_body": {}}, "extra_body"),
        ({"prompt": "a fox", "model": "dall-e-3", "background": "opaque"}, "background"),
    ],
)
async def test_openai_dialect_refuses_what_the_model_does_not_accept(
    openai_mock, session, body, param
):
    answer = await post(session, openai_mock, body)
    error = assert_error(answer, 400, code="unknown_parameter", param=param)
    assert error["message"] == f"Unknown parameter: {param!r}."


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a fox", "n": 11}, "n"),
        ({"prompt": "a fox", "size": "1000x1000"}, "size"),
        ({"prompt": "a fox", "model": "gpt-image-1", "size": "2048x2048"}, "size"),
        ({"prompt": "a fox", "quality": "standard"}, "quality"),
        ({"prompt": "a fox", "model": "dall-e-3", "n": 2}, "n"),
        ({"prompt": "a fox", "model": "no-such-model"}, "model"),
    ],
)
async def test_openai_dialect_checks_values_per_model(openai_mock, session, body, param):
    assert_error(await post(session, openai_mock, body), 400, code="invalid_value", param=param)


async def test_openai_dialect_accepts_what_the_real_api_does(openai_mock, mock_server, session):
    three = await post(session, openai_mock, {"prompt": "a fox", "n": 3})
    assert three.status == 200 and len(three.body["data"]) == 3
    wide = {"prompt": "a fox", "size": "1536x864", "safety_identifier": "user-1"}
    assert decode(await post(session, openai_mock, wide)).size == (1536, 864)
    dalle = {"prompt": "a fox", "model": "dall-e-3", "quality": "hd", "response_format": "url"}
    answer = await post(session, openai_mock, dalle)
    assert answer.status == 200 and answer.body["data"][0]["url"].startswith("http://127.0.0.1")
    # The pmock dialect keeps the seed's rules: its size list, n of 1, camelCase.
    assert_error(await post(session, mock_server, wide), 400, code="invalid_value", param="size")
    assert_error(
        await post(session, mock_server, {"prompt": "a fox", "n": 3}),
        400,
        code="invalid_value",
        param="n",
    )
    camel = await post(session, mock_server, {"prompt": "a fox", "responseFormat": "b64_json"})
    assert camel.status == 200


async def test_openai_sdk_gets_a_bad_request_for_response_format_with_gpt_image_2(make_mock):
    server = await make_mock(MockOptions(dialect="openai"))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.images.generate(
                model="gpt-image-2", prompt="a fox", response_format="b64_json"
            )
        assert (bad.value.code, bad.value.param) == ("unknown_parameter", "response_format")
        result = await client.images.generate(model="gpt-image-2", prompt="a fox", n=2)
        assert result.data is not None and len(result.data) == 2
        assert all(item.b64_json for item in result.data)
    finally:
        await client.close()
    assert server.stats.log[0].body["response_format"] == "b64_json"


def test_an_unknown_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match="dialect must be one of pmock, openai"):
        MockOptions(dialect="azure")
