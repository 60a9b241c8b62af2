"""The mock's Batch API over real loopback HTTP, with aiohttp and the official SDK: files,
batches on a fake clock, invalid input files, expiry, failed rows, cancels, paging, streaming."""

from __future__ import annotations

import base64
import io
import json
import tracemalloc
from collections.abc import Iterable
from typing import Any

import aiohttp
import click
import openai
import pytest
from click.testing import CliRunner
from PIL import Image

from pmock_batch.mock import MockOptions, MockServer, batch_routes, get_state
from pmock_batch.mock.command import mock_flags, mock_options

GENERATIONS = "/v1/images/generations"
DAY = 24 * 3600


def row(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": GENERATIONS,
        "body": {"prompt": prompt, **body},
    }


def jsonl(lines: Iterable[Any]) -> bytes:
    return b"".join(
        (json.dumps(x) if not isinstance(x, bytes) else x.decode()).encode() + b"\n" for x in lines
    )


def rows(count: int, prefix: str = "job") -> bytes:
    return jsonl(row(f"{prefix}-{i}", f"{prefix} prompt {i}") for i in range(count))


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


class Api:
    """The Batch API over aiohttp, as a client without the SDK sees it."""

    def __init__(self, session: aiohttp.ClientSession, server: MockServer, key: str | None = None):
        self.session = session
        self.server = server
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        url = self.server.base_url + path
        async with self.session.request(method, url, headers=self.headers, **kwargs) as resp:
            data = await resp.read()
            try:
                return resp.status, json.loads(data)
            except ValueError:
                return resp.status, data

    async def upload(
        self, data: bytes, *, filename: str = "input.jsonl", purpose: str | None = "batch"
    ) -> tuple[int, Any]:
        form = aiohttp.FormData()
        if purpose is not None:
            form.add_field("purpose", purpose)
        form.add_field("file", data, filename=filename, content_type="application/jsonl")
        return await self.call("POST", "/files", data=form)

    async def create(self, file_id: str, **fields: Any) -> tuple[int, Any]:
        body = {"input_file_id": file_id, "endpoint": GENERATIONS, "completion_window": "24h"}
        return await self.call("POST", "/batches", json={**body, **fields})

    async def submit(self, data: bytes, **fields: Any) -> dict[str, Any]:
        status, uploaded = await self.upload(data)
        assert status == 200, uploaded
        status, batch = await self.create(uploaded["id"], **fields)
        assert status == 200, batch
        return batch  # type: ignore[no-any-return]

    async def batch(self, batch_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/batches/{batch_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def content(self, file_id: str) -> bytes:
        async with self.session.get(
            f"{self.server.base_url}/files/{file_id}/content", headers=self.headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.read()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def batch_mock(make_mock, fake_clock, session):
    """``api = await batch_mock(**options)``: a mock on the fake clock, and an aiohttp client."""

    async def make(**options: Any) -> Api:
        server = await make_mock(MockOptions(**options), clock=fake_clock)
        return Api(session, server, options.get("require_key"))

    return make


def error_codes(batch: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(e["code"], e["line"]) for e in batch["errors"]["data"]]


# -- the lifecycle --------------------------------------------------------------------------


async def test_a_batch_moves_through_every_status_on_the_clock(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=10)
    batch = await api.submit(rows(10), metadata={"pmock_batch_input": "file-x"})
    assert batch["status"] == "validating"
    assert batch["object"] == "batch"
    assert (batch["endpoint"], batch["completion_window"]) == (GENERATIONS, "24h")
    assert batch["metadata"] == {"pmock_batch_input": "file-x"}
    assert batch["model"] == "gpt-image-2"
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}  # validating
    assert batch["expires_at"] == batch["created_at"] + DAY
    assert batch["id"].startswith("batch_")
    assert (batch["output_file_id"], batch["error_file_id"], batch["in_progress_at"]) == (None,) * 3
    seen = {}
    for step, status, done in [
        (0.99, "validating", 0),
        (0.01, "in_progress", 0),
        (4.0, "in_progress", 5),
        (3.99, "in_progress", 9),
        (0.01, "finalizing", 10),
        (0.99, "finalizing", 10),
        (0.01, "completed", 10),
    ]:
        fake_clock.advance(step)
        batch = await api.batch(batch["id"])
        assert (batch["status"], batch["request_counts"]["completed"]) == (status, done), step
        assert batch["request_counts"]["failed"] == 0
        assert batch["request_counts"]["total"] == (0 if status == "validating" else 10)
        assert batch["output_file_id"] is None or status == "completed"
        seen[status] = batch
    created = batch["created_at"]
    assert seen["in_progress"]["in_progress_at"] == created + 1
    assert seen["finalizing"]["finalizing_at"] == created + 9
    assert batch["completed_at"] == created + 10
    assert batch["error_file_id"] is None
    assert batch["failed_at"] is None and batch["expired_at"] is None
    lines = parse_lines(await api.content(batch["output_file_id"]))
    assert [x["custom_id"] for x in lines] == [f"job-{i}" for i in range(10)]
    first = lines[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["request_id"].startswith("req_")
    body = first["response"]["body"]
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert (image.format, image.size) == ("PNG", (1024, 1024))
    assert body["usage"]["total_tokens"] > 0 and body["size"] == "1024x1024"
    assert len({x["id"] for x in lines}) == 10
    again = parse_lines(await api.content(batch["output_file_id"]))
    assert [x["id"] for x in again] == [x["id"] for x in lines]  # the same ids at every read
    stats = api.server.stats
    assert stats.successes["job prompt 3"] == 1 and stats.attempts["job prompt 3"] == 1
    assert stats.requests == 0  # no generation request was made
    [created_stats] = stats.batches_created
    assert created_stats["id"] == batch["id"]
    assert created_stats["input_file_id"] == batch["input_file_id"]
    assert created_stats["custom_ids"] == [f"job-{i}" for i in range(10)]
    assert created_stats["metadata"] == {"pmock_batch_input": "file-x"}
    assert stats.file_downloads[batch["output_file_id"]] == 2


async def test_with_no_batch_seconds_a_batch_is_done_when_created(batch_mock):
    api = await batch_mock(batch_seconds=0)
    batch = await api.submit(rows(2))
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert batch["output_file_id"] is not None


async def test_the_openai_sdk_drives_the_whole_lifecycle(make_mock, fake_clock):
    server = await make_mock(
        MockOptions(batch_seconds=4, batch_cancel_delay=1, require_key="sk-test"), clock=fake_clock
    )
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    try:
        uploaded = await client.files.create(file=("jobs.jsonl", rows(3)), purpose="batch")
        assert (uploaded.purpose, uploaded.filename, uploaded.bytes) == (
            "batch",
            "jobs.jsonl",
            len(rows(3)),
        )
        assert uploaded.id.startswith("file-")
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint=GENERATIONS,
            completion_window="24h",
            metadata={"pmock_batch_input": uploaded.id},
        )
        assert batch.status == "validating" and batch.metadata == {"pmock_batch_input": uploaded.id}
        other = await client.batches.create(
            input_file_id=uploaded.id, endpoint=GENERATIONS, completion_window="24h"
        )
        fake_clock.advance(2)
        cancelling = await client.batches.cancel(other.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        fake_clock.advance(2)
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (3, 3)
        assert done.output_file_id is not None and done.error_file_id is None
        cancelled = await client.batches.retrieve(other.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
        listed = [b.id async for b in client.batches.list(limit=1)]
        assert listed == [other.id, batch.id]  # newest first, through the SDK's paging
        content = await client.files.content(done.output_file_id)
        lines = parse_lines(content.content)
        assert [x["custom_id"] for x in lines] == ["job-0", "job-1", "job-2"]
        assert cancelled.error_file_id is not None
        cancelled_lines = parse_lines((await client.files.content(cancelled.error_file_id)).content)
        assert cancelled_lines and all(
            x["error"]["code"] == "batch_cancelled" for x in cancelled_lines
        )
        deleted = await client.files.delete(done.output_file_id)
        assert deleted.deleted and deleted.id == done.output_file_id
        with pytest.raises(openai.NotFoundError):
            await client.files.content(done.output_file_id)
        with pytest.raises(openai.BadRequestError):
            await client.batches.cancel(batch.id)  # it has completed
    finally:
        await client.close()
    wrong = openai.AsyncOpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError):
            await wrong.files.create(file=("jobs.jsonl", rows(1)), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            await wrong.batches.retrieve(batch.id)
    finally:
        await wrong.close()
    assert server.stats.batch_cancels == [other.id]


async def test_every_route_wants_the_key(batch_mock):
    api = await batch_mock(require_key="sk-right")
    batch = await api.submit(rows(1))
    api.headers = {}
    for method, path in [
        ("GET", "/files"),
        ("GET", f"/files/{batch['input_file_id']}"),
        ("GET", f"/files/{batch['input_file_id']}/content"),
        ("DELETE", f"/files/{batch['input_file_id']}"),
        ("POST", "/batches"),
        ("GET", "/batches"),
        ("GET", f"/batches/{batch['id']}"),
        ("POST", f"/batches/{batch['id']}/cancel"),
    ]:
        status, body = await api.call(method, path)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key"), path
    status, _ = await api.upload(rows(1))
    assert status == 401


# -- invalid input files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([row("a", "x"), b"{not json", row("c", "z")], [("invalid_json_line", 2)]),
        ([row("a", "x"), row("a", "y")], [("duplicate_custom_id", 2)]),
        ([row("a", "x"), {**row("b", "y"), "url": "/v1/chat/completions"}], [("url_mismatch", 2)]),
        ([{**row("a", "x"), "method": "GET"}], [("invalid_method", 1)]),
        (
            [{"custom_id": "a", "method": "POST", "url": GENERATIONS}],
            [("missing_required_parameter", 1)],
        ),
        ([row("a", "x", size="13x13")], [("invalid_value", 1)]),
        ([row("a", "x", colour="red")], [("unknown_parameter", 1)]),
        (
            [row("a", "x", model="gpt-image-2"), row("b", "y", model="gpt-image-1")],
            [("model_mismatch", 2)],
        ),
        ([{**row("a", "x"), "custom_id": 7}], [("invalid_custom_id", 1)]),
        (
            [b"[1, 2]", row("a", "x"), row("a", "y")],
            [("invalid_json_line", 1), ("duplicate_custom_id", 3)],
        ),
    ],
)
async def test_an_invalid_input_file_fails_the_batch_with_its_errors(
    batch_mock, fake_clock, lines, expected
):
    api = await batch_mock(batch_seconds=10)
    batch = await api.submit(jsonl(lines))
    assert batch["status"] == "validating"
    fake_clock.advance(1)
    batch = await api.batch(batch["id"])
    assert batch["status"] == "failed"
    assert error_codes(batch) == expected
    assert all(e["message"] for e in batch["errors"]["data"])
    assert batch["errors"]["object"] == "list"
    assert batch["failed_at"] == batch["created_at"] + 1
    assert batch["in_progress_at"] is None and batch["completed_at"] is None
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    fake_clock.advance(100)
    batch = await api.batch(batch["id"])
    assert (batch["status"], batch["output_file_id"], batch["error_file_id"]) == (
        "failed",
        None,
        None,
    )


async def test_an_invalid_body_names_its_parameter(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=1)
    batch = await api.submit(jsonl([row("a", "x", size="13x13")]))
    fake_clock.advance(1)
    [error] = (await api.batch(batch["id"]))["errors"]["data"]
    assert error["param"] == "body.size" and "size" in error["message"]


async def test_an_empty_file_and_too_many_lines_fail(batch_mock, fake_clock, monkeypatch):
    api = await batch_mock(batch_seconds=1)
    empty = await api.submit(b"\n")
    monkeypatch.setattr("pmock_batch.mock.batch_input.MAX_BATCH_ROWS", 3)
    big = await api.submit(rows(4))
    fake_clock.advance(1)
    assert error_codes(await api.batch(empty["id"])) == [("empty_file", None)]
    assert error_codes(await api.batch(big["id"])) == [("too_many_tasks", None)]


async def test_the_openai_dialect_checks_bodies_per_model(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=1, dialect="openai")
    bad = await api.submit(jsonl([row("a", "x", response_format="b64_json")]))
    good = await api.submit(jsonl([row("a", "x", n=2, size="1536x1024")]))
    fake_clock.advance(1)
    assert error_codes(await api.batch(bad["id"])) == [("unknown_parameter", 1)]
    done = await api.batch(good["id"])
    assert done["status"] == "completed"
    [line] = parse_lines(await api.content(done["output_file_id"]))
    assert len(line["response"]["body"]["data"]) == 2
    assert line["response"]["body"]["size"] == "1536x1024"


# -- uploads and creation -------------------------------------------------------------------


async def test_uploads_follow_the_batch_rules(batch_mock, monkeypatch):
    api = await batch_mock()
    status, body = await api.upload(rows(1), filename="input.json")
    assert (status, body["error"]["code"]) == (400, "invalid_file_format")
    status, body = await api.upload(rows(1), purpose=None)
    assert (status, body["error"]["param"]) == (400, "purpose")
    status, body = await api.upload(rows(1), purpose="holiday")
    assert (status, body["error"]["code"]) == (400, "invalid_value")
    status, body = await api.call("POST", "/files", json={"purpose": "batch"})
    assert status == 400
    monkeypatch.setattr(batch_routes, "MAX_BATCH_FILE_BYTES", 100)
    status, body = await api.upload(rows(10))
    assert (status, body["error"]["code"]) == (400, "file_too_large")
    status, body = await api.upload(b"notes", filename="notes.txt", purpose="user_data")
    assert status == 200 and body["purpose"] == "user_data"
    status, listed = await api.call("GET", "/files")
    assert [f["id"] for f in listed["data"]] == [body["id"]]
    assert api.server.stats.files_uploaded == [
        {"id": body["id"], "filename": "notes.txt", "purpose": "user_data", "bytes": 5}
    ]


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"endpoint": "/v1/images/variations"}, "endpoint", "invalid_value"),
        ({"endpoint": "/v1/chat/completions"}, "endpoint", "invalid_value"),
        ({"completion_window": "1h"}, "completion_window", "invalid_value"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"metadata": {"k": 1}}, "metadata", "invalid_value"),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "invalid_value"),
        ({"metadata": {"k": "v" * 513}}, "metadata", "invalid_value"),
        ({"input_file_id": "file-nothere"}, "input_file_id", "invalid_value"),
        ({"colour": "red"}, "colour", "unknown_parameter"),
    ],
)
async def test_creating_a_batch_checks_its_fields(batch_mock, fields, param, code):
    api = await batch_mock()
    _, uploaded = await api.upload(rows(1))
    status, body = await api.create(uploaded["id"], **fields)
    assert (status, body["error"]["param"], body["error"]["code"]) == (400, param, code)
    assert api.server.stats.batches_created == []


async def test_a_batch_needs_a_batch_purpose_file_and_its_required_fields(batch_mock):
    api = await batch_mock()
    _, notes = await api.upload(rows(1), filename="notes.jsonl", purpose="user_data")
    status, body = await api.create(notes["id"])
    assert (status, body["error"]["param"]) == (400, "input_file_id")
    status, body = await api.call("POST", "/batches", json={"input_file_id": notes["id"]})
    assert (status, body["error"]["code"]) == (400, "missing_required_parameter")
    status, body = await api.call("POST", "/batches", data=b"{nope")
    assert status == 400
    metadata = {f"k{i}": "v" * 512 for i in range(16)}
    _, uploaded = await api.upload(rows(1))
    status, body = await api.create(
        uploaded["id"],
        metadata=metadata,
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert status == 200 and body["metadata"] == metadata


# -- what it simulates ----------------------------------------------------------------------


async def test_expiry_returns_the_done_rows_and_expires_the_rest(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=10, batch_expire_after_fraction=0.5)
    batch = await api.submit(rows(10))
    fake_clock.advance(9.5)
    batch = await api.batch(batch["id"])
    assert batch["status"] == "in_progress"
    assert batch["request_counts"] == {"total": 10, "completed": 5, "failed": 0}
    fake_clock.advance(0.5)
    batch = await api.batch(batch["id"])
    assert batch["status"] == "expired"
    assert batch["expired_at"] == batch["created_at"] + 10
    assert batch["completed_at"] is None and batch["finalizing_at"] is None
    assert batch["request_counts"] == {"total": 10, "completed": 5, "failed": 0}
    done = parse_lines(await api.content(batch["output_file_id"]))
    assert [x["custom_id"] for x in done] == [f"job-{i}" for i in range(5)]
    expired = parse_lines(await api.content(batch["error_file_id"]))
    assert [x["custom_id"] for x in expired] == [f"job-{i}" for i in range(5, 10)]
    for line in expired:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired" and line["error"]["message"]
        assert line["id"].startswith("batch_req_")
    assert api.server.stats.successes["job prompt 4"] == 1
    assert "job prompt 5" not in api.server.stats.successes


@pytest.mark.parametrize(("fraction", "output", "error"), [(0.0, False, True), (1.0, True, False)])
async def test_the_file_ids_are_null_when_there_is_nothing_to_put_in_them(
    batch_mock, fake_clock, fraction, output, error
):
    api = await batch_mock(batch_seconds=1, batch_expire_after_fraction=fraction)
    batch = await api.submit(rows(4))
    fake_clock.advance(1)
    batch = await api.batch(batch["id"])
    assert batch["status"] == "expired"
    assert (batch["output_file_id"] is not None, batch["error_file_id"] is not None) == (
        output,
        error,
    )


async def test_fail_rows_end_in_the_error_file(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=1, batch_fail_rows=2)
    batch = await api.submit(rows(5))
    fake_clock.advance(1)
    batch = await api.batch(batch["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 5, "completed": 3, "failed": 2}
    failed = parse_lines(await api.content(batch["error_file_id"]))
    assert [x["custom_id"] for x in failed] == ["job-0", "job-1"]
    for line in failed:
        assert line["error"] is None
        assert line["response"]["status_code"] == 500
        assert line["response"]["body"]["error"]["type"] == "server_error"
        assert line["response"]["request_id"].startswith("req_")
    ok = parse_lines(await api.content(batch["output_file_id"]))
    assert [x["custom_id"] for x in ok] == ["job-2", "job-3", "job-4"]
    every = await api.submit(rows(2, "other"))
    fake_clock.advance(1)
    every = await api.batch(every["id"])
    assert every["output_file_id"] is None and every["error_file_id"] is not None


async def test_moderation_words_and_scripts_apply_to_rows(batch_mock, fake_clock):
    api = await batch_mock(
        batch_seconds=1,
        moderation_words=("forbidden",),
        script={"flaky": ["503", "ok"], "broken": ["corrupt"], "gone": ["drop"]},
    )
    lines = [row("a", "a forbidden fox"), row("b", "flaky"), row("c", "broken"), row("d", "gone")]
    batch = await api.submit(jsonl(lines))
    fake_clock.advance(1)
    batch = await api.batch(batch["id"])
    assert batch["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    failed = {
        x["custom_id"]: x["response"]
        for x in parse_lines(await api.content(batch["error_file_id"]))
    }
    assert failed["a"]["status_code"] == 400
    assert failed["a"]["body"]["error"]["code"] == "moderation_blocked"
    assert failed["b"]["status_code"] == 503
    ok = {
        x["custom_id"]: x["response"]["body"]
        for x in parse_lines(await api.content(batch["output_file_id"]))
    }
    broken = base64.b64decode(ok["c"]["data"][0]["b64_json"])
    with pytest.raises(OSError):
        Image.open(io.BytesIO(broken)).load()  # corrupt: a cut-off image
    Image.open(io.BytesIO(base64.b64decode(ok["d"]["data"][0]["b64_json"]))).load()  # drop: n/a
    retry = await api.submit(jsonl([row("b2", "flaky")]))  # the script's next attempt: ok
    fake_clock.advance(1)
    assert (await api.batch(retry["id"]))["request_counts"]["completed"] == 1


async def test_cancel_spends_the_delay_cancelling_and_keeps_the_done_rows(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=10, batch_cancel_delay=3)
    batch = await api.submit(rows(10))
    fake_clock.advance(5)
    status, cancelling = await api.call("POST", f"/batches/{batch['id']}/cancel")
    assert status == 200 and cancelling["status"] == "cancelling"
    assert cancelling["cancelling_at"] == cancelling["created_at"] + 5
    assert cancelling["request_counts"]["completed"] == 5
    fake_clock.advance(2.9)
    again = await api.batch(batch["id"])
    assert again["status"] == "cancelling" and again["request_counts"]["completed"] == 5
    assert again["finalizing_at"] is None and again["output_file_id"] is None
    status, twice = await api.call("POST", f"/batches/{batch['id']}/cancel")
    assert status == 200 and twice["status"] == "cancelling"
    fake_clock.advance(0.1)
    done = await api.batch(batch["id"])
    assert done["status"] == "cancelled"
    assert done["cancelled_at"] == done["created_at"] + 8
    assert done["completed_at"] is None
    assert [x["custom_id"] for x in parse_lines(await api.content(done["output_file_id"]))] == [
        f"job-{i}" for i in range(5)
    ]
    cancelled = parse_lines(await api.content(done["error_file_id"]))
    assert [x["custom_id"] for x in cancelled] == [f"job-{i}" for i in range(5, 10)]
    assert all(x["error"]["code"] == "batch_cancelled" and x["response"] is None for x in cancelled)
    status, refused = await api.call("POST", f"/batches/{batch['id']}/cancel")
    assert status == 400 and "cancelled" in refused["error"]["message"]
    assert api.server.stats.batch_cancels == [batch["id"]]


async def test_a_batch_cancelled_while_validating_has_no_output(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=10, batch_cancel_delay=0)
    batch = await api.submit(rows(3))
    status, cancelled = await api.call("POST", f"/batches/{batch['id']}/cancel")
    assert status == 200 and cancelled["status"] == "cancelled"
    assert cancelled["output_file_id"] is None and cancelled["error_file_id"] is not None
    assert cancelled["in_progress_at"] is None
    status, body = await api.call("POST", "/batches/batch_nothere/cancel")
    assert status == 404 and "batch_nothere" in body["error"]["message"]


# -- listing and deleting -------------------------------------------------------------------


async def test_listing_is_newest_first_and_pages_with_after_and_limit(batch_mock):
    api = await batch_mock()
    ids = [(await api.submit(rows(1, f"b{i}")))["id"] for i in range(5)]
    newest = ids[::-1]
    status, page = await api.call("GET", "/batches", params={"limit": "2"})
    assert status == 200 and page["object"] == "list"
    assert [b["id"] for b in page["data"]] == newest[:2]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (newest[0], newest[1], True)
    _, page = await api.call("GET", "/batches", params={"limit": "2", "after": page["last_id"]})
    assert [b["id"] for b in page["data"]] == newest[2:4] and page["has_more"]
    _, page = await api.call("GET", "/batches", params={"limit": "2", "after": page["last_id"]})
    assert [b["id"] for b in page["data"]] == newest[4:] and not page["has_more"]
    _, page = await api.call("GET", "/batches")
    assert [b["id"] for b in page["data"]] == newest and not page["has_more"]
    _, page = await api.call("GET", "/batches", params={"after": "batch_unknown"})
    assert (page["data"], page["first_id"], page["last_id"], page["has_more"]) == (
        [],
        None,
        None,
        False,
    )
    for bad in ("0", "101", "x"):
        status, body = await api.call("GET", "/batches", params={"limit": bad})
        assert (status, body["error"]["param"]) == (400, "limit")
    status, body = await api.call("GET", "/batches/batch_unknown")
    assert status == 404 and "batch_unknown" in body["error"]["message"]


async def test_deleting_files(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=1, batch_fail_rows=1)
    batch = await api.submit(rows(2))
    fake_clock.advance(1)
    batch = await api.batch(batch["id"])
    _, listed = await api.call("GET", "/files")
    ids = {f["id"]: f for f in listed["data"]}
    assert set(ids) == {batch["input_file_id"], batch["output_file_id"], batch["error_file_id"]}
    assert ids[batch["output_file_id"]]["purpose"] == "batch_output"
    assert ids[batch["error_file_id"]]["bytes"] == len(await api.content(batch["error_file_id"]))
    _, only = await api.call("GET", "/files", params={"purpose": "batch"})
    assert [f["id"] for f in only["data"]] == [batch["input_file_id"]]
    assert await api.content(batch["input_file_id"]) == rows(2)
    for file_id in (batch["input_file_id"], batch["output_file_id"], batch["error_file_id"]):
        status, body = await api.call("DELETE", f"/files/{file_id}")
        assert (status, body) == (200, {"id": file_id, "object": "file", "deleted": True})
        status, _ = await api.call("GET", f"/files/{file_id}/content")
        assert status == 404
        status, _ = await api.call("GET", f"/files/{file_id}")
        assert status == 404
    status, body = await api.call("DELETE", f"/files/{batch['input_file_id']}")
    assert status == 404 and body["error"]["message"]
    _, listed = await api.call("GET", "/files")
    assert listed["data"] == [] and listed["first_id"] is None
    stats = api.server.stats
    assert stats.files_deleted == [
        batch["input_file_id"],
        batch["output_file_id"],
        batch["error_file_id"],
    ]
    assert (await api.batch(batch["id"]))["output_file_id"] == batch[
        "output_file_id"
    ]  # as the real


async def test_the_stats_endpoint_shows_the_batch_counts_and_reset_clears_them(
    batch_mock, fake_clock
):
    api = await batch_mock(batch_seconds=0)
    batch = await api.submit(rows(1), metadata={"a": "b"})
    await api.call("DELETE", f"/files/{batch['input_file_id']}")
    async with api.session.get(api.server.url + "/_mock/stats") as resp:
        stats = await resp.json()
    assert [b["id"] for b in stats["batches_created"]] == [batch["id"]]
    assert stats["batches_created"][0]["metadata"] == {"a": "b"}
    assert stats["files_uploaded"][0]["id"] == batch["input_file_id"]
    assert stats["files_deleted"] == [batch["input_file_id"]]
    assert stats["batch_cancels"] == [] and stats["file_downloads"] == {}
    async with api.session.post(api.server.url + "/_mock/reset") as resp:
        stats = await resp.json()
    assert stats["batches_created"] == [] and stats["files_uploaded"] == []
    assert (await api.batch(batch["id"]))["status"] == "completed"  # the batches stay


async def test_the_stats_endpoint_counts_the_successes_of_batches_that_have_ended(
    batch_mock, fake_clock
):
    api = await batch_mock(batch_seconds=1, batch_fail_rows=1)
    await api.submit(rows(3))
    fake_clock.advance(1)  # no Batch API call since: /_mock/stats settles the batch itself
    async with api.session.get(api.server.url + "/_mock/stats") as resp:
        stats = await resp.json()
    assert stats["successes"] == {"job prompt 1": 1, "job prompt 2": 1}
    assert stats["attempts"] == {"job prompt 0": 1, "job prompt 1": 1, "job prompt 2": 1}


# -- the output file: sizes and streaming ---------------------------------------------------


async def test_output_lines_carry_images_of_the_payload_size(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=1, payload_mb=0.3)
    batch = await api.submit(
        jsonl([row(f"r{i}", f"prompt {i}", output_format="jpeg") for i in range(3)])
    )
    fake_clock.advance(1)
    batch = await api.batch(batch["id"])
    data = await api.content(batch["output_file_id"])
    for line in parse_lines(data):
        image = base64.b64decode(line["response"]["body"]["data"][0]["b64_json"])
        assert abs(len(image) - 300_000) <= 0.05 * 300_000
        Image.open(io.BytesIO(image)).load()
    _, info = await api.call("GET", f"/files/{batch['output_file_id']}")
    assert abs(info["bytes"] - len(data)) <= 0.1 * len(data)  # an estimate, near enough


async def test_a_large_output_file_streams_in_chunks_without_being_built_in_memory(
    batch_mock, fake_clock
):
    api = await batch_mock(batch_seconds=1, payload_mb=0.5)
    batch = await api.submit(jsonl(row(f"r{i}", "one picture") for i in range(40)))
    fake_clock.advance(1)
    batch = await api.batch(batch["id"])
    url = f"{api.server.base_url}/files/{batch['output_file_id']}/content"
    async with api.session.post(
        api.server.url + GENERATIONS, json={"prompt": "one picture"}
    ) as resp:
        assert resp.status == 200 and await resp.read()  # the image is in the cache now
    total = lines = 0
    tracemalloc.start()
    try:
        async with api.session.get(url) as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert "Content-Length" not in resp.headers
            async for chunk in resp.content.iter_chunked(1 << 16):
                total += len(chunk)
                lines += chunk.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == 40 and total > 40 * 600_000  # about 27 MB in all
    assert peak < 8_000_000, peak  # a few lines' worth, not the file


async def test_streaming_an_output_file_does_not_fill_the_image_cache(batch_mock, fake_clock):
    api = await batch_mock(batch_seconds=0)
    batch = await api.submit(rows(6))
    lines = parse_lines(await api.content(batch["output_file_id"]))
    assert len(lines) == 6
    assert len(get_state(api.server.app).images) == 0


# -- options and flags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_seconds": -1},
        {"batch_seconds": float("inf")},
        {"batch_cancel_delay": -0.5},
        {"batch_expire_after_fraction": 1.5},
        {"batch_expire_after_fraction": -0.1},
        {"batch_expire_after_fraction": True},
        {"batch_fail_rows": -1},
        {"batch_fail_rows": 1.5},
    ],
)
def test_batch_options_are_checked(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MockOptions(**kwargs)


@pytest.mark.parametrize("prefix", ["mock-", ""])
def test_the_batch_flags_reach_the_options_in_both_spellings(prefix):
    @click.command()
    @mock_flags(prefix=prefix)
    def command(**values: Any) -> None:
        options = mock_options(values)
        click.echo(
            f"{options.batch_seconds} {options.batch_expire_after_fraction} "
            f"{options.batch_fail_rows} {options.batch_cancel_delay}"
        )

    runner = CliRunner()
    result = runner.invoke(command, [])
    assert result.output.strip() == "2.0 None 0 0.5"
    args = [f"--{prefix}batch-seconds", "7", f"--{prefix}batch-expire-after-fraction", "0.25"]
    args += [f"--{prefix}batch-fail-rows", "3", f"--{prefix}batch-cancel-delay", "1.5"]
    result = runner.invoke(command, args)
    assert result.output.strip() == "7.0 0.25 3 1.5", result.output
    result = runner.invoke(command, [f"--{prefix}batch-expire-after-fraction", "2"])
    assert result.exit_code == 2


async def test_files_list_newest_first_and_pages(batch_mock):
    api = await batch_mock()
    ids = [(await api.upload(rows(1, f"f{i}"), filename=f"f{i}.jsonl"))[1]["id"] for i in range(3)]
    _, page = await api.call("GET", "/files", params={"limit": "2"})
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"]
    _, page = await api.call("GET", "/files", params={"after": page["last_id"]})
    assert [f["id"] for f in page["data"]] == [ids[0]] and not page["has_more"]
    _, page = await api.call("GET", "/files", params={"order": "asc"})
    assert [f["id"] for f in page["data"]] == ids
    file = page["data"][0]
    assert (file["object"], file["filename"], file["purpose"]) == ("file", "f0.jsonl", "batch")
    assert file["expires_at"] == file["created_at"] + 30 * DAY


async def test_an_output_line_names_its_row_before_its_body(batch_mock, fake_clock):
    """``id`` and ``custom_id`` come first and ``response.body`` last but ``error``, so a
    client streaming a line knows its row before the base64 arrives."""
    api = await batch_mock(batch_seconds=0)
    batch = await api.submit(rows(1))
    [line] = (await api.content(batch["output_file_id"])).splitlines()
    assert line.startswith(b'{"id": "batch_req_')
    assert line.index(b'"custom_id": "job-0"') < line.index(b'"body": {')
    assert line.endswith(b'}, "error": null}')
    assert list(json.loads(line)) == ["id", "custom_id", "response", "error"]
    assert list(json.loads(line)["response"]) == ["status_code", "request_id", "body"]
