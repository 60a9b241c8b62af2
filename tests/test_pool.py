"""The pool and the direct runner over real loopback HTTP: retries, timeouts, aborts, stops,
grace and holds; no real sleeping."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from helpers import Clock, FakeSleep, by_id, open_image, read_manifest, write_jobs

from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.pacing import Pacer
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import Run, RunObserver, run_batch


def _jobs(path: Path, lines: list[object]):
    write_jobs(path, lines)
    scanned = scan(path)
    assert scanned.ok, scanned.problems
    return iter_jobs(path, scanned)


def _config(tmp_path: Path, base_url: str, **kwargs) -> RunConfig:
    kwargs.setdefault("concurrency", 2)
    return RunConfig(out_dir=tmp_path / "out", base_url=base_url, api_key="k", **kwargs)


async def _run(tmp_path, server, lines, *, policy=None, **config):
    sleep = FakeSleep()
    policy = policy or RetryPolicy(max_attempts=6, sleep=sleep, rng=random.Random(1))
    clock = Clock()  # the pacer's holds after a 429 pass on a fake clock, not for real
    summary = await run_batch(
        _config(tmp_path, server.base_url, **config),
        _jobs(tmp_path / "jobs.jsonl", lines),
        policy=policy,
        pacer=Pacer(clock=clock, sleep=clock.sleep),
    )
    return summary, by_id(read_manifest(tmp_path / "out")), policy.sleep


@pytest.mark.parametrize(
    "script",
    [
        ["500", "ok"],
        ["503", "502", "ok"],
        ["drop", "ok"],
        ["truncate", "ok"],
        ["corrupt", "ok"],
        ["408", "409", "504"],
    ],
)
async def test_transient_failures_are_retried_until_ok(tmp_path, make_mock, script):
    server = await make_mock(MockOptions(script={"a fox": script}))
    summary, records, sleep = await _run(tmp_path, server, [{"id": "fox", "prompt": "a fox"}])
    record = records["fox"]
    failures = len([s for s in script if s != "ok"])
    assert record["status"] == "ok", record
    assert record["attempts"] == failures + 1
    assert server.stats.attempts["a fox"] == failures + 1
    assert server.stats.successes["a fox"] == 1
    assert summary.retries == failures
    assert len(sleep.waits) == failures
    assert all(0 <= w <= 60 for w in sleep.waits)
    assert open_image(tmp_path / "out" / "fox.png").size == (1024, 1024)


async def test_retry_after_is_honoured_as_the_wait(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"a fox": ["429:7", "ok"]}))
    summary, records, sleep = await _run(tmp_path, server, [{"id": "fox", "prompt": "a fox"}])
    assert records["fox"]["status"] == "ok"
    assert sleep.waits == [7.0]
    assert summary.rate_limited == 1


async def test_retry_after_longer_than_the_cap_fails_the_job(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"a fox": ["429:500"]}))
    policy = RetryPolicy(max_attempts=6, max_retry_wait=120, sleep=FakeSleep())
    _, records, sleep = await _run(
        tmp_path, server, [{"id": "fox", "prompt": "a fox"}], policy=policy
    )
    record = records["fox"]
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert record["error"]["kind"] == "rate_limit"
    assert "asked to wait 500s, more than --max-retry-wait 120s" in record["error"]["message"]
    assert sleep.waits == []


async def test_attempts_run_out_and_the_last_error_is_recorded(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"a fox": ["500"] * 10}))
    policy = RetryPolicy(max_attempts=3, sleep=FakeSleep())
    summary, records, _ = await _run(
        tmp_path,
        server,
        [{"id": "fox", "prompt": "a fox"}, {"id": "cat", "prompt": "a cat"}],
        policy=policy,
    )
    fox = records["fox"]
    assert fox["status"] == "failed"
    assert fox["attempts"] == 3 == server.stats.attempts["a fox"]
    assert fox["http_status"] == 500
    assert fox["error"]["kind"] == "server" and fox["error"]["status"] == 500
    assert records["cat"]["status"] == "ok"
    assert summary.failed == 1 and summary.ok == 1
    assert not (tmp_path / "out" / "fox.png").exists()


async def test_bad_request_is_not_retried(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"a fox": ["400"]}))
    _, records, sleep = await _run(tmp_path, server, [{"id": "fox", "prompt": "a fox"}])
    assert records["fox"]["status"] == "failed"
    assert records["fox"]["attempts"] == 1
    assert records["fox"]["error"]["kind"] == "bad_request"
    assert sleep.waits == []


async def test_timeout_is_retried_and_counted_as_ambiguous(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"a fox": ["hang", "ok"]}))
    summary, records, _ = await _run(
        tmp_path, server, [{"id": "fox", "prompt": "a fox"}], timeout=0.3
    )
    assert records["fox"]["status"] == "ok"
    assert records["fox"]["attempts"] == 2
    assert records["fox"]["ambiguous_retries"] == 1
    assert summary.ambiguous_retries == 1


@pytest.mark.parametrize("outcome", ["401", "403", "404", "quota"])
async def test_fatal_answers_abort_the_run(tmp_path, make_mock, outcome):
    server = await make_mock(MockOptions(script={"*": [outcome] * 100}))
    lines = [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(30)]
    summary, records, sleep = await _run(tmp_path, server, lines, concurrency=3)
    assert summary.aborted
    assert server.stats.requests <= 3
    assert len(records) == 30
    assert summary.failed + summary.not_run == 30
    assert summary.not_run >= 27
    assert sleep.waits == []


async def test_stop_records_the_rest_as_not_run(tmp_path, make_mock):
    server = await make_mock(MockOptions(latency=0.05))
    config = _config(tmp_path, server.base_url, concurrency=2, grace=5)
    path = tmp_path / "jobs.jsonl"
    jobs = _jobs(path, [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(40)])
    runs: list[Run] = []

    class StopAfterThree(RunObserver):
        def job_done(self, record) -> None:
            if runs[0].status().summary.ok == 3:
                runs[0].stop()

    summary = await run_batch(config, jobs, on_start=runs.append, observer=StopAfterThree())
    assert summary.interrupted
    records = read_manifest(tmp_path / "out")
    assert len(records) == 40
    assert summary.ok + summary.not_run == 40
    assert 3 <= summary.ok <= 3 + 2 + 1
    assert server.stats.requests == summary.ok


async def test_grace_period_cancels_jobs_still_in_flight(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"*": ["hang"]}))
    config = _config(tmp_path, server.base_url, concurrency=2, grace=0.05)
    jobs = _jobs(tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(5)])
    runs: list[Run] = []

    async def stop_soon() -> None:
        while server.stats.in_flight < 2:  # noqa: ASYNC110 - polls the server's own counter
            await asyncio.sleep(0.01)
        runs[0].stop()

    stopper = asyncio.create_task(stop_soon())
    summary = await asyncio.wait_for(run_batch(config, jobs, on_start=runs.append), 10)
    await stopper
    assert summary.not_run == 5
    records = by_id(read_manifest(tmp_path / "out"))
    assert {r["status"] for r in records.values()} == {"not_run"}
    # The two cancelled in flight were seen by the server: their attempts count.
    assert sum(r["attempts"] for r in records.values()) == server.stats.requests == 2
    assert sorted(r["attempts"] for r in records.values()) == [0, 0, 0, 1, 1]


async def test_a_job_cancelled_mid_way_keeps_the_images_it_saved(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"p": ["ok", "ok", "hang"]}))
    config = _config(tmp_path, server.base_url, concurrency=1, grace=0.05)
    jobs = _jobs(tmp_path / "jobs.jsonl", [{"id": "v", "prompt": "p", "n": 3}])
    runs: list[Run] = []

    async def stop_when_third_is_in_flight() -> None:
        while server.stats.requests < 3 or server.stats.in_flight < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        runs[0].stop()

    stopper = asyncio.create_task(stop_when_third_is_in_flight())
    await asyncio.wait_for(run_batch(config, jobs, on_start=runs.append), 10)
    await stopper
    record = by_id(read_manifest(tmp_path / "out"))["v"]
    assert (record["status"], record["attempts"]) == ("not_run", 3)  # stopped: no failure
    assert [f["path"] for f in record["files"]] == ["v-1.png", "v-2.png"]
    assert all((tmp_path / "out" / f["path"]).is_file() for f in record["files"])


async def test_a_long_retry_after_fails_its_job_without_holding_the_others(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"prompt 0": ["429:5000"]}))
    lines = [{"id": f"j{i}", "prompt": f"prompt {i}"} for i in range(4)]
    summary, records, _ = await asyncio.wait_for(_run(tmp_path, server, lines), 20)
    assert summary.failed == 1 and summary.ok == 3
    assert "more than --max-retry-wait" in records["j0"]["error"]["message"]
    assert all(records[f"j{i}"]["elapsed_s"] < 5 for i in range(1, 4))


async def test_stop_during_a_pool_hold_ends_promptly(tmp_path, make_mock):
    """A 429 holds the pool for 60 s; a stop must not wait that out (nor spin)."""
    server = await make_mock(MockOptions(script={"prompt 0": ["429:60", "ok"]}))
    write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"prompt {i}"} for i in range(5)]
    )
    path = tmp_path / "jobs.jsonl"
    config = _config(tmp_path, server.base_url, concurrency=1, grace=0.1)
    runs: list[Run] = []

    async def stop_when_held() -> None:
        while not runs or runs[0].status().held_for <= 0:  # noqa: ASYNC110 - polls the pacer
            await asyncio.sleep(0.01)
        runs[0].stop()

    stopper = asyncio.create_task(stop_when_held())
    loop = asyncio.get_running_loop()
    started = loop.time()
    summary = await asyncio.wait_for(
        run_batch(config, iter_jobs(path, scan(path)), on_start=runs.append), 10
    )
    await stopper
    assert loop.time() - started < 5
    assert summary.interrupted and summary.not_run >= 4


async def test_the_status_counts_requests_at_the_server_not_jobs(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"p0": ["hang"]}))
    config = _config(tmp_path, server.base_url, concurrency=2, grace=0.05)
    jobs = _jobs(tmp_path / "jobs.jsonl", [{"id": "j0", "prompt": "p0"}])
    runs: list[Run] = []
    seen: list[int] = []

    async def look_then_stop() -> None:
        while server.stats.in_flight < 1:  # noqa: ASYNC110 - polls the server's own counter
            await asyncio.sleep(0.01)
        seen.append(runs[0].status().in_flight)
        runs[0].stop()

    looker = asyncio.create_task(look_then_stop())
    await asyncio.wait_for(run_batch(config, jobs, on_start=runs.append), 10)
    await looker
    assert seen == [1]
    assert runs[0].status().in_flight == 0


async def test_an_unexpected_error_logs_its_traceback(tmp_path, make_mock, caplog):
    server = await make_mock(MockOptions())

    async def broken_writer(sink, out_dir, relative):
        raise RuntimeError("a bug in a writer")

    config = _config(tmp_path, server.base_url)
    jobs = _jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}])
    with caplog.at_level("ERROR", logger="pmock_batch"):
        summary = await run_batch(
            config, jobs, writer=broken_writer, policy=RetryPolicy(sleep=FakeSleep())
        )
    assert dict(summary.failed_by_kind) == {"internal": 1}
    [bug] = [r for r in caplog.records if getattr(r, "event", "") == "internal"]
    assert bug.exc_info is not None and "a bug in a writer" in str(bug.exc_info[1])
    from pmock_batch.console.logs import _JsonFormatter, _TextFormatter

    assert "Traceback" in _TextFormatter(timestamps=False).format(bug)
    assert (
        "RuntimeError: a bug in a writer" in json.loads(_JsonFormatter().format(bug))["traceback"]
    )


@pytest.mark.parametrize("first", ["500", "drop", "bad_base64"])
async def test_a_retry_stopped_before_it_is_sent_is_not_counted(tmp_path, make_mock, first):
    """The retry is decided, then the run stops during its backoff: it was never sent,
    so it is neither a retry nor an ambiguous or billed one."""
    server = await make_mock(MockOptions(script={"p": [first, "ok"]}))
    runs: list[Run] = []

    async def stop_instead_of_waiting(seconds: float) -> None:
        runs[0].stop()

    policy = RetryPolicy(max_attempts=6, sleep=stop_instead_of_waiting, rng=random.Random(1))
    config = _config(tmp_path, server.base_url, concurrency=1)
    jobs = _jobs(tmp_path / "jobs.jsonl", [{"id": "v", "prompt": "p"}])
    summary = await asyncio.wait_for(
        run_batch(config, jobs, policy=policy, on_start=runs.append), 10
    )
    record = by_id(read_manifest(tmp_path / "out"))["v"]
    assert server.stats.requests == 1 and record["attempts"] == 1
    assert record["status"] == "not_run"
    assert (record["retries"], record["ambiguous_retries"], record["billed_retries"]) == (0, 0, 0)
    assert summary.counts()["retries"] == 0
