"""Resume, crash safety, disk errors and the run lock, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    RUN_KEY,
    by_id,
    numbered_lines,
    open_image,
    read_manifest,
    run_cli,
    run_jobs_file,
    subprocess_env,
    write_jobs,
)

from pmock_batch.attempt import commit
from pmock_batch.images import ImageSink
from pmock_batch.mock import MockOptions

KEY = RUN_KEY
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    """Every test here talks to a mock with this key (conftest isolates the rest)."""
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


class Crash(BaseException):
    """Stands in for kill -9: not an Exception, so nothing in the engine handles it."""


_batch, _lines = run_jobs_file, numbered_lines


async def test_rerun_skips_done_jobs_and_sends_nothing(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(6))
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out")]
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.requests == 6
    before = (tmp_path / "out" / "manifest.jsonl").read_bytes()
    result = await run_cli(argv, capsys)
    assert result.code == 0
    assert server.stats.requests == 6  # nothing sent the second time
    assert re.search(r"^\| skipped \(already done\) +\| 6 +\|$", result.err, re.M), result.err
    assert (tmp_path / "out" / "manifest.jsonl").read_bytes() == before
    dry = await run_cli([*argv, "--dry-run"], capsys)
    assert "6 already done, 0 to run" in dry.out


async def test_changed_prompt_regenerates_only_that_job(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    lines = _lines(5)
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out")]
    assert (await run_cli(argv, capsys)).code == 0
    old = by_id(read_manifest(tmp_path / "out"))
    lines[2] = {"id": "j2", "prompt": "an edited prompt"}
    lines.insert(0, {"id": "new", "prompt": "a new line at the top"})
    write_jobs(jobs, lines)
    dry = await run_cli([*argv, "--dry-run"], capsys)
    assert "4 already done, 2 to run" in dry.out
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.requests == 5 + 2
    assert server.stats.attempts["an edited prompt"] == 1
    assert server.stats.attempts["prompt 2"] == 1
    records = read_manifest(tmp_path / "out")
    assert [r["id"] for r in records] == ["new", "j0", "j1", "j2", "j3", "j4"]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    new = by_id(records)
    assert new["j2"]["fingerprint"] != old["j2"]["fingerprint"]
    assert new["j2"]["request"]["prompt"] == "an edited prompt"
    assert new["j0"]["finished_at"] == old["j0"]["finished_at"]


async def test_force_regenerates_and_missing_or_damaged_files_are_redone(
    tmp_path, make_mock, capsys
):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(3))
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli(argv, capsys)).code == 0
    assert (await run_cli([*argv, "--force"], capsys)).code == 0
    assert server.stats.requests == 6
    (out / "j0.png").unlink()  # missing: redone
    data = (out / "j1.png").read_bytes()  # same size, different bytes: only --verify sees it
    (out / "j1.png").write_bytes(data[:-20] + bytes(20))
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["prompt 0"] == 3
    assert server.stats.attempts["prompt 1"] == 2
    assert (await run_cli([*argv, "--verify"], capsys)).code == 0
    assert server.stats.attempts["prompt 1"] == 3
    assert server.stats.attempts["prompt 2"] == 2
    open_image(out / "j1.png")


async def test_failed_and_not_run_jobs_are_redone(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(script={"prompt 1": ["400"]}))
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(3))
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out")]
    assert (await run_cli(argv, capsys)).code == 1
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["prompt 1"] == 2
    assert server.stats.requests == 4
    assert {r["status"] for r in read_manifest(tmp_path / "out")} == {"ok"}


@pytest.mark.parametrize("when", ["before_write", "after_write"])
async def test_resume_after_a_crash(tmp_path, make_mock, when):
    """A crash before the write, or after it but before the manifest line, then a re-run."""
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", _lines(8))
    writes = 0

    async def crashing_writer(sink: ImageSink, out_dir: Path, relative: str) -> Path:
        nonlocal writes
        writes += 1
        if writes == 4:
            if when == "after_write":
                await commit(sink, out_dir, relative)
            raise Crash
        return await commit(sink, out_dir, relative)

    with pytest.raises(Crash):
        await _batch(tmp_path, server.base_url, writer=crashing_writer)
    first = server.stats.requests
    assert 4 <= first <= 8
    summary = await _batch(tmp_path, server.base_url)
    assert summary.ok + summary.skipped == 8
    records = read_manifest(tmp_path / "out")
    assert [r["id"] for r in records] == [f"j{i}" for i in range(8)]
    assert {r["status"] for r in records} == {"ok"}
    for r in records:
        open_image(tmp_path / "out" / r["files"][0]["path"])
    assert all(server.stats.successes[f"prompt {i}"] >= 1 for i in range(8))
    # each prompt succeeded once, plus at most the jobs in flight at the crash
    assert sum(server.stats.successes.values()) <= 8 + 2 * 2  # jobs in flight: 2 per slot
    assert not list((tmp_path / "out").rglob("*.pmock-tmp"))


async def test_stray_temp_files_are_removed_on_the_next_run(tmp_path, make_mock):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", _lines(1))
    stray = tmp_path / "out" / "sub" / ".j9.png.abcd1234.pmock-tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half an image")
    await _batch(tmp_path, server.base_url)
    assert not stray.exists()


async def test_torn_manifest_line_is_tolerated(tmp_path, make_mock):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", _lines(3))
    await _batch(tmp_path, server.base_url)
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes() + b'{"id": "j1", "status": "fai')
    summary = await _batch(tmp_path, server.base_url)
    assert summary.skipped == 3
    assert server.stats.requests == 3
    assert len(read_manifest(tmp_path / "out")) == 3


async def test_kill_9_mid_run_then_rerun_finishes_the_batch(tmp_path, make_mock):
    server = await make_mock(MockOptions(latency=0.02))
    n = 60
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(n))
    out = tmp_path / "out"
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
        "--concurrency",
        "4",
    ]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.DEVNULL)
    for _ in range(2000):
        if sum(server.stats.successes.values()) >= 10:
            break
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    in_flight_at_kill = server.stats.in_flight
    assert sum(server.stats.successes.values()) < n
    for path in out.rglob("*.png"):  # every final name holds a whole image
        open_image(path)
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    records = read_manifest(out)
    assert [r["id"] for r in records] == [f"j{i}" for i in range(n)]
    assert {r["status"] for r in records} == {"ok"}
    assert all(server.stats.successes[f"prompt {i}"] >= 1 for i in range(n))
    assert sum(server.stats.successes.values()) <= n + 2 * 4 + in_flight_at_kill
    assert not list(out.rglob("*.pmock-tmp"))
    json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])


async def test_an_abort_keeps_earlier_finished_jobs_done(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(script={"new 0": ["401"]}))
    old = _lines(6)
    jobs = write_jobs(tmp_path / "jobs.jsonl", old)
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out")]
    assert (await run_cli(argv, capsys)).code == 0
    write_jobs(jobs, [{"id": f"n{i}", "prompt": f"new {i}"} for i in range(10)] + old)
    assert (await run_cli([*argv, "--concurrency", "1"], capsys)).code == 3
    records = by_id(read_manifest(tmp_path / "out"))
    assert {records[f"j{i}"]["status"] for i in range(6)} == {"ok"}
    dry = await run_cli([*argv, "--dry-run"], capsys)
    assert "6 already done, 10 to run" in dry.out


async def test_records_of_lines_no_longer_in_the_file_are_kept_until_prune(
    tmp_path, make_mock, capsys
):
    server = await make_mock(MockOptions())
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.jsonl", [*_lines(2), "an id-less prompt", {"prompt": ""}])
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli([*argv, "--skip-invalid"], capsys)).code == 1
    assert len(read_manifest(out)) == 4
    [old] = [r for r in read_manifest(out) if r["id"] and r["id"].startswith("an-id-less")]
    old_file = out / old["files"][0]["path"]
    write_jobs(jobs, [*_lines(2), "an edited id-less prompt", {"prompt": "fixed"}])
    assert (await run_cli(argv, capsys)).code == 0
    records = read_manifest(out)
    # The current jobs first, in line order; then what is no longer in the file, kept.
    assert [r["status"] for r in records] == ["ok"] * 4 + ["ok", "invalid"]
    assert [r["line"] for r in records[:4]] == [1, 2, 3, 4]
    assert records[4]["id"] == old["id"] and old_file.is_file()
    plan = await run_cli([*argv, "--dry-run", "--prune"], capsys)
    assert plan.code == 0
    assert "--prune would remove 2 job(s) no longer in" in plan.out
    assert f"  {old['id']}: {old_file}" in plan.out
    assert old_file.is_file() and len(read_manifest(out)) == 6
    requests = server.stats.requests
    pruned = await run_cli([*argv, "--prune"], capsys)
    assert pruned.code == 0, pruned.err
    assert (
        f"pruned {old['id']} (no longer in the job file): {old['files'][0]['path']}" in pruned.err
    )
    assert server.stats.requests == requests  # pruning sends nothing
    assert not old_file.exists()
    records = read_manifest(out)
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert not any(r["request"]["prompt"] == "an id-less prompt" for r in records)


async def test_an_empty_job_file_never_wipes_the_manifest(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(3))
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli(argv, capsys)).code == 0
    before = (out / "manifest.jsonl").read_bytes()
    jobs.write_text("", encoding="utf-8")
    assert (await run_cli(argv, capsys)).code == 0
    assert (out / "manifest.jsonl").read_bytes() == before
    write_jobs(jobs, _lines(3))
    requests = server.stats.requests
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.requests == requests  # nothing paid for twice


def _point_record_at(out: Path, job_id: str, path: str, data: bytes) -> None:
    """Edit the manifest as an attacker would: job_id's file is now ``path`` with ``data``."""
    records = read_manifest(out)
    for record in records:
        if record["id"] == job_id:
            record["files"][0].update(
                path=path, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
    text = "".join(json.dumps(r) + "\n" for r in records)
    (out / "manifest.jsonl").write_text(text, encoding="utf-8")


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("where", ["outside", "absolute", "device", "link", "fifo"])
async def test_resume_counts_only_regular_files_inside_out(
    tmp_path, make_mock, capsys, where, verify
):
    server = await make_mock(MockOptions())
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(2))
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    if verify:
        argv.append("--verify")
    assert (await run_cli(argv, capsys)).code == 0
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    if where == "outside":
        _point_record_at(out, "j0", "../secret.txt", secret.read_bytes())
    elif where == "absolute":
        _point_record_at(out, "j0", str(secret), secret.read_bytes())
    elif where == "device":
        _point_record_at(out, "j0", "/dev/zero", b"\0" * 1000)
    elif where == "fifo":  # a FIFO where the image was: opening it must not wait for a writer
        (out / "j0.png").unlink()
        os.mkfifo(out / "j0.png")
    else:  # a link inside OUT to a file outside it, recorded with that file's size and hash
        (out / "j0.png").unlink()
        (out / "j0.png").symlink_to(secret)
        _point_record_at(out, "j0", "j0.png", secret.read_bytes())
    requests = server.stats.requests
    result = await asyncio.wait_for(run_cli(argv, capsys), 20)  # /dev/zero must not spin
    assert server.stats.requests == requests + 1  # j0 was not done; j1 was
    assert secret.read_bytes() == b"top secret"
    [record] = [r for r in read_manifest(out) if r["id"] == "j0"]
    if where in ("link", "fifo"):  # never written through, never renamed over: the job fails
        assert (result.code, record["status"], record["error"]["kind"]) == (1, "failed", "write")
        assert (out / "j0.png").is_symlink() or stat.S_ISFIFO((out / "j0.png").lstat().st_mode)
    else:
        assert result.code == 0, result.err
        assert record["files"][0]["path"] == "j0.png"
        assert (out / "j0.png").is_file()


async def test_prune_never_deletes_a_file_a_current_job_owns(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "x-1", "prompt": "a"}])
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli(argv, capsys)).code == 0
    write_jobs(jobs, [{"id": "x", "prompt": "b", "n": 2}])  # x-1.png is x's first image now
    plan = await run_cli([*argv, "--dry-run", "--prune"], capsys)
    assert "--prune would remove 1 job(s)" in plan.out and "  x-1: no files" in plan.out
    result = await run_cli([*argv, "--prune"], capsys)
    assert result.code == 0, result.err
    assert (out / "x-1.png").is_file() and (out / "x-2.png").is_file()
    [record] = read_manifest(out)
    assert record["id"] == "x" and [f["path"] for f in record["files"]] == ["x-1.png", "x-2.png"]
    again = server.stats.requests
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.requests == again  # nothing to pay for twice


# -- an n > 1 job that stopped part way keeps what was paid for ---------------------------


def _fox_jobs(tmp_path: Path, n: int = 3) -> Path:
    return write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "fox", "prompt": "a fox", "n": n}, {"id": "owl", "prompt": "an owl"}],
    )


FOX = {"id": "fox", "prompt": "a fox", "n": 3}


async def _two_foxes_of_three(
    tmp_path: Path, make_mock: Any, capsys: Any, *extra: str
) -> tuple[Any, Path, Path, list[str]]:
    """A first run in which the fox (n: 3, beside an owl) saved 2 of its 3 images, the
    third refused: ``(server, jobs, out, argv)``."""
    server = await make_mock(MockOptions(script={"a fox": ["ok", "ok", "moderation"]}))
    jobs, out = _fox_jobs(tmp_path), tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), *extra]
    assert (await run_cli(argv, capsys)).code == 1  # fox-1, fox-2 saved and paid
    return server, jobs, out, argv


def _files(out: Path, record: dict[str, object]) -> dict[str, tuple[str, int]]:
    """path -> (sha256 on disk, inode): a file written again gets a new inode."""
    paths = [str(f["path"]) for f in record["files"]]  # type: ignore[index, union-attr]
    return {
        p: (hashlib.sha256((out / p).read_bytes()).hexdigest(), (out / p).stat().st_ino)
        for p in paths
    }


async def test_a_partly_failed_n_job_makes_only_its_missing_images(tmp_path, make_mock, capsys):
    server, _, out, argv = await _two_foxes_of_three(tmp_path, make_mock, capsys)
    fox = by_id(read_manifest(out))["fox"]
    assert fox["status"] == "failed" and len(fox["files"]) == 2
    before = _files(out, fox)
    plan = await run_cli([*argv, "--dry-run"], capsys)
    assert "Estimated cost of the 1 owed image(s)" in plan.out  # fox-3; the owl is done
    assert "fox-3.png" in plan.out and "fox-1.png" not in plan.out
    second = await run_cli([*argv, "--json"], capsys)
    assert second.code == 0
    summary = json.loads(second.out)
    assert summary["images"] == 1  # made by this run: the kept ones are not counted again
    assert summary["cost_usd"] == pytest.approx(by_id(read_manifest(out))["fox"]["cost_usd"])
    assert server.stats.attempts["a fox"] == 4  # three, then only the missing one
    assert server.stats.attempts["an owl"] == 1
    fox = by_id(read_manifest(out))["fox"]
    assert fox["status"] == "ok" and fox["kept"] == 2
    assert [f["path"] for f in fox["files"]] == ["fox-1.png", "fox-2.png", "fox-3.png"]
    after = _files(out, fox)
    assert {p: after[p] for p in before} == before  # the same bytes, never written again
    assert fox["warnings"] == []  # keeping what was paid for is no warning: "kept" says it
    for path in after:
        open_image(out / path)
    assert (await run_cli(argv, capsys)).code == 0  # done now: nothing more is sent
    assert server.stats.requests == 5


async def test_a_crash_between_the_images_of_an_n_job_loses_none(tmp_path, make_mock):
    server = await make_mock(MockOptions())
    _fox_jobs(tmp_path, n=4)
    out = tmp_path / "out"
    writes = 0

    async def crashing_writer(sink: ImageSink, out_dir: Path, relative: str) -> Path:
        nonlocal writes
        if relative.startswith("fox-"):
            writes += 1
            if writes == 3:
                raise Crash
        return await commit(sink, out_dir, relative)

    with pytest.raises(Crash):
        await _batch(tmp_path, server.base_url, writer=crashing_writer)
    assert server.stats.attempts["a fox"] == 3
    fox = by_id(read_manifest(out))["fox"]  # the record written before image 3 was asked for
    assert fox["status"] == "not_run" and fox["error"]["kind"] == "not_run"
    assert [f["path"] for f in fox["files"]] == ["fox-1.png", "fox-2.png"]
    summary = await _batch(tmp_path, server.base_url)
    assert server.stats.attempts["a fox"] == 5  # images 3 and 4 only
    assert summary.ok >= 1 and summary.failed == 0
    fox = by_id(read_manifest(out))["fox"]
    assert fox["status"] == "ok" and len(fox["files"]) == 4


async def test_a_changed_or_damaged_image_is_made_again(tmp_path, make_mock, capsys):
    server, jobs, out, argv = await _two_foxes_of_three(tmp_path, make_mock, capsys)
    (out / "fox-1.png").write_bytes(b"not the image")  # another size: not kept
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["a fox"] == 5  # images 1 and 3
    fox = by_id(read_manifest(out))["fox"]
    assert fox["status"] == "ok" and fox["kept"] == 1
    open_image(out / "fox-1.png")
    jobs.write_text(jobs.read_text().replace("a fox", "a red fox"))  # another request
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["a red fox"] == 3  # all three: nothing kept across requests


async def test_kill_9_between_the_images_of_an_n_job_then_rerun(tmp_path, make_mock):
    """A real kill -9 while image 3 of 3 hangs: the re-run asks only for image 3."""
    server = await make_mock(MockOptions(script={"a fox": ["ok", "ok", "hang"]}))
    jobs, out = _fox_jobs(tmp_path), tmp_path / "out"
    env = subprocess_env()
    argv = [sys.executable, "-m", "pmock_batch", str(jobs), "--base-url", server.base_url]
    argv += ["--out", str(out), "--concurrency", "1"]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    for _ in range(2000):
        if server.stats.attempts["a fox"] == 3 and manifest.exists():
            lines = manifest.read_text().splitlines()
            if any('"fox-2.png"' in line for line in lines):
                break
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert server.stats.attempts["a fox"] == 4
    fox = by_id(read_manifest(out))["fox"]
    assert fox["status"] == "ok" and len(fox["files"]) == 3


async def test_a_stop_before_an_unfinished_job_runs_keeps_its_images(tmp_path, make_mock, capsys):
    """A later run that stops (here: the spending cap) before the job records it without
    images; the images an earlier run saved are still kept by the run after."""
    server, jobs, out, argv = await _two_foxes_of_three(
        tmp_path, make_mock, capsys, "--concurrency", "1"
    )
    lines = [{"id": "cat", "prompt": "a cat"}, {"id": "fox", "prompt": "a fox", "n": 3}]
    write_jobs(jobs, lines)
    assert (await run_cli([*argv, "--max-images", "1"], capsys)).code == 5
    fox = by_id(read_manifest(out))["fox"]
    assert fox["status"] == "not_run" and fox["error"]["kind"] == "budget"
    assert server.stats.attempts["a fox"] == 3
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["a fox"] == 4  # only image 3
    assert by_id(read_manifest(out))["fox"]["kept"] == 2


def _record(job_id: str, status: str, fingerprint: str, at: str, files: list[Path]) -> str:
    listed = [
        {
            "path": f.name,
            "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
            "bytes": f.stat().st_size,
            "format": "png",
            "width": 1,
            "height": 1,
        }
        for f in files
    ]
    record = {"id": job_id, "line": 1, "status": status, "fingerprint": fingerprint}
    return json.dumps({**record, "files": listed, "finished_at": at}) + "\n"


def test_the_newest_part_across_manifests_counts(tmp_path):
    from pmock_batch.jobs import iter_jobs, scan
    from pmock_batch.resume import DoneIndex

    path = write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "n": 3}])
    (job,) = iter_jobs(path, scan(path))
    out = tmp_path / "out"
    out.mkdir()
    one, two = out / "fox-1.png", out / "fox-2.png"
    one.write_bytes(b"one")
    two.write_bytes(b"two")
    fp = job.fingerprint
    main, shard = out / "manifest.jsonl", out / "manifest.shard-0-of-2.jsonl"
    main.write_text(_record("fox", "failed", fp, "2026-12-01T10:00:02Z", [one, two]))
    shard.write_text(_record("fox", "not_run", fp, "2026-12-01T10:00:01Z", []))
    kept = DoneIndex.load_all([main, shard]).kept(job, out)
    assert [f.path for f in kept] == ["fox-1.png", "fox-2.png"]  # no image: no erasing
    shard.write_text(_record("fox", "failed", fp, "2026-12-01T10:00:03Z", [one]))
    kept = DoneIndex.load_all([main, shard]).kept(job, out)
    assert [f.path for f in kept] == ["fox-1.png"]  # the newest part counts
    main.write_text(
        _record("fox", "failed", fp, "2026-12-01T10:00:02Z", [one, two])
        + _record("fox", "failed", "another request", "2026-12-01T10:00:04Z", [])
    )
    shard.unlink()
    assert DoneIndex.load_all([main]).kept(job, out) == []  # another request ends it


async def test_a_stop_before_a_queued_unfinished_job_keeps_its_images(tmp_path, make_mock, capsys):
    """The stop reaches the job while it is still in the file (a leftover, not in a worker):
    its not_run record names the kept images, so compaction keeps them named."""
    server, jobs, out, argv = await _two_foxes_of_three(
        tmp_path, make_mock, capsys, "--concurrency", "1"
    )
    fox = FOX
    write_jobs(jobs, [*({"id": f"c{i}", "prompt": f"cat {i}"} for i in range(8)), fox])
    assert (await run_cli([*argv, "--max-images", "1"], capsys)).code == 5
    fox_record = by_id(read_manifest(out))["fox"]  # compacted: the stop's record
    assert fox_record["status"] == "not_run" and fox_record["kept"] == 2
    assert [f["path"] for f in fox_record["files"]] == ["fox-1.png", "fox-2.png"]
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["a fox"] == 4  # only image 3


@pytest.mark.parametrize(
    "first", [{"id": "a", "prompt": "x", "quailty": "high"}, {"id": "a", "prompt": "x", "n": 2}]
)
async def test_a_duplicate_id_never_makes_a_job_pay_again(tmp_path, make_mock, capsys, first):
    """Two lines with one id used to share a manifest record: each run superseded the other
    line's record, and every other run paid for one of them again."""
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", [first, {"id": "a", "prompt": "y"}])
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out")]
    for _ in range(3):
        assert (await run_cli([*argv, "--skip-invalid"], capsys)).code == 1
    made_once = 1 if "quailty" in first else 2  # the valid line's images, the first time only
    assert server.stats.requests == made_once


async def test_one_changed_image_of_a_done_n_job_is_the_only_one_made_again(
    tmp_path, make_mock, capsys
):
    server = await make_mock(MockOptions())
    jobs, out = _fox_jobs(tmp_path), tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["a fox"] == 3
    before = _files(out, by_id(read_manifest(out))["fox"])
    (out / "fox-2.png").unlink()  # deleted by hand
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["a fox"] == 4  # fox-2 only
    fox = by_id(read_manifest(out))["fox"]
    assert fox["status"] == "ok" and fox["kept"] == 2
    after = _files(out, fox)
    assert after["fox-1.png"] == before["fox-1.png"] and after["fox-3.png"] == before["fox-3.png"]
    open_image(out / "fox-2.png")
    size = (out / "fox-3.png").stat().st_size
    (out / "fox-3.png").write_bytes(b"\0" * size)  # the same size: only --verify sees it
    assert (await run_cli([*argv, "--verify"], capsys)).code == 0
    assert server.stats.attempts["a fox"] == 5  # fox-3 only
    open_image(out / "fox-3.png")


async def test_prune_removes_the_folders_it_empties(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    lines = [{"id": "icons/home", "prompt": "a house"}, {"id": "icons/more/x", "prompt": "x"}]
    lines.append({"id": "keep/y", "prompt": "y"})
    jobs = write_jobs(tmp_path / "jobs.jsonl", [*lines, {"id": "keep/z", "prompt": "z"}])
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli(argv, capsys)).code == 0
    write_jobs(jobs, [{"id": "keep/z", "prompt": "z"}])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)  # never entered
    assert (await run_cli([*argv, "--prune"], capsys)).code == 0
    assert not (out / "icons").exists()  # emptied: removed, deepest first
    assert (out / "keep" / "z.png").is_file() and not (out / "keep" / "y.png").exists()
    assert outside.is_dir() and (out / "link").is_symlink()


async def test_a_typo_on_a_done_jobs_own_line_never_makes_it_pay_again(tmp_path, make_mock, capsys):
    """The line of a done job breaks (``--skip-invalid`` records it invalid), then is fixed:
    the job is done still. Compaction keeps its ok record under the invalid one."""
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "cat"}])
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli(argv, capsys)).code == 0
    write_jobs(jobs, [{"id": "a", "prompt": "cat", "size": "bogus"}])
    assert (await run_cli([*argv, "--skip-invalid"], capsys)).code == 1
    assert [r["status"] for r in read_manifest(out)] == ["ok", "invalid"]  # both kept
    report = await run_cli(["report", str(out)], capsys)
    assert report.code == 0  # the report shows the line's latest outcome
    write_jobs(jobs, [{"id": "a", "prompt": "cat"}])  # fixed
    fixed = await run_cli(argv, capsys)
    assert fixed.code == 0 and server.stats.requests == 1  # made once, ever
    assert [r["status"] for r in read_manifest(out)] == ["ok"]


async def test_a_typo_on_a_part_done_jobs_line_never_makes_it_pay_again(
    tmp_path, make_mock, capsys
):
    """Like the ok case, for an n > 1 job that saved 2 of 3 images: the part must survive
    the compaction of the --skip-invalid run, or the fixed line pays for all 3 again."""
    server, jobs, _, argv = await _two_foxes_of_three(
        tmp_path, make_mock, capsys, "--concurrency", "1"
    )
    fox = FOX
    write_jobs(jobs, [{**fox, "size": "bogus"}])
    assert (await run_cli([*argv, "--skip-invalid"], capsys)).code == 1
    write_jobs(jobs, [fox])  # fixed
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.attempts["a fox"] == 4  # only image 3


async def test_the_compacted_manifest_reads_a_broken_line_as_invalid(tmp_path, make_mock, capsys):
    """The done job's line moved up and broke: the compacted file must still read as invalid."""
    server = await make_mock(MockOptions())
    lines = [{"id": f"c{i}", "prompt": f"cat {i}"} for i in range(3)] + [{"id": "a", "prompt": "x"}]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli(argv, capsys)).code == 0
    write_jobs(jobs, [{"id": "a", "prompt": "x", "size": "bogus"}, *lines[:3]])  # a: line 1
    assert (await run_cli([*argv, "--skip-invalid"], capsys)).code == 1
    from pmock_batch.manifest import latest_records

    latest = [r.status for r in latest_records(out / "manifest.jsonl") if r.id == "a"]
    assert latest == ["invalid"]
