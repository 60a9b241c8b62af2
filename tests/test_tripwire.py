"""Early aborts: a run stops at once when every job would fail the same way."""

from __future__ import annotations

import random
import socket

import pytest
from helpers import Clock, by_id, read_manifest, run_cli, write_jobs

from pmock_batch.config import RunConfig
from pmock_batch.errors import CannotConnectError, status_error
from pmock_batch.failures import Failure, describe
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.pacing import Pacer
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import run_batch
from pmock_batch.tripwire import Tripwire

KEY = "sk-test-0123456789abcdefTRIP"


def _refused() -> CannotConnectError:
    return CannotConnectError("x", host="127.0.0.1", port=9, reason="Connection refused")


def _rejected(
    code: str | None = "unknown_parameter", param: str | None = "foo", status=400
) -> Failure:
    error = status_error("Unknown parameter: 'foo'.", status=status, code=code, param=param)
    return describe(error)


def test_three_failed_connections_trip_before_any_answer() -> None:
    wire = Tripwire()
    assert wire.connect_failed(_refused()) is None
    assert wire.connect_failed(_refused()) is None
    assert wire.connect_failed(_refused()) == (
        "cannot connect to 127.0.0.1:9 (Connection refused): 3 attempts failed and none "
        "reached the server; check --base-url or PMOCK_BASE_URL"
    )


@pytest.mark.parametrize("first", ["answered", "succeeded"])
def test_any_answer_disarms_the_connection_check(first: str) -> None:
    wire = Tripwire()
    getattr(wire, first)()
    assert [wire.connect_failed(_refused()) for _ in range(5)] == [None] * 5


def test_three_jobs_rejected_alike_trip() -> None:
    wire = Tripwire()
    assert wire.rejected("a", _rejected()) is None
    assert wire.rejected("a", _rejected()) is None  # the same job twice is one job
    assert wire.rejected("b", _rejected()) is None
    assert wire.rejected("c", _rejected()) == (
        "every request was rejected: Unknown parameter: 'foo'. (param foo); "
        "check the job file or the capability table"
    )


@pytest.mark.parametrize(
    "third",
    [
        _rejected(param="bar"),  # another param
        _rejected(code="invalid_value"),  # another code
        _rejected(status=422),  # another status
    ],
)
def test_rejections_that_differ_do_not_trip(third: Failure) -> None:
    wire = Tripwire()
    wire.rejected("a", _rejected())
    wire.rejected("b", _rejected())
    assert wire.rejected("c", third) is None
    assert wire.rejected("d", _rejected()) is None  # only the first three count


@pytest.mark.parametrize(
    "other",
    [
        describe(status_error("blocked", status=400, code="moderation_blocked")),  # one prompt
        describe(status_error("down", status=503)),  # not a rejection
    ],
)
def test_moderation_and_server_errors_are_not_counted(other: Failure) -> None:
    wire = Tripwire()
    assert [wire.rejected(job, other) for job in "abc"] == [None] * 3
    wire.rejected("d", _rejected())
    wire.rejected("e", _rejected())
    assert wire.rejected("f", _rejected()) is not None


def test_a_success_first_disarms_the_rejection_check() -> None:
    wire = Tripwire()
    wire.succeeded()
    assert [wire.rejected(job, _rejected()) for job in "abcd"] == [None] * 4


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_aborts_the_run_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    port = _closed_port()
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(12)]
    )
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", f"http://127.0.0.1:{port}/v1", "--out", str(out), "--json"]
    result = await run_cli([*argv, "--concurrency", "4"], capsys)
    assert result.code == 3, result.err
    reason = (
        f"cannot connect to 127.0.0.1:{port} (Connection refused): 3 attempts failed and none "
        "reached the server; check --base-url or PMOCK_BASE_URL"
    )
    assert reason in result.err
    records = read_manifest(out)
    assert len(records) == 12
    assert {r["status"] for r in records} == {"not_run"}
    assert all(r["error"]["message"] == reason for r in records)
    assert sum(r["attempts"] for r in records) <= 4 + 1  # the first wave, not 72 attempts


async def test_one_job_alone_aborts_after_three_tries_without_sleeping_for_real(tmp_path):
    jobs_path = write_jobs(tmp_path / "jobs.jsonl", [{"id": "only", "prompt": "p"}])
    scanned = scan(jobs_path)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    clock = Clock()
    config = RunConfig(
        out_dir=tmp_path / "out",
        base_url=f"http://127.0.0.1:{_closed_port()}/v1",
        api_key="k",
        concurrency=1,
    )
    summary = await run_batch(
        config,
        iter_jobs(jobs_path, scanned),
        policy=RetryPolicy(max_attempts=6, sleep=sleep, rng=random.Random(1)),
        pacer=Pacer(clock=clock, sleep=clock.sleep),
    )
    assert summary.aborted is not None and summary.aborted.startswith("cannot connect to")
    record = by_id(read_manifest(tmp_path / "out"))["only"]
    assert (record["status"], record["attempts"]) == ("not_run", 3)
    assert len(waits) == 3  # two backoffs before the trip, one cut short by it


async def test_the_same_rejection_for_the_first_three_jobs_aborts(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions(dialect="openai"))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    lines = [{"id": f"j{i}", "prompt": f"p{i}", "extra_body": {"foo": 1}} for i in range(8)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--concurrency", "1"]
    result = await run_cli(argv, capsys)
    assert result.code == 3, result.err
    reason = (
        "every request was rejected: Unknown parameter: 'foo'. (param foo); "
        "check the job file or the capability table"
    )
    assert reason in result.err
    assert server.stats.requests == 3
    records = by_id(read_manifest(out))
    assert [records[f"j{i}"]["status"] for i in range(8)] == ["failed"] * 3 + ["not_run"] * 5
    assert records["j0"]["error"]["code"] == "unknown_parameter"
    assert records["j7"]["error"]["message"] == reason


async def test_rejections_after_a_success_fail_only_their_jobs(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions(dialect="openai"))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    lines = [{"id": "fine", "prompt": "fine"}]
    lines += [{"id": f"j{i}", "prompt": f"p{i}", "extra_body": {"foo": 1}} for i in range(4)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--concurrency", "1"]
    result = await run_cli(argv, capsys)
    assert result.code == 1, result.err
    assert server.stats.requests == 5
    statuses = {r["id"]: r["status"] for r in read_manifest(out)}
    assert statuses == {
        "fine": "ok",
        "j0": "failed",
        "j1": "failed",
        "j2": "failed",
        "j3": "failed",
    }


async def test_a_tls_handshake_that_fails_aborts_at_once(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())  # plain HTTP: an https client's handshake fails
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(12)]
    )
    base = f"https://127.0.0.1:{server.port}/v1"
    result = await run_cli([str(jobs), "--base-url", base, "--out", str(tmp_path / "o")], capsys)
    assert result.code == 3, result.err
    assert f"cannot connect to 127.0.0.1:{server.port} (TLS handshake failed)" in result.err
    assert server.stats.requests == 0


async def test_rate_limits_that_outlast_the_retries_do_not_look_like_a_bad_job_file(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions(script={"*": ["429:0", "429:0"]}))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    lines = [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(4)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "o")]
    result = await run_cli([*argv, "--max-attempts", "2", "--concurrency", "1"], capsys)
    assert result.code == 1, result.err  # each job failed as rate_limit; the run went on
    assert "every request was rejected" not in result.err
    assert server.stats.requests == 8
