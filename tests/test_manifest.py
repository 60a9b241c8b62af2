"""The manifest: an append-only, flushed log that survives a torn last line, then compacted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pmock_batch.manifest import ManifestWriter, compact, read_records
from pmock_batch.models import ErrorRecord, FileRecord, JobRecord


def record(job_id: str | None, line: int, status: Any = "ok", **extra: Any) -> JobRecord:
    return JobRecord(id=job_id, line=line, status=status, **extra)


def dump(rec: JobRecord) -> str:
    return rec.model_dump_json() + "\n"


def statuses(path: Path) -> list[tuple[str | None, int, str]]:
    return [(r.id, r.line, r.status) for r in read_records(path)]


FULL = record(
    "icons/home",
    3,
    files=[
        FileRecord(
            path="icons/home.png", sha256="ab" * 32, bytes=1234, format="png", width=8, height=4
        )
    ],
    attempts=2,
    elapsed_s=1.5,
    http_status=200,
    usage={"total_tokens": 10},
    request={"prompt": "a house", "model": "gpt-image-2"},
    fingerprint="f" * 64,
    revised_prompt="a small house",
)


async def test_each_append_is_one_flushed_line(tmp_path: Path) -> None:
    path = tmp_path / "out" / "manifest.jsonl"  # the folder is created
    first = record("a", 1)
    second = record(None, 2, "invalid", error=ErrorRecord(kind="invalid", message="bad"))
    async with ManifestWriter(path) as writer:
        await writer.append(first)
        assert path.read_text(encoding="utf-8") == dump(first)  # visible while still open
        await writer.append(second)
        assert path.read_text(encoding="utf-8") == dump(first) + dump(second)
        await writer.append(FULL)
    assert list(read_records(path)) == [first, second, FULL]


async def test_a_second_run_appends_to_the_log(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    async with ManifestWriter(path) as writer:
        await writer.append(record("a", 1, "failed"))
    async with ManifestWriter(path) as writer:
        await writer.append(record("a", 1))
    assert statuses(path) == [("a", 1, "failed"), ("a", 1, "ok")]


async def test_append_needs_an_open_writer(tmp_path: Path) -> None:
    writer = ManifestWriter(tmp_path / "manifest.jsonl")
    with pytest.raises(RuntimeError) as caught:
        await writer.append(record("a", 1))
    assert str(caught.value) == "ManifestWriter is not open; use 'async with'"
    async with writer:
        pass
    with pytest.raises(RuntimeError, match="not open"):
        await writer.append(record("a", 1))


def test_read_records_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    whole = dump(record("a", 1)) + dump(record("b", 2))
    path.write_text(whole + dump(record("c", 3))[:25], encoding="utf-8")
    assert statuses(path) == [("a", 1, "ok"), ("b", 2, "ok")]


@pytest.mark.parametrize("junk", ["", "\n", "[1, 2]\n", '"a string"\n', "{not json\n"], ids=repr)
def test_read_records_skips_lines_that_are_not_records(tmp_path: Path, junk: str) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text(dump(record("a", 1)) + junk + dump(record("b", 2)), encoding="utf-8")
    assert statuses(path) == [("a", 1, "ok"), ("b", 2, "ok")]


def test_read_records_of_a_missing_file(tmp_path: Path) -> None:
    assert list(read_records(tmp_path / "nope.jsonl")) == []


async def test_the_writer_heals_a_torn_last_line_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    torn = dump(record("b", 2))[:30]
    path.write_text(dump(record("a", 1)) + torn, encoding="utf-8")
    async with ManifestWriter(path) as writer:
        await writer.append(record("c", 3))
    assert path.read_text(encoding="utf-8") == dump(record("a", 1)) + torn + "\n" + dump(
        record("c", 3)
    )
    assert statuses(path) == [("a", 1, "ok"), ("c", 3, "ok")]


@pytest.mark.parametrize("content", ["", dump(record("a", 1))], ids=["empty", "whole-lines"])
async def test_the_writer_leaves_a_whole_log_alone(tmp_path: Path, content: str) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text(content, encoding="utf-8")
    async with ManifestWriter(path):
        pass
    assert path.read_text(encoding="utf-8") == content


def test_compact_keeps_the_latest_record_per_job_in_input_order(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    log = [
        record("c", 3, "failed", attempts=6),
        record("a", 1, "failed"),
        record(None, 4, "invalid", error=ErrorRecord(kind="invalid", message="not JSON")),
        record("b", 2),
        record("c", 3, "ok", attempts=1),  # the retry of c on a re-run
        record("a", 1, "ok", attempts=2),
        record(None, 4, "invalid", error=ErrorRecord(kind="invalid", message="still bad")),
        record("d", 5, "not_run"),
    ]
    path.write_text("".join(dump(r) for r in log) + '{"id": "e", "li', encoding="utf-8")
    compact(path)
    assert path.read_text(encoding="utf-8") == "".join(
        dump(r) for r in (log[5], log[3], log[4], log[6], log[7])
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]


def test_compact_follows_a_job_that_moved_to_another_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text(
        dump(record("a", 1)) + dump(record("b", 2)) + dump(record("a", 3)), encoding="utf-8"
    )
    compact(path)
    assert statuses(path) == [("b", 2, "ok"), ("a", 3, "ok")]


def test_compact_keeps_unknown_fields_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    line = json.dumps({"id": "a", "line": 1, "status": "ok", "from_the_future": [1, 2]}) + "\n"
    path.write_text(line, encoding="utf-8")
    compact(path)
    assert path.read_text(encoding="utf-8") == line


def test_compact_ends_every_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    last = dump(record("b", 2)).rstrip("\n")  # whole JSON, but no newline
    path.write_text(dump(record("a", 1)) + last, encoding="utf-8")
    compact(path)
    assert path.read_text(encoding="utf-8") == dump(record("a", 1)) + last + "\n"


def test_compact_of_a_missing_file_does_nothing(tmp_path: Path) -> None:
    compact(tmp_path / "manifest.jsonl")
    assert list(tmp_path.iterdir()) == []


async def test_compact_after_a_run_then_append_again(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    async with ManifestWriter(path) as writer:
        for rec in (record("b", 2, "failed"), record("a", 1), record("b", 2)):
            await writer.append(rec)
    compact(path)
    assert statuses(path) == [("a", 1, "ok"), ("b", 2, "ok")]
    async with ManifestWriter(path) as writer:
        await writer.append(record("c", 3))
    assert statuses(path) == [("a", 1, "ok"), ("b", 2, "ok"), ("c", 3, "ok")]


async def test_concurrent_appends_lose_no_record(tmp_path: Path) -> None:
    """Many workers append at once; aiofiles writes from threads, so they must take turns."""
    import asyncio

    path = tmp_path / "manifest.jsonl"
    prompt = "x" * 2000

    async def worker(writer: ManifestWriter, w: int) -> None:
        for i in range(50):
            await writer.append(
                JobRecord(id=f"w{w}-{i}", line=w * 100 + i, status="ok", request={"prompt": prompt})
            )

    async with ManifestWriter(path) as writer:
        await asyncio.gather(*(worker(writer, w) for w in range(64)))
    records = list(read_records(path))
    assert len(records) == 64 * 50
    assert len({r.id for r in records}) == 64 * 50
    assert len(path.read_text(encoding="utf-8").splitlines()) == 64 * 50
