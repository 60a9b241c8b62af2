"""The Batch API runner against the project's own mock (issue 12 §5), on a fake clock.

The injected poll sleep moves the mock's clock, so a batch's whole life
(validating, in_progress, finalizing, completed) passes without waiting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from batchtools import KEY, Crash, batches_made, run_on_clock
from conftest import FakeClock
from helpers import by_id, open_image, read_manifest, write_jobs

from pmock_batch.batchapi import BatchOptions, BatchState
from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions, MockServer
from pmock_batch.run import run_batch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "jobs" / "example.jsonl"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


async def test_example_file_same_as_a_direct_run(tmp_path):
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        direct = await run_batch(
            RunConfig(out_dir=tmp_path / "direct", base_url=server.base_url, api_key=KEY),
            iter_jobs(EXAMPLE, scan(EXAMPLE)),
        )
        batch = await run_on_clock(EXAMPLE, tmp_path / "batch", server, clock)
        stats = server.stats.to_json()
    assert (batch.ok, batch.images, batch.failed) == (direct.ok, direct.images, direct.failed)
    one, two = by_id(read_manifest(tmp_path / "direct")), by_id(read_manifest(tmp_path / "batch"))
    assert one.keys() == two.keys()
    for job_id, d in one.items():
        b = two[job_id]
        for key in ("status", "line", "request", "fingerprint", "revised_prompt"):
            assert d[key] == b[key], (job_id, key)
        shape = ("path", "format", "width", "height")
        assert [[f[k] for k in shape] for f in d["files"]] == [
            [f[k] for k in shape] for f in b["files"]
        ]
        if b["status"] == "ok":
            assert b["via"] == "batch" and b["batch_id"].startswith("batch_") and b["request_id"]
            for f in b["files"]:
                open_image(tmp_path / "batch" / f["path"])
    assert (tmp_path / "batch" / "report.html").is_file()
    models = {r["request"]["model"] for r in two.values()}
    assert len(stats["batches_created"]) == len(models) == 2  # one model per input file
    uploaded = {f["id"] for f in stats["files_uploaded"]}
    assert uploaded <= set(stats["files_deleted"])  # the input file, deleted
    assert len(stats["files_deleted"]) >= 2  # and the output (and error) files


@pytest.mark.parametrize("step", ["uploading", "upload", "batch", "status", "collected"])
async def test_kill_at_each_step_then_rerun_makes_one_batch(tmp_path, step):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(5)]
    )
    out = tmp_path / "out"

    def crash(event: str) -> None:
        if event == step:
            raise Crash

    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        with pytest.raises(Crash):
            await run_on_clock(jobs, out, server, clock, on_step=crash)
        summary = await run_on_clock(jobs, out, server, clock)
        made = batches_made(server)
        stats = server.stats.to_json()
    assert len(made) == 1 and sorted(made[0]) == [f"j{i}" for i in range(5)]
    assert summary.ok + summary.skipped == 5
    records = read_manifest(out)
    assert [r["status"] for r in records] == ["ok"] * 5
    live = {f["id"] for f in stats["files_uploaded"]} - set(stats["files_deleted"])
    assert not live  # no file left on the server, an orphan upload included


async def test_expired_half_done_then_one_batch_of_the_missing_rows(tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(8)]
    )
    clock = FakeClock()
    options = MockOptions(batch_expire_after_fraction=0.5)
    async with MockServer(options, clock=clock) as server:
        summary = await run_on_clock(jobs, tmp_path / "out", server, clock)
        made = batches_made(server)
    first, second = made  # exactly one more batch
    done = {r["id"] for r in read_manifest(tmp_path / "out") if r["status"] == "ok"}
    assert sorted(second) == sorted(set(first) - set(first[:4]))
    # the second batch expires too (the same mock option): its rows stay owed, not failed
    assert summary.failed == 0 and summary.ok == len(done) == 6 and summary.not_run == 2


async def test_error_rows_are_failed_and_not_resubmitted(tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(4)]
    )
    clock = FakeClock()
    async with MockServer(MockOptions(batch_fail_rows=2), clock=clock) as server:
        summary = await run_on_clock(jobs, tmp_path / "out", server, clock)
        made = batches_made(server)
    assert (summary.ok, summary.failed, len(made)) == (2, 2, 1)
    records = read_manifest(tmp_path / "out")
    failed = [r for r in records if r["status"] == "failed"]
    assert {r["error"]["status"] for r in failed} == {500}
    assert {r["error"]["kind"] for r in failed} == {"server"}


async def test_no_wait_twice(tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b", "n": 2}]
    )
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        first = await run_on_clock(jobs, tmp_path / "out", server, clock, wait=False)
        assert (first.pending, first.ok) == (2, 0)
        page = (tmp_path / "out" / "report.html").read_text()
        assert 'data-stat="pending"' in page and ">pending<" in page
        clock.advance(10)  # the batch ends meanwhile
        second = await run_on_clock(jobs, tmp_path / "out", server, clock, wait=False)
        made = batches_made(server)
    assert (second.ok, second.pending, len(made)) == (2, 0, 1)
    assert sorted(made[0]) == ["a", "b-1", "b-2"]


async def test_interrupt_while_waiting_records_pending_and_cancels_nothing(tmp_path, caplog):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}])
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        handle = []

        async def sleep(_: float) -> None:
            handle[0].stop()  # Ctrl-C during the first wait

        config = RunConfig(out_dir=tmp_path / "out", base_url=server.base_url, api_key=KEY)
        summary = await run_batch(
            config,
            iter_jobs(jobs, scan(jobs)),
            batch=BatchOptions(sleep=sleep),
            on_start=handle.append,
        )
        assert summary.interrupted and summary.pending == 1
        assert not server.stats.to_json()["batch_cancels"]
        assert summary.batches_running == 1
        clock.advance(10)
        again = await run_on_clock(jobs, tmp_path / "out", server, clock)
        assert again.ok == 1 and len(batches_made(server)) == 1
    assert [b.collected for b in BatchState.load(tmp_path / "out").batches.values()] == [True]


async def test_a_bad_key_aborts_the_run(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}])
    clock = FakeClock()
    async with MockServer(MockOptions(require_key="sk-other"), clock=clock) as server:
        summary = await run_on_clock(jobs, tmp_path / "out", server, clock)
    assert summary.aborted and "refused the API key (HTTP 401" in summary.aborted
    assert summary.not_run == 1
    assert [r["status"] for r in read_manifest(tmp_path / "out")] == ["not_run"]


async def test_interrupt_during_collection_resumes_past_the_recorded_lines(tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(4)]
    )
    out = tmp_path / "out"
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        handle = []

        class Stopper:
            def job_done(self, record):
                handle[0].stop()  # Ctrl-C right after the first image is recorded

            def retrying(self, *args):
                pass

            def job_skipped(self, job):
                pass

        async def sleep(seconds: float) -> None:
            clock.advance(seconds)

        config = RunConfig(out_dir=out, base_url=server.base_url, api_key=KEY)
        first = await run_batch(
            config,
            iter_jobs(jobs, scan(jobs)),
            batch=BatchOptions(sleep=sleep, poll_interval=1.0),
            observer=Stopper(),
            on_start=handle.append,
        )
        assert first.interrupted and first.ok == 1 and first.not_run == 3
        second = await run_on_clock(jobs, out, server, clock)
        made = batches_made(server)
    assert (second.skipped, second.ok, len(made)) == (1, 3, 1)
    assert [r["status"] for r in read_manifest(out)] == ["ok"] * 4


async def test_a_failed_batch_says_why(tmp_path, caplog, monkeypatch):
    from pmock_batch.batchapi import plan

    real = plan.input_line  # an input line the server refuses: the whole batch fails
    monkeypatch.setattr(
        plan, "input_line", lambda cid, body, *url: real(cid, {**body, "model": ""}, *url)
    )
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}])
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        summary = await run_on_clock(jobs, tmp_path / "out", server, clock)
        made = batches_made(server)
    assert len(made) == 2  # submitted again once, as for an expired batch
    assert summary.not_run == 1
    assert "failed: " in caplog.text


async def test_killed_after_the_upload_before_its_record_the_orphan_goes(tmp_path, monkeypatch):
    from pmock_batch.batchapi.transport import BatchClient

    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(3)]
    )
    real = BatchClient.upload

    async def upload_then_die(self, name, content):
        await real(self, name, content)  # the server has the file; its id is never written
        raise Crash

    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        monkeypatch.setattr(BatchClient, "upload", upload_then_die)
        with pytest.raises(Crash):
            await run_on_clock(jobs, tmp_path / "out", server, clock)
        monkeypatch.setattr(BatchClient, "upload", real)
        summary = await run_on_clock(jobs, tmp_path / "out", server, clock)
        stats = server.stats.to_json()
    orphan = stats["files_uploaded"][0]["id"]
    assert orphan in stats["files_deleted"]  # deleted, not left for 30 days
    assert summary.ok == 3 and len(stats["batches_created"]) == 1


async def test_polls_back_off_while_validating_and_show_the_deadline(tmp_path, caplog):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}])
    clock = FakeClock()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    caplog.set_level("INFO", logger="pmock_batch")
    async with MockServer(MockOptions(batch_seconds=200.0), clock=clock) as server:
        config = RunConfig(out_dir=tmp_path / "out", base_url=server.base_url, api_key=KEY)
        opts = BatchOptions(sleep=sleep, poll_interval=2.0, clock=clock)
        summary = await run_batch(config, iter_jobs(jobs, scan(jobs)), batch=opts)
    assert summary.ok == 1
    validating = waits[:4]  # validating lasts 20 s here
    assert validating[0] < validating[1] < validating[2]  # a gentle backoff
    assert all(w <= 2.0 * 4 * 1.1 for w in waits)
    assert 1.8 <= waits[-1] <= 2.2  # in progress: the interval, with jitter
    assert "in_progress, 0 of 1 done" in caplog.text and "ends by" in caplog.text


async def test_batch_first_then_direct_then_batch(tmp_path):
    path = tmp_path / "jobs.jsonl"
    out = tmp_path / "out"
    first = [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b", "n": 2}]
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        write_jobs(path, first)
        assert (await run_on_clock(path, out, server, clock)).ok == 2
        write_jobs(path, [*first, {"id": "c", "prompt": "c"}])
        config = RunConfig(out_dir=out, base_url=server.base_url, api_key=KEY)
        direct = await run_batch(config, iter_jobs(path, scan(path)))
        assert (direct.skipped, direct.ok) == (2, 1)  # done by the batch, skipped
        write_jobs(path, [*first, {"id": "c", "prompt": "c"}, {"id": "d", "prompt": "d"}])
        again = await run_on_clock(path, out, server, clock)
        assert (again.skipped, again.ok) == (3, 1)
        made = batches_made(server)
    assert made == [["a", "b-1", "b-2"], ["d"]]
    records = by_id(read_manifest(out))
    assert [records[k].get("via") for k in "abcd"] == ["batch", "batch", None, "batch"]


@pytest.mark.parametrize("call", ["upload", "create"])
async def test_an_answer_lost_after_the_work_was_done_is_not_done_twice(
    tmp_path, monkeypatch, call
):
    from pmock_batch.batchapi.transport import BatchClient
    from pmock_batch.errors import APITimeoutError

    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(3)]
    )
    real = getattr(BatchClient, call)
    lost: list[str] = []

    async def done_but_lost(self, *args):
        answer = await real(self, *args)
        if not lost:
            lost.append(answer["id"])
            raise APITimeoutError(f"POST: no complete answer within 1s ({call})")
        return answer

    monkeypatch.setattr(BatchClient, call, done_but_lost)
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        summary = await run_on_clock(jobs, tmp_path / "out", server, clock)
        stats = server.stats.to_json()
    assert summary.ok == 3
    assert len(stats["files_uploaded"]) == 1 and len(stats["batches_created"]) == 1
