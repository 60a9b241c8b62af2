"""Issue 13 §2 over real loopback HTTP: streamed answers (``stream: true``).

The final image comes only from the ``completed`` event; partial images are
counted, or saved with ``--save-partials``; a stream that ends before its
image is retried, and counted as ambiguous when partials had arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiohttp
import pytest
from helpers import by_id, open_image, read_manifest, run_cli, write_jobs

from pmock_batch.client import ImagesClient
from pmock_batch.config import RunConfig
from pmock_batch.console.progress import streaming
from pmock_batch.errors import InvalidResponseError
from pmock_batch.events import EventReader
from pmock_batch.images import ImageSink
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.mock.faults import parse_fault_rates, parse_outcome
from pmock_batch.mock.streams import PARTIAL_TOKENS
from pmock_batch.run import run_batch

KEY = "sk-stream-test-key"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


@pytest.fixture(autouse=True)
def _no_backoff(cli_sleep):
    """The CLI's retry policy gets an injected sleep: no test waits through real backoff."""


def _argv(tmp_path: Path, server, *extra: str) -> list[str]:
    jobs = tmp_path / "jobs.jsonl"
    return [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out"), *extra]


def _bodies(server) -> list[dict]:
    return [entry.body for entry in server.stats.log]


@pytest.mark.parametrize("partials", [0, 2, 3])
async def test_a_streamed_job_saves_the_completed_image(tmp_path, make_mock, capsys, partials):
    server = await make_mock(MockOptions(image_px=64))
    line = {"id": "fox", "prompt": "a fox", "stream": True, "partial_images": partials}
    write_jobs(tmp_path / "jobs.jsonl", [line])
    result = await run_cli(_argv(tmp_path, server, "--json"), capsys)
    assert result.code == 0, result.err
    [body] = _bodies(server)
    assert body["stream"] is True and body["partial_images"] == partials
    record = read_manifest(tmp_path / "out")[0]
    assert record["status"] == "ok" and record["attempts"] == 1
    assert record["partials"] == []  # counted, not saved
    assert record["usage"]["output_tokens"] > PARTIAL_TOKENS * partials
    path = tmp_path / "out" / "fox.png"
    assert open_image(path).size == (64, 64)
    assert record["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not (tmp_path / "out" / ".partials").exists()
    assert "partial_images" not in result.err  # sent, so no warning


async def test_the_final_image_is_the_completed_one_not_a_partial(tmp_path, make_mock, capsys):
    """The same prompt without streaming gives the same image: partials are blurred previews."""
    server = await make_mock(MockOptions(image_px=64))
    write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "plain", "prompt": "a fox"},
            {"id": "streamed", "prompt": "a fox", "stream": True, "partial_images": 3},
        ],
    )
    result = await run_cli(_argv(tmp_path, server), capsys)
    assert result.code == 0, result.err
    out = tmp_path / "out"
    assert (out / "plain.png").read_bytes() == (out / "streamed.png").read_bytes()


async def test_stream_flag_streams_every_job_and_the_fingerprint_is_unchanged(
    tmp_path, make_mock, capsys
):
    server = await make_mock(MockOptions(image_px=32))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "partial_images": 1}])
    first = await run_cli(_argv(tmp_path, server), capsys)
    assert first.code == 0, first.err
    assert "partial_images needs streaming" in first.err
    assert "stream" not in _bodies(server)[0] and "partial_images" not in _bodies(server)[0]
    fingerprint = read_manifest(tmp_path / "out")[0]["fingerprint"]
    again = await run_cli(_argv(tmp_path, server, "--stream", "--force"), capsys)
    assert again.code == 0, again.err
    body = _bodies(server)[-1]
    assert body["stream"] is True and body["partial_images"] == 1
    assert read_manifest(tmp_path / "out")[0]["fingerprint"] == fingerprint


async def test_save_partials_writes_each_partial_and_lists_it(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=48))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "partial_images": 2}])
    argv = _argv(tmp_path, server, "--stream", "--save-partials")
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    out = tmp_path / "out"
    record = read_manifest(out)[0]
    assert [p["index"] for p in record["partials"]] == [0, 1]
    for item in record["partials"]:
        assert item["path"] == f".partials/fox.{item['index']}.png"
        data = (out / item["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"]
        assert open_image(out / item["path"]).size == (48, 48)
        assert data != (out / "fox.png").read_bytes()  # a preview, not the image
    assert sorted(p.name for p in (out / ".partials").iterdir()) == ["fox.0.png", "fox.1.png"]
    assert "fox.0.png" in (out / "report.html").read_text(encoding="utf-8")


async def test_prune_removes_the_saved_partials_of_a_job_no_longer_in_the_file(
    tmp_path, make_mock, capsys
):
    server = await make_mock(MockOptions(image_px=32))
    lines = [
        {"id": "v1.2", "prompt": "a fox", "partial_images": 2},
        {"id": "kept", "prompt": "a hen", "partial_images": 1},
    ]
    write_jobs(tmp_path / "jobs.jsonl", lines)
    argv = _argv(tmp_path, server, "--stream", "--save-partials")
    assert (await run_cli(argv, capsys)).code == 0
    out = tmp_path / "out"
    saved = sorted(p.name for p in (out / ".partials").iterdir())
    assert saved == ["kept.0.png", "v1.2.0.png", "v1.2.1.png"]
    write_jobs(tmp_path / "jobs.jsonl", lines[1:])
    plan = await run_cli([*argv, "--prune", "--dry-run"], capsys)
    assert plan.code == 0 and str(out / ".partials" / "v1.2.1.png") in plan.out, plan.out
    assert (await run_cli([*argv, "--prune"], capsys)).code == 0
    assert sorted(p.name for p in (out / ".partials").iterdir()) == ["kept.0.png"]
    assert not (out / "v1.2.png").exists() and (out / "kept.png").is_file()
    assert [r["id"] for r in read_manifest(out)] == ["kept"]


async def test_stream_cut_after_a_partial_is_retried_and_ambiguous(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=40, script={"a fox": ["stream_cut:1"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "partial_images": 2}])
    result = await run_cli(_argv(tmp_path, server, "--stream", "--json"), capsys)
    assert result.code == 0, result.err
    assert server.stats.requests == 2
    record = by_id(read_manifest(tmp_path / "out"))["fox"]
    assert record["status"] == "ok" and record["attempts"] == 2 and record["retries"] == 1
    assert record["ambiguous_retries"] == 1 and record["billed_retries"] == 0
    assert json.loads(result.out)["ambiguous_retries"] == 1
    plain = await make_mock(MockOptions(image_px=40))
    write_jobs(tmp_path / "plain.jsonl", [{"id": "fox", "prompt": "a fox"}])
    argv = [str(tmp_path / "plain.jsonl"), "--base-url", plain.base_url]
    again = await run_cli([*argv, "--out", str(tmp_path / "plain")], capsys)
    assert again.code == 0, again.err
    expected = (tmp_path / "plain" / "fox.png").read_bytes()
    assert (tmp_path / "out" / "fox.png").read_bytes() == expected  # the final image, whole


async def test_a_cut_before_any_partial_is_retried_but_not_ambiguous(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=40, script={"a fox": ["stream_cut:0"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "partial_images": 2}])
    result = await run_cli(_argv(tmp_path, server, "--stream"), capsys)
    assert result.code == 0, result.err
    record = read_manifest(tmp_path / "out")[0]
    assert record["retries"] == 1 and record["ambiguous_retries"] == 0


async def test_a_stream_that_hangs_after_its_partials_times_out_and_is_retried(
    tmp_path, make_mock, capsys
):
    options = MockOptions(image_px=32, script={"a fox": ["hang"]}, hang_seconds=30)
    server = await make_mock(options)
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "partial_images": 1}])
    result = await run_cli(_argv(tmp_path, server, "--stream", "--timeout", "1"), capsys)
    assert result.code == 0, result.err
    record = read_manifest(tmp_path / "out")[0]
    assert record["status"] == "ok" and record["ambiguous_retries"] == 1


async def test_drop_applies_to_streams(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=32, script={"a fox": ["drop"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "stream": True}])
    result = await run_cli(_argv(tmp_path, server), capsys)
    assert result.code == 0, result.err
    record = read_manifest(tmp_path / "out")[0]
    assert record["attempts"] == 2 and record["ambiguous_retries"] == 0


async def test_dall_e_does_not_stream(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=32))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "model": "dall-e-3"}])
    result = await run_cli(_argv(tmp_path, server, "--stream"), capsys)
    assert result.code == 0, result.err
    assert "dall-e-3 does not stream" in result.err
    assert "stream" not in _bodies(server)[0]


async def test_the_openai_sdk_streams_from_the_mock(make_mock):
    openai = pytest.importorskip("openai")
    server = await make_mock(MockOptions(image_px=32, dialect="openai"))
    client = openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
    try:
        stream = await client.images.generate(
            model="gpt-image-1", prompt="a fox", stream=True, partial_images=2
        )
        events = [event async for event in stream]
    finally:
        await client.close()
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert events[-1].usage.output_tokens > 0


async def test_the_live_status_shows_partials_of_streams_in_flight(tmp_path, make_mock):
    server = await make_mock(MockOptions(image_px=32, partial_delay=0.2))
    path = write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "fox", "prompt": "a fox", "stream": True, "partial_images": 3}],
    )
    config = RunConfig(out_dir=tmp_path / "out", base_url=server.base_url, api_key=KEY)
    seen: list[str] = []
    runs = []
    started = asyncio.Event()

    def on_start(run) -> None:
        runs.append(run)
        started.set()

    async def watch() -> None:
        await started.wait()
        for _ in range(200):
            seen.append(streaming(runs[0].status()))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    summary = await run_batch(config, iter_jobs(path, scan(path)), on_start=on_start)
    watcher.cancel()
    assert summary.ok == 1
    shown = [text for text in seen if text]
    assert " · partials: fox 0" in shown and " · partials: fox 2" in shown
    assert streaming(runs[0].status()) == ""  # nothing in flight after the run


async def test_partials_count_against_the_whole_body_cap_not_the_extra_one(tmp_path, make_mock):
    """A partial's data is never held (the 4 KiB cap outside images is kept), but its bytes
    count in the body's total, which is capped at the image cap's base64 plus the extra."""
    server = await make_mock(MockOptions(image_px=128, payload_mb=0.2))
    config = RunConfig(out_dir=tmp_path, base_url=server.base_url, api_key=KEY)
    body = {"prompt": "a fox", "model": "gpt-image-2", "stream": True}
    async with ImagesClient(config, max_image_bytes=210_000, max_extra_bytes=4096) as client:
        sink = ImageSink(tmp_path, "fox")
        reply = await client.generate({**body, "partial_images": 1}, EventReader(sink))
        assert reply.body.usage and (await sink.verify()).bytes > 190_000
        sink.discard()
        sink = ImageSink(tmp_path, "fox")
        with pytest.raises(InvalidResponseError, match="bytes in all"):
            await client.generate({**body, "partial_images": 3}, EventReader(sink))
        sink.discard()


# -- the mock ----------------------------------------------------------------------


def test_stream_cut_is_an_outcome_with_its_count():
    assert parse_outcome("stream_cut:2").after == 2
    assert parse_outcome("stream_cut").after == 0
    assert parse_fault_rates("stream_cut:1=0.5") == {"stream_cut:1": 0.5}
    for bad in ("stream_cut:x", "stream_cut:4", "stream_cut:-1"):
        with pytest.raises(ValueError, match="K must be a whole number from 0 to 3"):
            parse_outcome(bad)


async def test_the_mock_spaces_its_events_and_indexes_its_partials(make_mock):
    server = await make_mock(MockOptions(image_px=16, partial_delay=0.15))
    body = {"prompt": "a fox", "stream": True, "partial_images": 2}
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    text = b""
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.base_url + "/images/generations", json=body) as resp,
    ):
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        start = loop.time()
        async for line in resp.content:
            if line.startswith(b"event:"):
                arrivals.append(loop.time() - start)
            text += line
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith(b"data: ")]
    assert [e["type"] for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.get("partial_image_index") for e in events] == [0, 1, None]
    assert events[-1]["usage"]["output_tokens"] >= 2 * PARTIAL_TOKENS
    assert arrivals[-1] - arrivals[0] >= 0.25  # two more delays of 0.15 s


async def test_the_openai_dialect_refuses_stream_for_dall_e(make_mock):
    server = await make_mock(MockOptions(dialect="openai"))
    body = {"prompt": "a fox", "model": "dall-e-3", "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.base_url + "/images/generations", json=body) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "stream"


async def test_saved_partials_of_a_cut_attempt_are_replaced_by_the_retry(
    tmp_path, make_mock, capsys
):
    server = await make_mock(MockOptions(image_px=40, script={"a fox": ["stream_cut:1"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "partial_images": 2}])
    result = await run_cli(_argv(tmp_path, server, "--stream", "--save-partials"), capsys)
    assert result.code == 0, result.err
    out = tmp_path / "out"
    record = read_manifest(out)[0]
    assert record["ambiguous_retries"] == 1
    assert [p["path"] for p in record["partials"]] == [".partials/fox.0.png", ".partials/fox.1.png"]
    for item in record["partials"]:
        assert hashlib.sha256((out / item["path"]).read_bytes()).hexdigest() == item["sha256"]
    assert not [p for p in (out / ".partials").iterdir() if p.name.endswith(".tmp")]


async def test_an_error_event_is_retried_and_ambiguous_after_partials(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=32, script={"a fox": ["stream_error"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "partial_images": 1}])
    result = await run_cli(_argv(tmp_path, server, "--stream", "--verbose"), capsys)
    assert result.code == 0, result.err
    assert "the stream sent an error event: The server had an error." in result.err
    record = read_manifest(tmp_path / "out")[0]
    assert record["status"] == "ok" and record["attempts"] == 2
    assert record["ambiguous_retries"] == 1


async def test_stream_error_without_streaming_is_a_500(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=32, script={"a fox": ["stream_error"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox"}])
    result = await run_cli(_argv(tmp_path, server), capsys)
    assert result.code == 0, result.err
    assert read_manifest(tmp_path / "out")[0]["http_status"] == 500


class _Watched(EventReader):
    """An event reader that notes the most it held, and how much went through it."""

    most = 0
    fed = 0

    async def feed_json(self, chunk: bytes) -> None:
        await super().feed_json(chunk)
        self.fed += len(chunk)
        self.most = max(self.most, self.held)


async def test_a_large_streamed_image_is_never_held_whole(tmp_path, make_mock):
    """16 MB of base64 in the completed event, and previews: the reader holds a few KB."""
    server = await make_mock(MockOptions(image_px=256, payload_mb=12))
    config = RunConfig(out_dir=tmp_path, base_url=server.base_url, api_key=KEY)
    body = {"prompt": "a fox", "model": "gpt-image-2", "stream": True, "partial_images": 2}
    async with ImagesClient(config) as client:
        sink = ImageSink(tmp_path, "fox")
        reader = _Watched(sink)
        await client.generate(body, reader)
        assert (await sink.verify()).bytes > 11_000_000
        sink.discard()
    assert reader.fed > 16_000_000 and reader.partials == 2
    assert reader.most < 64 * 1024, reader.most
