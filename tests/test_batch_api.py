"""The Batch API runner (issue 12), over real loopback HTTP, with the poll sleep injected."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from batchfake import FakeBatchAPI
from helpers import by_id, open_image, read_manifest, run_cli, write_jobs

from pmock_batch.batchapi import BatchOptions, BatchState
from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions, MockServer
from pmock_batch.run import run_batch

KEY = "sk-batch-test-key"


class Crash(BaseException):
    """Stands in for kill -9: not an Exception, so nothing in the engine handles it."""


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


@contextlib.asynccontextmanager
async def _serve(api: FakeBatchAPI) -> AsyncIterator[str]:
    """``api`` on a loopback port: its base URL."""
    runner = web.AppRunner(api.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeBatchAPI, str]]:
    api = FakeBatchAPI()
    async with _serve(api) as url:
        yield api, url


async def _no_sleep(_: float) -> None:
    return None


JOBS = [
    {"id": "fox", "prompt": "a fox"},
    {"id": "owl", "prompt": "an owl", "n": 2},
    {"prompt": "a quiet harbour at dawn"},
]


async def _run(tmp_path: Path, base_url: str, *, resume: bool = True, **options):
    path = tmp_path / "jobs.jsonl"
    if not path.exists():
        write_jobs(path, JOBS)
    scanned = scan(path)
    config = RunConfig(out_dir=tmp_path / "out", base_url=base_url, api_key=KEY)
    opts = BatchOptions(sleep=_no_sleep, poll_interval=0.01, **options)
    return await run_batch(config, iter_jobs(path, scanned), resume=resume, batch=opts)


def _ok_once(out: Path, n: int) -> None:
    records = read_manifest(out)
    assert len(records) == n
    assert {r["status"] for r in records} == {"ok"}
    for r in records:
        assert r["via"] == "batch" and r["batch_id"] and r["request_id"]
        for f in r["files"]:
            open_image(out / f["path"])


async def test_batch_api_end_to_end(fake, tmp_path):
    api, url = fake
    summary = await _run(tmp_path, url)
    assert (summary.ok, summary.failed, summary.pending, summary.images) == (3, 0, 0, 4)
    assert len(api.batches) == 1
    out = tmp_path / "out"
    _ok_once(out, 3)
    records = by_id(read_manifest(out))
    assert [f["path"] for f in records["owl"]["files"]] == ["owl-1.png", "owl-2.png"]
    assert records["fox"]["usage"] == {"total_tokens": 10}
    for record in records.values():  # priced at the Batch API's half price
        assert record["cost_usd"] > 0
        assert record["cost_direct_usd"] == pytest.approx(2 * record["cost_usd"], abs=2e-6)
    assert summary.cost_usd == pytest.approx(sum(r["cost_usd"] for r in records.values()))
    assert summary.cost_direct_usd == pytest.approx(2 * summary.cost_usd, abs=1e-5)
    page = (out / "report.html").read_text(encoding="utf-8")
    batch_id = records["fox"]["batch_id"]
    assert f'<li data-meta="via">Batch API, {batch_id}</li>' in page
    assert 'data-meta="time"' not in page  # a batch's jobs have no time of their own
    assert api.files == {}  # input, output and error files deleted after collection
    state = BatchState.load(out)
    assert [b.collected for b in state.batches.values()] == [True]
    again = await _run(tmp_path, url)  # resume: nothing owed, nothing submitted
    assert (again.skipped, len(api.batches)) == (3, 1)


async def test_keep_files(fake, tmp_path):
    api, url = fake
    await _run(tmp_path, url, keep_files=True)
    assert len(api.files) == 2 and not api.deleted  # the input and the output


@pytest.mark.parametrize("step", ["uploading", "upload", "batch", "status", "collected"])
async def test_kill_at_each_step_then_rerun(fake, tmp_path, step):
    api, url = fake

    def crash(event: str) -> None:
        if event == step:
            raise Crash

    with pytest.raises(Crash):
        await _run(tmp_path, url, on_step=crash)
    await _run(tmp_path, url)
    inputs = [b["input_file_id"] for b in api.batches.values()]
    assert len(inputs) == 1  # one batch for the rows, whatever the kill
    records = read_manifest(tmp_path / "out")
    ok = [r["id"] for r in records if r["status"] == "ok"]
    assert len(ok) == len(set(ok)) == 3  # every job ok, once
    assert not api.files  # nothing left on the server


async def test_orphan_upload_is_deleted(fake, tmp_path):
    api, url = fake
    out = tmp_path / "out"
    BatchState(out).uploading("pmock-batch-orphan.jsonl")  # killed before the answer was kept
    api._file("pmock-batch-orphan.jsonl", b"{}\n")
    await _run(tmp_path, url)
    assert api.deleted[0] == "file-1"
    assert not BatchState.load(out).intents


async def test_expired_half_done_resubmits_the_missing_rows_once(fake, tmp_path):
    api, url = fake
    write_jobs(tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(6)])
    api.expire_fraction = 0.5
    summary = await _run(tmp_path, url)
    assert summary.ok == 6
    first, second = api.rows_by_batch.values()
    assert len(first) == 6 and sorted(second) == sorted(first[3:])
    assert api.batches[next(iter(api.batches))]["status"] == "expired"


async def test_no_wait_twice(fake, tmp_path):
    api, url = fake
    api.steps = 3
    first = await _run(tmp_path, url, wait=False)
    assert (first.pending, first.ok, first.not_run) == (3, 0, 0)
    records = read_manifest(tmp_path / "out")
    assert {r["status"] for r in records} == {"pending"}
    second = await _run(tmp_path, url, wait=False)  # in progress: still pending
    assert second.pending == 3 and len(api.batches) == 1
    third = await _run(tmp_path, url, wait=False)
    assert (third.ok, third.pending, len(api.batches)) == (3, 0, 1)


async def test_a_direct_run_leaves_pending_jobs_to_their_batch(fake, tmp_path, caplog):
    """Jobs in a batch still on the server are paid for there: a direct run does not make
    them again, says so, and a later --batch-api run collects them."""
    api, url = fake
    api.steps = 3
    first = await _run(tmp_path, url, wait=False)
    assert first.pending == 3
    path = tmp_path / "jobs.jsonl"
    async with MockServer(MockOptions()) as direct:
        config = RunConfig(out_dir=tmp_path / "out", base_url=direct.base_url, api_key=KEY)
        with caplog.at_level("WARNING", logger="pmock_batch"):
            summary = await run_batch(config, iter_jobs(path, scan(path)))
        assert direct.stats.requests == 0  # nothing made twice
    assert (summary.pending, summary.ok, summary.skipped, summary.done) == (3, 0, 0, 3)
    assert "3 job(s) wait in Batch API batches still on the server" in caplog.text
    assert {r["status"] for r in read_manifest(tmp_path / "out")} == {"pending"}
    collected = await _run(tmp_path, url)
    assert (collected.ok, len(api.batches)) == (3, 1)  # the same batch, collected


async def _direct(tmp_path: Path) -> tuple[Any, int]:
    """A run without --batch-api into the same OUT; its summary and the requests it made."""
    path = tmp_path / "jobs.jsonl"
    async with MockServer(MockOptions()) as direct:
        config = RunConfig(out_dir=tmp_path / "out", base_url=direct.base_url, api_key=KEY)
        summary = await run_batch(config, iter_jobs(path, scan(path)))
        return summary, direct.stats.requests


async def test_a_direct_run_makes_what_no_live_batch_holds(fake, tmp_path, capsys, monkeypatch):
    """Pending jobs are left to their batch only while it may hold them: forgotten, or
    with no batches.jsonl at all, a direct run makes them."""
    api, url = fake
    api.steps = 3
    assert (await _run(tmp_path, url, wait=False)).pending == 3
    dry = await run_cli(
        ["jobs.jsonl", "--out", str(tmp_path / "out"), "--base-url", url, "--dry-run"], capsys
    )
    assert "3 already done (3 in Batch API batches), 0 to run" in dry.out
    (batch_id,) = api.batches
    monkeypatch.delenv("PMOCK_API_KEY")
    forgot = await run_cli(["batches", str(tmp_path / "out"), "--forget", batch_id], capsys)
    assert forgot.code == 0
    summary, requests = await _direct(tmp_path)
    assert (summary.ok, requests) == (3, 4)  # forgotten: made here (owl has n=2)


async def test_pending_with_no_batch_log_is_made_by_a_direct_run(fake, tmp_path):
    api, url = fake
    api.steps = 3
    assert (await _run(tmp_path, url, wait=False)).pending == 3
    (tmp_path / "out" / "batches.jsonl").unlink()  # merged in from elsewhere, or deleted
    summary, requests = await _direct(tmp_path)
    assert (summary.ok, summary.pending, requests) == (3, 0, 4)


async def test_an_older_record_elsewhere_does_not_hide_a_newer_pending_one(fake, tmp_path):
    api, url = fake
    api.steps = 3
    assert (await _run(tmp_path, url, wait=False)).pending == 3
    out = tmp_path / "out"
    fox = by_id(read_manifest(out))["fox"]
    stamp = "2000-01-01T00:00:00.000Z"
    old = {**fox, "status": "failed", "files": [], "started_at": stamp, "finished_at": stamp}
    (out / "manifest.shard-1-of-2.jsonl").write_text(json.dumps(old) + "\n")
    summary, requests = await _direct(tmp_path)
    assert (summary.pending, requests) == (3, 0)  # still in their batch: never made twice


async def test_a_mock_run_never_forgets_a_real_servers_batch(fake, tmp_path):
    """Only a batch an earlier --mock run made is forgotten by a --mock run: a real one
    (perhaps paid for) stops the run instead."""
    api, url = fake
    api.steps = 3
    assert (await _run(tmp_path, url, wait=False)).pending == 3
    (real_id,) = api.batches
    async with _serve(FakeBatchAPI()) as other:  # another server: it does not know the batch
        stopped = await _run(tmp_path, other, mock=True)
    assert stopped.aborted is not None and "--forget" in stopped.aborted
    assert not BatchState.load(tmp_path / "out").batches[real_id].lost


async def test_a_batch_the_server_does_not_know_stops_the_run_until_forgotten(
    fake, tmp_path, capsys, monkeypatch
):
    api, url = fake
    api.steps = 3
    assert (await _run(tmp_path, url, wait=False)).pending == 3
    (batch_id,) = api.batches
    api.batches.clear()  # another key, another URL: the server does not know it
    stuck = await _run(tmp_path, url)
    assert stuck.aborted is not None and f"--forget {batch_id}" in stuck.aborted
    assert {r["status"] for r in read_manifest(tmp_path / "out")} == {"pending"}
    out = str(tmp_path / "out")
    monkeypatch.delenv("PMOCK_API_KEY")  # no key, so no request: nothing leaves this machine
    listed = await run_cli(["batches", out], capsys)  # no key needed to list
    assert listed.code == 0 and batch_id in listed.out and "not refreshed" in listed.err
    forgot = await run_cli(["batches", out, "--forget", batch_id], capsys)
    assert forgot.code == 0 and f"forgot {batch_id}" in forgot.err
    assert "forgotten" in (await run_cli(["batches", out], capsys)).out
    again = await _run(tmp_path, url)
    assert (again.ok, again.aborted, len(api.batches)) == (3, None, 1)  # submitted anew
    unknown = await run_cli(["batches", out, "--forget", "batch_nope"], capsys)
    assert unknown.code == 2 and "no batch 'batch_nope'" in unknown.err


async def test_error_rows_fail_and_are_not_resubmitted(fake, tmp_path):
    api, url = fake
    api.fail = {"fox", "owl-2"}
    summary = await _run(tmp_path, url)
    assert (summary.ok, summary.failed) == (1, 2)
    assert len(api.batches) == 1
    records = by_id(read_manifest(tmp_path / "out"))
    assert records["fox"]["error"]["kind"] == "bad_request"
    assert records["fox"]["error"]["status"] == 400
    assert [f["path"] for f in records["owl"]["files"]] == ["owl-1.png"]
    again = await _run(tmp_path, url)  # a failed job is owed again next run
    assert again.failed == 2 and len(api.batches) == 2
    second = list(api.rows_by_batch.values())[1]
    assert sorted(second) == ["fox", "owl-2"]  # owl-1 was saved: never submitted again
    api.fail = set()
    third = await _run(tmp_path, url)
    assert (third.ok, third.skipped) == (2, 1)
    assert sorted(list(api.rows_by_batch.values())[2]) == ["fox", "owl-2"]
    owl = by_id(read_manifest(tmp_path / "out"))["owl"]
    assert owl["status"] == "ok"
    assert [f["path"] for f in owl["files"]] == ["owl-1.png", "owl-2.png"]
    assert owl["kept"] == 1


async def test_mixed_direct_and_batch_history(fake, tmp_path):
    api, url = fake
    path = write_jobs(tmp_path / "jobs.jsonl", JOBS[:1])
    async with MockServer(MockOptions()) as direct:
        config = RunConfig(out_dir=tmp_path / "out", base_url=direct.base_url, api_key=KEY)
        await run_batch(config, iter_jobs(path, scan(path)))
    write_jobs(path, JOBS)
    summary = await _run(tmp_path, url)
    assert (summary.skipped, summary.ok) == (1, 2)
    rows = api.rows_by_batch[next(iter(api.batches))]
    assert rows[:2] == ["owl-1", "owl-2"] and rows[2].startswith("a-quiet-harbour-at-dawn")
    records = by_id(read_manifest(tmp_path / "out"))
    assert "via" not in records["fox"] and records["owl"]["via"] == "batch"


async def test_cli_batch_api_json_and_batches_command(fake, tmp_path, capsys, monkeypatch):
    api, url = fake
    monkeypatch.setenv("PMOCK_BASE_URL", url)
    write_jobs(tmp_path / "jobs.jsonl", JOBS)
    args = ["jobs.jsonl", "--out", "out", "--batch-api", "--no-wait", "--json", "-q"]
    api.steps = 5
    result = await run_cli(args, capsys)
    assert result.code == 0, result.err
    counts = json.loads(result.out.splitlines()[-1])["jobs"]
    assert counts["pending"] == 3
    assert "pending (in a running batch)" in result.err  # the summary row
    assert "1 batch(es) still running on the server" in result.err
    listed = await run_cli(["batches", "out"], capsys)
    assert listed.code == 0 and "batch_" in listed.out and "in_progress" in listed.out
    cancelled = await run_cli(["batches", "out", "--cancel", "--yes"], capsys)
    assert cancelled.code == 0 and "cancelling" in cancelled.out
    final = await run_cli([*args[:-3], "--poll-interval", "0.01", "--json"], capsys)
    assert final.code == 0, final.err  # the cancelled rows went into one new batch, once
    assert json.loads(final.out.splitlines()[-1])["jobs"]["ok"] == 3
    statuses = [b["status"] for b in api.batches.values()]
    assert statuses == ["cancelled", "completed"]
