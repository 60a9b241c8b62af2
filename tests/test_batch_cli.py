"""The Batch API from the command line: --batch-api with --mock, batches OUT, Ctrl-C, kill -9."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import pytest
from batchtools import KEY, batches_made, run_on_clock
from conftest import FakeClock
from helpers import read_manifest, run_cli, subprocess_env, write_jobs

from pmock_batch.mock import MockOptions, MockServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


async def test_cli_mock_batch_api(tmp_path, capsys):
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}, {"prompt": "b"}])
    args = ["jobs.jsonl", "--out", "out", "--mock", "--mock-batch-seconds", "0.3"]
    result = await run_cli([*args, "--batch-api", "--poll-interval", "0.1"], capsys)
    assert result.code == 0, result.err
    assert "submitted batch_" in result.err
    records = read_manifest(Path("out"))
    assert [r["via"] for r in records] == ["batch", "batch"]
    dry = await run_cli([*args, "--batch-api", "--dry-run"], capsys)
    assert dry.code == 0 and "2 already done, 0 to run" in dry.out
    assert "0 recorded batch(es) not yet collected would be re-attached" in dry.out


async def test_batches_command_lists_and_cancels(tmp_path, capsys, monkeypatch):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}])
    clock = FakeClock()
    async with MockServer(MockOptions(batch_seconds=100.0), clock=clock) as server:
        await run_on_clock(jobs, tmp_path / "out", server, clock, wait=False)
        monkeypatch.setenv("PMOCK_BASE_URL", server.base_url)
        listed = await run_cli(["batches", str(tmp_path / "out")], capsys)
        assert listed.code == 0, listed.err
        assert (
            "validating" in listed.out
            and re.search(r"0/[01] done", listed.out)
            and "ends by" in listed.out
        )
        cancelled = await run_cli(["batches", str(tmp_path / "out"), "--cancel", "--yes"], capsys)
        assert cancelled.code == 0 and "cancelling" in cancelled.out
        assert len(server.stats.to_json()["batch_cancels"]) == 1
        clock.advance(5)
        summary = await run_on_clock(
            jobs, tmp_path / "out", server, clock
        )  # collects, submits again
        assert summary.ok == 1 and len(batches_made(server)) == 2


async def _process(argv: list[str], env: dict[str, str], out: Path, until: str):
    """Start the CLI as a process; return it once it wrote an ``until`` event to the state."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL
    )
    state = out / "batches.jsonl"
    before = state.read_text().count(f'"event":"{until}"') if state.exists() else 0
    for _ in range(2000):
        if state.exists() and state.read_text().count(f'"event":"{until}"') > before:
            return proc
        await asyncio.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no {until} event")


async def test_ctrl_c_and_kill_9_while_waiting_as_processes(tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(3)]
    )
    out = tmp_path / "out"
    async with MockServer(MockOptions(batch_seconds=2.0)) as server:
        env = subprocess_env()
        argv = [
            sys.executable,
            "-m",
            "pmock_batch",
            str(jobs),
            "--base-url",
            server.base_url,
            "--out",
            str(out),
            "--batch-api",
            "--poll-interval",
            "0.1",
        ]
        proc = await _process(argv, env, out, "batch")
        proc.send_signal(signal.SIGKILL)  # kill -9 just after the batch was created
        await proc.wait()
        proc = await _process(argv, env, out, "status")
        proc.send_signal(signal.SIGINT)  # Ctrl-C while polling: nothing is cancelled
        _, err = await proc.communicate()
        assert proc.returncode == 130, err.decode()
        said = " ".join(err.decode().split())
        assert "1 batch(es) still running on the server; run the same command again" in said
        assert f"pmock-batch batches {out} --cancel" in said
        assert not server.stats.to_json()["batch_cancels"]
        assert await _exit_code(argv, env) == 0
        made = batches_made(server)
    assert len(made) == 1
    assert [r["status"] for r in read_manifest(out)] == ["ok"] * 3


async def _exit_code(argv: list[str], env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stderr=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
    )
    return await proc.wait()
