"""Edits through the Batch API (issue 13 §1): each distinct input uploaded once, named by id.

Real loopback HTTP against the project's own mock, on its fake clock: the
injected poll sleep moves the clock, nothing sleeps.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from batchtools import KEY, Crash, batches_made, run_on_clock
from conftest import FakeClock
from helpers import by_id, open_image, read_manifest, write_jobs
from test_edits import SIDE, _tinted_towards, mask, picture

from pmock_batch.batchapi import BatchClient, BatchState
from pmock_batch.batchapi.plan import EDIT_ENDPOINT, ENDPOINT, rows_of
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions, MockServer, get_state

GREEN, BLUE = (0, 200, 0), (0, 0, 220)
JOBS: list[dict[str, Any]] = [
    {"id": "e1", "prompt": "tint a", "image": "in/a.png"},
    {"id": "e2", "prompt": "tint b, half", "image": ["in/b.png", "in/a.png"], "mask": "in/m.png"},
    {"id": "e3", "prompt": "tint a again", "image": "in/a.png"},
    {"id": "g", "prompt": "a plain generation"},
]


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


def _inputs(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    picture(tmp_path / "in" / "a.png", GREEN)
    picture(tmp_path / "in" / "b.png", BLUE)
    mask(tmp_path / "in" / "m.png")


def _uploads(server: MockServer, purpose: str) -> list[dict[str, Any]]:
    return [f for f in server.stats.to_json()["files_uploaded"] if f["purpose"] == purpose]


def test_an_edit_row_names_its_files_by_id_in_the_json_form(tmp_path):
    _inputs(tmp_path)
    path = write_jobs(tmp_path / "jobs.jsonl", JOBS)
    jobs = {j.id: j for j in iter_jobs(path, scan(path)) if not hasattr(j, "message")}
    e2, g = jobs["e2"], jobs["g"]
    assert e2.inputs is not None and e2.inputs.mask is not None
    ids = {f.sha256: f"file-{f.name[-5]}" for f in (*e2.inputs.images, e2.inputs.mask)}
    (row,) = rows_of(e2, file_ids=ids)  # type: ignore[arg-type]
    line = json.loads(row.line)
    assert row.endpoint == line["url"] == EDIT_ENDPOINT
    assert line["body"]["images"] == [{"file_id": "file-b"}, {"file_id": "file-a"}]
    assert line["body"]["mask"] == {"file_id": "file-m"}
    assert "stream" not in line["body"] and "image" not in line["body"]
    assert json.loads(rows_of(g)[0].line)["url"] == ENDPOINT  # type: ignore[arg-type]


@pytest.mark.parametrize("dialect", ["pmock", "openai"])
async def test_edits_in_batch_api_mode_upload_each_distinct_file_once(tmp_path, dialect):
    _inputs(tmp_path)
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS)
    out = tmp_path / "out"
    clock = FakeClock()
    async with MockServer(MockOptions(dialect=dialect), clock=clock) as server:
        summary = await run_on_clock(jobs, out, server, clock)
        assert (summary.ok, summary.failed) == (4, 0)
        images = _uploads(server, "vision")
        names = sorted(f["filename"].split("-", 2)[2] for f in images)
        assert names == ["a.png", "b.png", "m.png"]  # each under a name of its own:
        assert all(re.fullmatch(r"pmock-[0-9a-f]{12}-[abm]\.png", f["filename"]) for f in images)
        assert len(_uploads(server, "batch")) == 2  # one input file per endpoint
        made = server.stats.to_json()["batches_created"]
        assert sorted(b["endpoint"] for b in made) == sorted([EDIT_ENDPOINT, ENDPOINT])
        by_endpoint = {b["endpoint"]: sorted(b["custom_ids"]) for b in made}
        assert by_endpoint == {EDIT_ENDPOINT: ["e1", "e2", "e3"], ENDPOINT: ["g"]}
        deleted = set(server.stats.to_json()["files_deleted"])
        assert not deleted & {f["id"] for f in images}  # inputs are kept, for re-runs
        state = BatchState.load(out)
        assert set(state.inputs.values()) == {f["id"] for f in images}

        records = by_id(read_manifest(out))
        assert all(r["status"] == "ok" and r["via"] == "batch" for r in records.values())
        assert records["e2"]["request"]["image"] == ["in/b.png", "in/a.png"]
        for job, colour in (("e1", GREEN), ("e2", BLUE), ("e3", GREEN)):
            image = open_image(out / records[job]["files"][0]["path"]).convert("RGB")
            assert image.size == (SIDE, SIDE)
            left, right = image.getpixel((2, SIDE // 2)), image.getpixel((SIDE - 3, SIDE // 2))
            assert _tinted_towards(left, colour), (job, left)  # the first input, tinted
            if job == "e2":  # the mask's opaque half is kept
                assert max(abs(a - b) for a, b in zip(right, colour, strict=True)) <= 2
            else:
                assert _tinted_towards(right, colour), (job, right)

        more = [*JOBS, {"id": "e4", "prompt": "tint b", "image": "in/b.png"}]
        write_jobs(jobs, more)
        again = await run_on_clock(jobs, out, server, clock)
        assert (again.ok, again.skipped) == (1, 4)
        assert len(_uploads(server, "vision")) == 3  # the recorded id was named again
        assert by_id(read_manifest(out))["e4"]["status"] == "ok"


async def test_a_recorded_input_the_server_lost_is_uploaded_again(tmp_path):
    _inputs(tmp_path)
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS[:1])
    out = tmp_path / "out"
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        assert (await run_on_clock(jobs, out, server, clock)).ok == 1
        (image,) = _uploads(server, "vision")
        get_state(server.app).stored_files.delete(image["id"])  # expired, or deleted by hand
        write_jobs(jobs, [*JOBS[:1], {"id": "e5", "prompt": "tint a, lost", "image": "in/a.png"}])
        again = await run_on_clock(jobs, out, server, clock)
        assert (again.ok, again.failed) == (1, 0)
        _, second = _uploads(server, "vision")
    assert BatchState.load(out).inputs == {_sha(tmp_path / "in" / "a.png"): second["id"]}


async def test_a_row_naming_a_file_the_server_does_not_hold_fails_alone(tmp_path):
    _inputs(tmp_path)
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS[:2])  # e1 names a.png; e2 b.png, a.png, m.png
    out = tmp_path / "out"
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        store = get_state(server.app).stored_files

        def lose_the_mask(event: str) -> None:
            if event == "upload":  # the batch's input file is up; its batch not yet made
                (mask_file,) = [
                    f for f in _uploads(server, "vision") if f["filename"].endswith("-m.png")
                ]
                store.delete(mask_file["id"])

        summary = await run_on_clock(jobs, out, server, clock, on_step=lose_the_mask)
    assert (summary.ok, summary.failed) == (1, 1)
    records = by_id(read_manifest(out))
    assert records["e1"]["status"] == "ok"
    assert (
        records["e2"]["status"] == "failed" and "no file found" in records["e2"]["error"]["message"]
    )


async def test_an_input_the_server_refuses_fails_only_the_jobs_that_use_it(tmp_path, monkeypatch):
    from pmock_batch.mock import batch_routes

    read = batch_routes._read_capped

    async def refuse_b(part: Any, limit: int) -> bytes | None:  # "larger than allowed": a 400
        data = await read(part, limit)
        return None if str(part.filename).endswith("-b.png") else data

    monkeypatch.setattr(batch_routes, "_read_capped", refuse_b)
    _inputs(tmp_path)
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS)  # only e2 uses b.png
    out = tmp_path / "out"
    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        summary = await run_on_clock(jobs, out, server, clock)
        uploaded = sorted(f["filename"][-5:] for f in _uploads(server, "vision"))
        rows = [cid for batch in batches_made(server) for cid in batch]
    assert (summary.ok, summary.failed) == (3, 1)
    records = by_id(read_manifest(out))
    assert records["e2"]["status"] == "failed"
    assert records["e2"]["error"]["kind"] == "bad_request"
    assert "larger than" in records["e2"]["error"]["message"]
    assert uploaded == ["a.png", "m.png"]  # b.png never arrived
    assert sorted(rows) == ["e1", "e3", "g"]  # e2 was never submitted
    assert _sha(tmp_path / "in" / "b.png") not in BatchState.load(out).inputs


async def test_an_image_upload_cut_off_before_its_id_was_written_is_deleted_next_run(
    tmp_path, monkeypatch
):
    _inputs(tmp_path)
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS[:1])
    out = tmp_path / "out"
    real = BatchClient.upload_image

    async def arrives_then_killed(self: BatchClient, source: Any, name: str) -> dict[str, Any]:
        await real(self, source, name)
        raise Crash  # the file is on the server; its id never reached the log

    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        monkeypatch.setattr(BatchClient, "upload_image", arrives_then_killed)
        with pytest.raises(Crash):
            await run_on_clock(jobs, out, server, clock)
        (orphan,) = _uploads(server, "vision")
        assert BatchState.load(out).image_intents  # announced, never recorded
        # Another run (another OUT) uploads the same picture meanwhile: never taken for ours.
        picture = (tmp_path / "in" / "a.png").read_bytes()
        form = aiohttp.FormData()
        form.add_field("purpose", "vision")
        form.add_field("file", picture, filename="a.png", content_type="image/png")
        headers = {"Authorization": f"Bearer {KEY}"}
        url = f"{server.base_url}/files"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=form, headers=headers) as answer,
        ):
            theirs = await answer.json()
        monkeypatch.setattr(BatchClient, "upload_image", real)
        summary = await run_on_clock(jobs, out, server, clock)
        assert summary.ok == 1
        deleted = server.stats.to_json()["files_deleted"]
        assert orphan["id"] in deleted and theirs["id"] not in deleted
        (_, _, kept) = _uploads(server, "vision")
        assert BatchState.load(out).inputs == {_sha(tmp_path / "in" / "a.png"): kept["id"]}
        assert not BatchState.load(out).image_intents


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("step", ["input_uploading", "input_file", "upload", "batch"])
async def test_kill_at_each_edit_step_then_rerun_uploads_once_and_makes_one_batch(tmp_path, step):
    _inputs(tmp_path)
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS[:1] + JOBS[2:3])  # two edits of a.png
    out = tmp_path / "out"

    def crash(event: str) -> None:
        if event == step:
            raise Crash

    clock = FakeClock()
    async with MockServer(MockOptions(), clock=clock) as server:
        with pytest.raises(Crash):
            await run_on_clock(jobs, out, server, clock, on_step=crash)
        summary = await run_on_clock(jobs, out, server, clock)
        made = server.stats.to_json()["batches_created"]
        assert summary.ok == 2
        assert len(_uploads(server, "vision")) == 1
        assert [(b["endpoint"], sorted(b["custom_ids"])) for b in made] == [
            (EDIT_ENDPOINT, ["e1", "e3"])
        ]
