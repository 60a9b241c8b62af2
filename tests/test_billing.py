"""Issue 8 over real loopback HTTP: images a decoder accepts, and never paying twice.

Bytes after an image's end keep the image (with a warning); a size not as
asked is a warning; a billed 200 whose image is unusable is retried at most
``--max-billed-retries`` times and its bytes are kept under ``.rejected/``; a
failed download of a URL image retries the GET alone.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from helpers import FakeSleep, by_id, open_image, read_manifest, run_cli, write_jobs

from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.mock.success import trailing_junk
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import run_batch

KEY = "sk-billing-test-key"
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    """Every test here talks to a mock with this key (conftest isolates the rest)."""
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


async def _batch(tmp_path: Path, base_url: str, lines, **policy):
    path = write_jobs(tmp_path / "jobs.jsonl", lines)
    config = RunConfig(out_dir=tmp_path / "out", base_url=base_url, api_key=KEY, concurrency=2)
    sleep = FakeSleep()
    policy.setdefault("rng", random.Random(3))
    summary = await run_batch(
        config, iter_jobs(path, scan(path)), policy=RetryPolicy(sleep=sleep, **policy)
    )
    return summary, by_id(read_manifest(tmp_path / "out")), sleep


def _argv(tmp_path: Path, server, *extra: str) -> list[str]:
    jobs = tmp_path / "jobs.jsonl"
    return [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out"), *extra]


# --- bytes after the end -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_bytes_after_the_end_keep_the_image_and_warn(tmp_path, make_mock, capsys, fmt):
    server = await make_mock(MockOptions(trailing_bytes=100))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox", "output_format": fmt}])
    result = await run_cli(_argv(tmp_path, server, "--json"), capsys)
    assert result.code == 0, result.err
    assert server.stats.requests == 1  # accepted at once: no retry, no second bill
    path = tmp_path / "out" / f"fox.{EXTENSIONS[fmt]}"
    data = path.read_bytes()
    assert data.endswith(trailing_junk(100))  # kept exactly as received
    assert open_image(path).size == (1024, 1024)
    record = read_manifest(tmp_path / "out")[0]
    assert record["status"] == "ok"
    assert record["files"][0]["bytes"] == len(data)
    assert record["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["billed_retries"] == 0 and record["rejected"] == []
    [warning] = record["warnings"]
    assert warning.startswith(f"fox.{EXTENSIONS[fmt]}: 100 bytes after ")
    summary = json.loads(result.out)
    assert summary["warnings"] == 1 and summary["billed_retries"] == 0
    assert "| warnings" in result.err


async def test_mock_trailing_bytes_flag_through_the_cli(tmp_path, capsys):
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox"}])
    out = tmp_path / "out"
    argv = [str(tmp_path / "jobs.jsonl"), "--mock", "--out", str(out), "--json"]
    result = await run_cli([*argv, "--mock-trailing-bytes", "37"], capsys)
    assert result.code == 0, result.err
    assert (out / "fox.png").read_bytes().endswith(trailing_junk(37))
    assert json.loads(result.out)["warnings"] == 1
    bad = await run_cli([*argv, "--mock-trailing-bytes", "-1"], capsys)
    assert bad.code == 2 and "-1 is not in the range x>=0" in bad.err


async def test_a_png_cut_before_iend_still_fails(tmp_path, make_mock):
    server = await make_mock(MockOptions(trailing_bytes=100, script={"a fox": ["corrupt"] * 9}))
    lines = [{"id": "fox", "prompt": "a fox"}]
    summary, records, _ = await _batch(tmp_path, server.base_url, lines)
    assert records["fox"]["status"] == "failed"
    assert records["fox"]["error"]["message"] == "the PNG image is truncated (no IEND chunk)"
    assert summary.failed == 1


# --- dimensions --------------------------------------------------------------------------


async def test_a_size_not_as_asked_is_a_warning(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=1))
    write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "asked", "prompt": "a fox", "size": "1024x1024"},
            {"id": "auto", "prompt": "a cat", "size": "auto"},
            {"id": "unset", "prompt": "an owl"},
        ],
    )
    result = await run_cli(_argv(tmp_path, server, "--json"), capsys)
    assert result.code == 0, result.err
    records = by_id(read_manifest(tmp_path / "out"))
    assert records["asked"]["warnings"] == [
        "asked.png: asked for size 1024x1024 but the image is 1x1"
    ]
    assert records["asked"]["files"][0]["width"] == 1
    assert records["auto"]["warnings"] == [] and records["unset"]["warnings"] == []
    assert json.loads(result.out)["warnings"] == 1


# --- billed retries ----------------------------------------------------------------------


async def test_corrupt_twice_is_two_posts_and_both_answers_are_kept(
    tmp_path, make_mock, capsys, cli_sleep
):
    server = await make_mock(MockOptions(script={"a fox": ["corrupt", "corrupt"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "pets/fox", "prompt": "a fox"}])
    out = tmp_path / "out"
    result = await run_cli(_argv(tmp_path, server, "--json"), capsys)
    assert result.code == 1
    assert server.stats.requests == 2  # the default: one billed retry, not six
    record = read_manifest(out)[0]
    assert record["status"] == "failed"
    assert record["attempts"] == 2 and record["billed_retries"] == 1
    assert record["error"]["kind"] == "invalid_response"
    kept = record["rejected"]
    assert [k["path"] for k in kept] == [".rejected/pets/fox.1.bin", ".rejected/pets/fox.2.bin"]
    for entry in kept:
        data = (out / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"] > 0
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert "truncated" in entry["reason"]
    summary = json.loads(result.out)
    assert summary["billed_retries"] == 1 and summary["retries"] == 1
    assert len(cli_sleep.waits) == 1
    assert "billed retries" in result.err
    assert not (out / "pets" / "fox.png").exists()
    assert not list(out.rglob("*.pmock-tmp"))

    # A re-run: the script has run out, so it succeeds with one POST. The kept bytes are
    # exactly the first half of that image (what `corrupt` sends), and stay where they were.
    rerun = await run_cli(_argv(tmp_path, server), capsys)
    assert rerun.code == 0, rerun.err
    assert server.stats.requests == 3
    good = (out / "pets" / "fox.png").read_bytes()
    for entry in kept:
        assert (out / entry["path"]).read_bytes() == good[: len(good) // 2]
    record = read_manifest(out)[0]
    assert record["status"] == "ok" and record["rejected"] == []
    report = (out / "report.html").read_text(encoding="utf-8")
    assert ".rejected" not in report  # never shown as an image

    # Resume does not count them as output, and clean-up does not remove them.
    again = await run_cli(_argv(tmp_path, server), capsys)
    assert again.code == 0 and server.stats.requests == 3
    assert sorted(p.name for p in (out / ".rejected" / "pets").iterdir()) == [
        "fox.1.bin",
        "fox.2.bin",
    ]


async def test_a_later_run_never_overwrites_kept_bytes(tmp_path, make_mock):
    server = await make_mock(MockOptions(script={"a fox": ["corrupt"] * 4}))
    lines = [{"id": "fox", "prompt": "a fox"}]
    await _batch(tmp_path, server.base_url, lines)
    _, records, _ = await _batch(tmp_path, server.base_url, lines)
    assert [k["path"] for k in records["fox"]["rejected"]] == [
        ".rejected/fox.1-2.bin",
        ".rejected/fox.2-2.bin",
    ]
    assert len(list((tmp_path / "out" / ".rejected").iterdir())) == 4


@pytest.mark.parametrize(("cap", "posts", "status"), [(0, 1, "failed"), (2, 3, "ok")])
async def test_max_billed_retries_flag(tmp_path, make_mock, capsys, cli_sleep, cap, posts, status):
    server = await make_mock(MockOptions(script={"a fox": ["corrupt", "corrupt"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox"}])
    result = await run_cli(_argv(tmp_path, server, "--max-billed-retries", str(cap)), capsys)
    assert result.code == (0 if status == "ok" else 1)
    assert server.stats.requests == posts
    record = read_manifest(tmp_path / "out")[0]
    assert record["status"] == status
    assert record["billed_retries"] == posts - 1
    assert len(record["rejected"]) == min(posts, 2)
    assert len(cli_sleep.waits) == posts - 1


@pytest.mark.parametrize(
    ("script", "posts", "status", "billed", "kept"),
    [
        (["truncate", "truncate"], 2, "failed", 1, 2),  # a 200 cut mid-body was billed too
        (["bad_base64", "ok"], 2, "ok", 1, 0),  # billed, but no image bytes to keep
        (["500", "503", "corrupt", "drop", "502", "ok"], 6, "ok", 1, 1),  # others: normal budget
        (["500", "corrupt", "500", "corrupt", "ok"], 4, "failed", 1, 2),
    ],
)
async def test_what_counts_as_billed(tmp_path, make_mock, script, posts, status, billed, kept):
    server = await make_mock(MockOptions(script={"a fox": script}))
    summary, records, sleep = await _batch(
        tmp_path, server.base_url, [{"id": "fox", "prompt": "a fox"}], max_attempts=6
    )
    record = records["fox"]
    assert server.stats.requests == posts
    assert (record["status"], record["attempts"], record["billed_retries"]) == (
        status,
        posts,
        billed,
    )
    assert record["ambiguous_retries"] == 0
    assert len(record["rejected"]) == kept
    assert summary.billed_retries == billed
    assert len(sleep.waits) == posts - 1


# --- URL downloads -----------------------------------------------------------------------


async def test_a_failed_download_retries_the_get_not_the_post(
    tmp_path, make_mock, capsys, cli_sleep
):
    server = await make_mock(MockOptions(download_script=("500", "truncate", "404")))
    write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "owl", "prompt": "an owl", "response_format": "url", "model": "dall-e-2"}],
    )
    result = await run_cli(_argv(tmp_path, server, "--json"), capsys)
    assert result.code == 0, result.err
    assert server.stats.requests == 1  # one POST: one billed generation
    assert sum(server.stats.download_attempts.values()) == 4
    assert server.stats.downloads == 1
    assert len(cli_sleep.waits) == 3  # the GETs' backoff, through the injected sleep
    record = read_manifest(tmp_path / "out")[0]
    assert record["status"] == "ok" and record["attempts"] == 1
    assert record["billed_retries"] == 0 and record["rejected"] == []
    assert open_image(tmp_path / "out" / "owl.png").size == (1024, 1024)


async def test_downloads_that_keep_failing_cost_one_more_post_at_most(tmp_path, make_mock):
    server = await make_mock(MockOptions(download_script=("503",) * 20))
    summary, records, sleep = await _batch(
        tmp_path,
        server.base_url,
        [{"id": "owl", "prompt": "an owl", "response_format": "url", "model": "dall-e-2"}],
        download_attempts=3,
    )
    record = records["owl"]
    assert record["status"] == "failed"
    assert record["error"]["message"] == "downloading the image URL answered 503"
    assert server.stats.requests == 2  # the billed retry: one new generation
    assert sum(server.stats.download_attempts.values()) == 2 * 3
    assert record["billed_retries"] == 1 and summary.billed_retries == 1
    assert len(sleep.waits) == 2 * 2 + 1  # the GETs' backoff, then the POST's


async def test_mock_download_script_flag_is_validated(tmp_path, capsys):
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "owl", "prompt": "an owl"}])
    argv = [str(tmp_path / "jobs.jsonl"), "--mock", "--out", str(tmp_path / "out")]
    bad = await run_cli([*argv, "--mock-download-script", "corrupt"], capsys)
    assert bad.code == 2 and "download outcome 'corrupt'" in bad.err
