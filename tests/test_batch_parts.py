"""The Batch API runner's pure parts: rows and splitting, the line splitter, the state log."""

from __future__ import annotations

import json

import pytest
from helpers import write_jobs

from pmock_batch.batchapi.book import Book
from pmock_batch.batchapi.lines import LineSplitter, parse_rest
from pmock_batch.batchapi.plan import ENDPOINT, rows_of, split
from pmock_batch.batchapi.state import STATE_NAME, BatchState
from pmock_batch.errors import InvalidResponseError
from pmock_batch.jobs import iter_jobs, scan


def _jobs(tmp_path, lines):
    path = write_jobs(tmp_path / "jobs.jsonl", lines)
    return [j for j in iter_jobs(path, scan(path)) if not hasattr(j, "message")]


def test_one_line_per_image_custom_id_is_the_stem_body_is_the_wire_body(tmp_path):
    [fox, owl] = _jobs(tmp_path, [{"id": "fox", "prompt": "a fox"}, {"prompt": "an owl", "n": 3}])
    rows = rows_of(fox) + rows_of(owl)
    assert [r.custom_id for r in rows] == ["fox", *owl.stems]
    assert owl.stems[0].endswith("-1") and len(owl.stems) == 3
    line = json.loads(rows[1].line)
    assert line == {
        "custom_id": owl.stems[0],
        "method": "POST",
        "url": ENDPOINT,
        "body": owl.wire_body(),
    }
    assert "n" not in line["body"]
    assert [r.index for r in rows_of(owl, only=[2])] == [2]


def test_split_by_model_lines_and_bytes(tmp_path):
    jobs = _jobs(
        tmp_path,
        [
            {"id": f"a{i}", "prompt": "x" * 100, "model": "gpt-image-1" if i % 2 else "gpt-image-2"}
            for i in range(10)
        ],
    )
    rows = [r for j in jobs for r in rows_of(j)]
    files = list(split(rows, batch_size=2))
    assert all(len({r.model for r in f.rows}) == 1 for f in files)
    assert sorted(len(f.rows) for f in files) == [1, 1, 2, 2, 2, 2]
    assert sorted(r.custom_id for f in files for r in f.rows) == sorted(r.custom_id for r in rows)
    size = len(rows[0].line)
    small = list(split(rows, max_bytes=size * 3))
    assert all(f.size <= size * 3 for f in small) and len(small) == 4
    with pytest.raises(ValueError):
        list(split(rows, batch_size=0))


def _line(b64: str = "QUJD/+" * 50) -> bytes:
    body = {
        "created": 1,
        "data": [{"b64_json": b64, "revised_prompt": '}{"x'}],
        "usage": {"total_tokens": 3},
    }
    return (
        json.dumps(
            {
                "id": "r",
                "custom_id": "fox-2",
                "response": {"status_code": 200, "request_id": "req_9", "body": body},
                "error": None,
            }
        )
        .replace("/", "\\/")
        .encode()
    )  # as a server that escapes slashes sends it


@pytest.mark.parametrize("size", [1, 2, 5, 17, 1 << 20])
def test_the_splitter_hands_out_the_body_in_any_chunking(size):
    line, sp, body = _line(), LineSplitter(), b""
    for i in range(0, len(line), size):
        body += b"".join(sp.feed(line[i : i + size]))
    assert json.loads(body)["data"][0]["revised_prompt"] == '}{"x'
    assert json.loads(body)["data"][0]["b64_json"] == "QUJD/+" * 50
    rest = parse_rest(sp.rest)
    assert (rest.custom_id, rest.status_code, rest.request_id) == ("fox-2", 200, "req_9")
    assert sp.has_body and len(sp.rest) < 120  # the body is not kept


def test_error_lines_and_bad_lines():
    line = {
        "id": "r",
        "custom_id": "a",
        "response": None,
        "error": {"code": "batch_expired", "message": "not run"},
    }
    sp = LineSplitter()
    assert sp.feed(json.dumps(line).encode()) == [] and not sp.has_body
    rest = parse_rest(sp.rest)
    assert (rest.status_code, rest.error_code) == (None, "batch_expired")
    with pytest.raises(InvalidResponseError):
        parse_rest(b'{"no": "custom_id"}')
    with pytest.raises(InvalidResponseError):
        parse_rest(b"{not json")


def test_state_log_folds_and_survives_a_torn_line(tmp_path):
    state = BatchState(tmp_path)
    state.uploading("f.jsonl")
    state.uploaded("file-1", "f.jsonl", "gpt-image-2", {"a": "fp-a"})
    batch = state.created("batch_1", "file-1", at=100.0)
    assert state.status(batch, {"status": "in_progress", "request_counts": {"total": 1}})
    assert not state.status(batch, {"status": "in_progress", "request_counts": {"total": 1}})
    with (tmp_path / STATE_NAME).open("ab") as fh:
        fh.write(b'{"event": "collec')  # a kill mid-write
    again = BatchState.load(tmp_path)
    assert not again.intents
    assert again.uploads["file-1"].rows == {"a": "fp-a"}
    assert again.uploads["file-1"].batch_id == "batch_1"
    b = again.batches["batch_1"]
    assert (b.status, b.counts, b.at, b.collected, b.running) == (
        "in_progress",
        {"total": 1},
        100.0,
        False,
        True,
    )


def test_book_gathers_images_per_job(tmp_path):
    from pmock_batch.models import ErrorRecord, FileRecord

    [owl] = _jobs(tmp_path, [{"id": "owl", "prompt": "an owl", "n": 2}])
    book = Book([owl])
    assert book.owed("owl-1", "not-its-fingerprint") is None
    entry, index = book.owed("owl-2", owl.fingerprint) or (None, 0)
    f = FileRecord(path="owl-2.png", sha256="x", bytes=1, format="png", width=1, height=1)
    assert book.ok(entry, index, f, {"total_tokens": 2}) is None  # one image still owed
    assert book.owed("owl-2", owl.fingerprint) is None
    [pending] = book.leftovers({"owl-1": "batch_9"}, "unused")
    assert (pending.status, pending.batch_id) == ("pending", "batch_9")
    book = Book([owl])
    entry, _ = book.owed("owl-1", None) or (None, 0)
    record = book.failed(entry, 0, ErrorRecord(kind="moderation", message="no"))
    assert record is None
    [left] = book.leftovers({}, "its batch expired")
    assert (left.status, left.error.kind) == ("failed", "moderation")
