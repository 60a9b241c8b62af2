"""Shards (``--shard K/N``): the stable share of a job, N runs on one OUT, resume across N."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
from pathlib import Path

import pytest
from helpers import run_cli, write_jobs

from pmock_batch.config import RunConfig
from pmock_batch.errors import LockedError, UsageError
from pmock_batch.jobs import InvalidLine, iter_jobs, scan
from pmock_batch.lock import run_lock
from pmock_batch.mock import MockOptions
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import run_batch
from pmock_batch.shards import Shard, job_key, out_lock, parse_shard, share_of

KEY = "sk-shard-test-key"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


async def _noop_sleep(_: float) -> None:
    return None


def _lines(n: int, *, start: int = 0) -> list[dict[str, object]]:
    return [{"id": f"j{i}", "prompt": f"prompt {i}", "n": 1 + i % 3} for i in range(start, n)]


async def _shard_run(jobs: Path, out: Path, base_url: str, shard: Shard | None):
    config = RunConfig(out_dir=out, base_url=base_url, api_key=KEY, concurrency=2, shard=shard)
    return await run_batch(
        config, iter_jobs(jobs, scan(jobs)), policy=RetryPolicy(sleep=_noop_sleep)
    )


def _manifest(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the share of a job: pure ------------------------------------------------------------


def test_shares_are_balanced_by_images():
    rng = random.Random(7)
    counts = [rng.choice((1, 1, 1, 2, 4, 8)) for _ in range(2000)]
    for n in (2, 3, 4, 7):
        images = [0] * n
        for i, count in enumerate(counts):
            images[share_of(f"job-{i}", n)] += count
        mean = sum(counts) / n
        assert all(abs(share - mean) <= 0.10 * mean for share in images), (n, images, mean)


def test_share_is_stable_and_in_range():
    assert share_of("a fox", 4) == share_of("a fox", 4)  # no salt, no process seed
    assert share_of("j1", 1) == 0
    assert {share_of(f"k{i}", 5) for i in range(200)} == set(range(5))
    # Pinned: the documented function (SHA-256, first 8 bytes, scaled to N) must not drift.
    assert [share_of(f"j{i}", 4) for i in range(8)] == _pinned()


def _pinned() -> list[int]:
    import hashlib

    return [
        int.from_bytes(hashlib.sha256(f"j{i}".encode()).digest()[:8], "big") * 4 // 2**64
        for i in range(8)
    ]


def test_adding_lines_moves_no_other_job(tmp_path):
    before = write_jobs(tmp_path / "a.jsonl", [*_lines(40), "a prompt without id"])
    after = write_jobs(
        tmp_path / "b.jsonl",
        [
            "new first line",
            *_lines(40)[::2],
            {"id": "new", "prompt": "x"},
            *_lines(40)[1::2],
            "a prompt without id",
        ],
    )
    shares = {}
    for job in iter_jobs(before, scan(before)):
        shares[job_key(job)] = share_of(job_key(job), 3)
    for job in iter_jobs(after, scan(after)):
        key = job_key(job)
        if key in shares:
            assert share_of(key, 3) == shares[key]
    assert "j5" in shares and any(k.startswith("fingerprint:") for k in shares)


@pytest.mark.parametrize(
    ("value", "count", "env", "message"),
    [
        ("4/4", None, {}, "K must be 0 to N-1"),
        ("0/0", None, {}, "K must be 0 to N-1"),
        ("-1/4", None, {}, "must be K/N"),
        ("1of4", None, {}, "must be K/N"),
        ("auto", None, {"JOB_COMPLETION_INDEX": "1"}, "needs --shard-count"),
        ("auto", 4, {}, "JOB_COMPLETION_INDEX, which is not set"),
        ("auto", 4, {"JOB_COMPLETION_INDEX": "x"}, "not a whole number"),
        ("auto", 4, {"JOB_COMPLETION_INDEX": "4"}, "not below --shard-count 4"),
        ("1/4", 4, {}, "--shard-count goes with --shard auto"),
    ],
)
def test_bad_shard_values(value, count, env, message):
    with pytest.raises(UsageError, match=message):
        parse_shard(value, count, env)


def test_good_shard_values():
    assert parse_shard("2/4", None, {}) == Shard(2, 4)
    assert parse_shard("auto", 3, {"JOB_COMPLETION_INDEX": "2"}) == Shard(2, 3)
    assert Shard(1, 3).manifest_name == "manifest.shard-1-of-3.jsonl"


def test_locks_shards_share_out_but_not_with_an_unsharded_run(tmp_path):
    with out_lock(tmp_path, Shard(0, 2)), out_lock(tmp_path, Shard(1, 2)):
        with pytest.raises(LockedError), out_lock(tmp_path, Shard(0, 2)):
            pass  # the same shard twice
        with pytest.raises(LockedError), run_lock(tmp_path):
            pass  # an unsharded run (or `report`) waits for the shards
    with run_lock(tmp_path), pytest.raises(LockedError), out_lock(tmp_path, Shard(0, 2)):
        pass
    assert (tmp_path / ".lock.shard-1-of-2").is_file()


def test_shards_of_another_count_are_refused_while_one_runs(tmp_path):
    """0/2 and 0/4 overlap (a quarter of the jobs is in both): never at once."""
    with out_lock(tmp_path, Shard(0, 2)):
        refused = pytest.raises(LockedError, match=r"another count.*\.lock\.shard-0-of-2")
        with refused, out_lock(tmp_path, Shard(0, 4)):
            pass
        with out_lock(tmp_path, Shard(1, 2)):  # the same count: side by side
            pass
    with out_lock(tmp_path, Shard(0, 4)):  # the files stay, but nobody holds them now
        pass


# -- runs over loopback HTTP -------------------------------------------------------------


async def test_three_shards_in_parallel_do_every_job_once(tmp_path, make_mock):
    server = await make_mock(MockOptions())
    lines = _lines(60)
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    summaries = await asyncio.gather(
        *(_shard_run(jobs, out, server.base_url, Shard(k, 3)) for k in range(3))
    )
    images = sum(1 + i % 3 for i in range(60))
    assert server.stats.requests == images  # every image asked for exactly once
    assert sum(s.ok for s in summaries) == 60 and all(s.ok for s in summaries)
    assert not (out / "manifest.jsonl").exists()
    seen: list[str] = []
    for k in range(3):
        records = _manifest(out / f"manifest.shard-{k}-of-3.jsonl")
        assert all(r["status"] == "ok" for r in records)
        assert all(share_of(str(r["id"]), 3) == k for r in records)
        seen += [str(r["id"]) for r in records]
        assert (out / f"report.shard-{k}-of-3.html").is_file()
    assert sorted(seen) == sorted(str(line["id"]) for line in lines)
    assert not (out / "report.html").exists()


async def test_resume_across_shard_counts(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", [*_lines(30), "no id here"])
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    for k in range(2):
        assert (await run_cli([*argv, "--shard", f"{k}/2"], capsys)).code == 0
    sent = server.stats.requests
    assert sent == sum(1 + i % 3 for i in range(30)) + 1
    again = await run_cli([*argv, "--json"], capsys)  # unsharded: everything is done
    assert again.code == 0 and server.stats.requests == sent
    assert json.loads(again.out)["jobs"]["skipped"] == 31
    for k in range(3):
        result = await run_cli([*argv, "--shard", f"{k}/3", "--json"], capsys)
        assert result.code == 0 and json.loads(result.out)["shard"] == f"{k}/3"
    assert server.stats.requests == sent
    # No record is lost: the shards' manifests stay, and hold every job once.
    ids = [r["id"] for k in range(2) for r in _manifest(out / f"manifest.shard-{k}-of-2.jsonl")]
    assert len(ids) == len(set(ids)) == 31
    dry = await run_cli([*argv, "--dry-run"], capsys)
    assert "31 already done, 0 to run" in dry.out


async def test_the_newest_ok_record_across_manifests_decides(tmp_path, make_mock, capsys):
    """A shard did x with prompt A, an unsharded run then redid x with prompt B (same
    file): x with prompt A again is not done, though the shard's record still says so."""
    server = await make_mock(MockOptions())
    out = tmp_path / "out"
    jobs = tmp_path / "jobs.jsonl"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    path = write_jobs(jobs, [{"id": "x", "prompt": "A"}])
    [job] = [j for j in iter_jobs(path, scan(path)) if not isinstance(j, InvalidLine)]
    key = job_key(job)
    mine = share_of(key, 2)
    assert (await run_cli([*argv, "--shard", f"{mine}/2"], capsys)).code == 0
    write_jobs(jobs, [{"id": "x", "prompt": "B"}])
    assert (await run_cli(argv, capsys)).code == 0
    b_image = (out / "x.png").read_bytes()
    assert server.stats.requests == 2
    # Sizes can match by chance (here they are made to): only the record's age tells.
    shard_manifest = out / f"manifest.shard-{mine}-of-2.jsonl"
    [record] = _manifest(shard_manifest)
    record["files"][0]["bytes"] = len(b_image)
    shard_manifest.write_text(json.dumps(record) + "\n")
    write_jobs(jobs, [{"id": "x", "prompt": "A"}])
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.requests == 3  # the shard's record is superseded: A is made again
    assert (out / "x.png").read_bytes() != b_image


@pytest.mark.parametrize("kind", ["fifo", "link"])
async def test_a_shard_refuses_a_manifest_that_is_not_a_regular_file(
    tmp_path, make_mock, capsys, kind
):
    server = await make_mock(MockOptions())
    out = tmp_path / "out"
    out.mkdir()
    if kind == "fifo":
        os.mkfifo(out / "manifest.jsonl")
    else:
        (tmp_path / "elsewhere.jsonl").write_text("")
        (out / "manifest.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(4))
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--shard", "0/2"]
    result = await asyncio.wait_for(run_cli(argv, capsys), 20)  # a FIFO must not block
    assert result.code == 2, result.err
    assert "manifest.jsonl" in result.err
    assert server.stats.requests == 0


async def test_shard_summary_and_json(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(12))
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--shard", "1/2"]
    result = await run_cli([*argv, "--json"], capsys)
    assert result.code == 0
    data = json.loads(result.out)
    mine = [i for i in range(12) if share_of(f"j{i}", 2) == 1]
    assert data["shard"] == "1/2" and data["jobs"]["ok"] == len(mine)
    assert data["manifest"].endswith("manifest.shard-1-of-2.jsonl")
    assert "shard" in result.err and "1/2: " in result.err
    assert server.stats.requests == sum(1 + i % 3 for i in mine)


async def test_shard_auto_reads_job_completion_index(tmp_path, make_mock, capsys, monkeypatch):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(10))
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    result = await run_cli([*argv, "--shard", "auto", "--shard-count", "3", "--json"], capsys)
    assert result.code == 0 and json.loads(result.out)["shard"] == "2/3"
    assert (out / "manifest.shard-2-of-3.jsonl").is_file()
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    bad = await run_cli([*argv, "--shard", "auto", "--shard-count", "3"], capsys)
    assert bad.code == 2 and "JOB_COMPLETION_INDEX" in bad.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard", "3/3"], "K must be 0 to N-1"),
        (["--shard", "a/b"], "must be K/N"),
        (["--shard", "0/2", "--prune"], "--prune cannot be used with --shard"),
        (["--shard", "0/2", "--batch-api"], "--batch-api cannot be used with --shard"),
        (["--shard-count", "2"], "--shard-count goes with --shard auto"),
        (["--shard", "auto", "--shard-count", "0"], "--shard-count"),
    ],
)
async def test_bad_shard_flags_are_usage_errors(tmp_path, capsys, flags, message):
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(2))
    result = await run_cli([str(jobs), "--mock", "--out", str(tmp_path / "out"), *flags], capsys)
    assert result.code == 2 and message in result.err, result.err
    assert not (tmp_path / "out").exists()


async def test_shards_as_processes_on_one_out(tmp_path, make_mock):
    """Three real processes, one OUT, one mock: each image asked for once, no lock clash."""
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(24))
    out = tmp_path / "out"
    env = {**os.environ, "PMOCK_API_KEY": KEY}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pmock_batch",
            str(jobs),
            "--base-url",
            server.base_url,
            "--out",
            str(out),
            "--shard",
            f"{k}/3",
            "--quiet",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for k in range(3)
    ]
    results = [await proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], results
    assert server.stats.requests == sum(1 + i % 3 for i in range(24))
    done = [r["id"] for k in range(3) for r in _manifest(out / f"manifest.shard-{k}-of-3.jsonl")]
    assert sorted(done) == sorted(f"j{i}" for i in range(24))


async def test_a_shard_leaves_others_files_alone(tmp_path, make_mock, capsys):
    """Another shard's temporary file and manifest.jsonl are not a shard's to touch."""
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(9))
    out = tmp_path / "out"
    out.mkdir()
    temp = out / ".j99.png.0123abcd.pmock-tmp"  # as if another shard were writing j99.png
    temp.write_bytes(b"half an image")
    (out / "manifest.jsonl").write_text('{"id":"old","line":1,"status":"failed"}\n')
    before = (out / "manifest.jsonl").read_bytes()
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    result = await run_cli([*argv, "--shard", "0/2"], capsys)
    assert result.code == 0, result.err
    assert temp.exists() and (out / "manifest.jsonl").read_bytes() == before
    mine = sum(share_of(f"j{i}", 2) == 0 for i in range(9))
    assert re.search(rf"progress: {mine}/{mine} done|\| jobs +\| {mine} +\|", result.err)
    assert (await run_cli(argv, capsys)).code == 0  # unsharded: it cleans up after a crash
    assert not temp.exists()


async def test_invalid_lines_are_recorded_by_shard_zero_only(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", [*_lines(6), "RAW:{not json"])
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--skip-invalid"]
    codes = [(await run_cli([*argv, "--shard", f"{k}/2"], capsys)).code for k in range(2)]
    assert codes == [1, 0]  # shard 1 had no invalid line to record
    invalid = [
        k
        for k in range(2)
        for r in _manifest(out / f"manifest.shard-{k}-of-2.jsonl")
        if r["status"] == "invalid"
    ]
    assert invalid == [0]


async def test_dry_run_plans_the_share_only(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(30))
    mine = [i for i in range(30) if share_of(f"j{i}", 3) == 2]
    images = sum(1 + i % 3 for i in mine)
    argv = [str(jobs), "--mock", "--out", str(tmp_path / "out"), "--dry-run", "--shard", "2/3"]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    assert f", shard 2/3 (its share only): {len(mine)} job(s), {images} image(s)" in result.out
    assert f"0 already done, {len(mine)} to run" in result.out
    assert not (tmp_path / "out").exists()


async def test_report_names_the_shard_manifests_it_leaves_out(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", _lines(6))
    out = tmp_path / "out"
    for k in range(2):
        await _shard_run(jobs, out, server.base_url, Shard(k, 2))
    alone = await run_cli(["report", str(out)], capsys)
    assert alone.code == 2
    assert f"'pmock-batch merge {out}' folds the 2 shard manifest(s)" in alone.err
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out)]
    assert (await run_cli(argv, capsys)).code == 0  # manifest.jsonl: the shards' jobs skipped
    beside = await run_cli(["report", str(out)], capsys)
    assert beside.code == 0, beside.err
    assert "note: the report leaves out the shards' jobs" in beside.err
    assert (out / "report.shard-0-of-2.html").is_file()
    assert (await run_cli(["merge", str(out)], capsys)).code == 0
    assert not list(out.glob("report.shard-*")) and not list(out.glob("manifest.shard-*"))
    merged = await run_cli(["report", str(out)], capsys)
    assert merged.code == 0 and "note:" not in merged.err
