"""A run end to end: the lock on OUT, and an output folder that fills up, over loopback HTTP."""

from __future__ import annotations

import asyncio
import errno
import sys
from pathlib import Path

import pytest
from helpers import (
    RUN_KEY,
    numbered_lines,
    open_image,
    read_manifest,
    run_cli,
    run_jobs_file,
    write_jobs,
)

from pmock_batch.attempt import commit
from pmock_batch.errors import LockedError
from pmock_batch.images import ImageSink
from pmock_batch.lock import run_lock
from pmock_batch.mock import MockOptions

KEY = RUN_KEY


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    """Every test here talks to a mock with this key (conftest isolates the rest)."""
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


_batch, _lines = run_jobs_file, numbered_lines


async def test_disk_full_aborts_the_run(tmp_path, make_mock):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", _lines(20))
    calls = 0

    async def full_disk(sink: ImageSink, out_dir: Path, relative: str) -> Path:
        nonlocal calls
        calls += 1
        if calls >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await commit(sink, out_dir, relative)

    summary = await _batch(tmp_path, server.base_url, writer=full_disk)
    assert summary.aborted is not None
    assert "No space left on device" in summary.aborted
    assert "free some disk space" in summary.aborted
    assert server.stats.requests <= 2 + 2 + 2
    records = read_manifest(tmp_path / "out")
    assert len(records) == 20
    assert {r["status"] for r in records} == {"ok", "failed", "not_run"}
    for r in records:
        if r["status"] == "ok":
            open_image(tmp_path / "out" / r["files"][0]["path"])
    assert not list((tmp_path / "out").rglob("*.pmock-tmp"))


async def test_lock_refuses_a_second_run(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(2))
    out = tmp_path / "out"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys, time; from pathlib import Path; from pmock_batch.lock import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)",
        str(out),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 20)).strip() == b"locked"
        result = await run_cli(
            [str(jobs), "--base-url", server.base_url, "--out", str(out)], capsys
        )
        assert result.code == 4
        assert "another pmock-batch run" in result.err
        assert server.stats.requests == 0
        assert not (out / "manifest.jsonl").exists()
    finally:
        holder.kill()
        await holder.wait()
    with run_lock(out), pytest.raises(LockedError), run_lock(out):  # free once the holder died
        pass
