"""Issue 9 §2 over real loopback HTTP: nothing is written through a link, nor renamed over one.

A symbolic link below OUT, at any path the tool writes (an image, a folder on
the way to it, ``manifest.jsonl``, ``report.html``, ``.thumbs/``,
``.rejected/``), is never followed and never replaced: the job fails with
kind ``write``, or the run (or report) refuses to start, and nothing outside
OUT changes. OUT itself may be a link. Also issue 9 §4: precise error kinds.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from helpers import FakeSleep, by_id, open_image, read_manifest, run_cli, write_jobs
from PIL import Image

from pmock_batch.attempt import commit
from pmock_batch.config import RunConfig
from pmock_batch.errors import (
    APIConnectionError,
    APITimeoutError,
    InvalidResponseError,
    OutputPathError,
    ResponseTooLargeError,
    status_error,
)
from pmock_batch.failures import describe
from pmock_batch.files import (
    TMP_SUFFIX,
    AtomicFile,
    open_regular,
    remove_file,
    remove_stray_temps,
    sha256_of,
)
from pmock_batch.images import ImageSink
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import run_batch

KEY = "sk-links-test-key"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    """Every test here talks to a mock with this key (conftest isolates the rest)."""
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


@pytest.fixture(autouse=True)
def _no_backoff(cli_sleep):
    """The CLI's retry policy never sleeps through real backoff."""


def _argv(tmp_path: Path, server, out: Path, *extra: str) -> list[str]:
    jobs = tmp_path / "jobs.jsonl"
    return [str(jobs), "--base-url", server.base_url, "--out", str(out), *extra]


def snapshot(root: Path) -> dict[str, str]:
    """Everything under ``root``, links not followed: name -> what it is and holds."""
    seen: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            key = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                seen[key] = f"link -> {os.readlink(path)}"
            elif stat.S_ISDIR(mode):
                seen[key] = "folder"
            else:
                seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def _outside(tmp_path: Path) -> Path:
    """A folder outside OUT with a file in it that must never change."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"not yours")
    return outside


# --- §2: a link at an image's final path ---------------------------------------------------


async def test_a_link_to_the_manifest_at_an_image_path_is_never_written_through(
    tmp_path, make_mock, capsys
):
    """The issue's case: ``ln -s manifest.jsonl OUT/j3.png`` used to leave a 0-byte manifest."""
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(5)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "j3.png").symlink_to("manifest.jsonl")
    result = await run_cli(_argv(tmp_path, server, out), capsys)
    assert result.code == 1, result.err
    assert os.readlink(out / "j3.png") == "manifest.jsonl"  # the link itself is untouched
    records = by_id(read_manifest(out))
    assert sorted(records) == [f"j{i}" for i in range(5)]
    failed = records["j3"]
    assert failed["status"] == "failed" and failed["files"] == []
    assert failed["error"]["kind"] == "write"
    assert failed["error"]["message"] == (
        f"refusing to write 'j3.png': {out}/j3.png is a symbolic link"
    )
    for i in (0, 1, 2, 4):
        assert records[f"j{i}"]["status"] == "ok"
        open_image(out / f"j{i}.png")
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))
    assert "is a symbolic link" in result.err


async def test_a_link_at_an_image_path_to_a_file_outside_is_left_alone(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    outside = _outside(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(outside / "keep.txt")
    before = snapshot(tmp_path / "elsewhere")
    result = await run_cli(_argv(tmp_path, server, out), capsys)
    assert result.code == 1
    [record] = read_manifest(out)
    assert record["error"]["kind"] == "write"  # was "internal"
    assert "is a symbolic link" in record["error"]["message"]
    assert snapshot(outside) == before
    assert (out / "a.png").is_symlink()


# --- §2: a link at a folder on the way ----------------------------------------------------


@pytest.mark.parametrize("where", ["outside", "inside", "dangling"])
@pytest.mark.parametrize("link", ["icons", "icons/small"])
async def test_a_linked_folder_below_out_is_never_followed(
    tmp_path, make_mock, capsys, where, link
):
    """``OUT/icons -> elsewhere`` and a job ``icons/small/home``: nothing is made through it.

    ``dangling``: the link's target does not exist; a folder the tool creates
    must not be created through it either.
    """
    server = await make_mock(MockOptions())
    write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "icons/small/home", "prompt": "a home"}, {"id": "top", "prompt": "a top"}],
    )
    outside = _outside(tmp_path)
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    target = {"outside": outside, "inside": out / "real", "dangling": outside / "new"}[where]
    (out / link).symlink_to(target, target_is_directory=True)
    before_out, before_outside = snapshot(out), snapshot(outside)
    result = await run_cli(_argv(tmp_path, server, out), capsys)
    assert result.code == 1, result.err
    records = by_id(read_manifest(out))
    assert records["top"]["status"] == "ok"
    failed = records["icons/small/home"]
    assert failed["status"] == "failed"
    assert failed["error"]["kind"] == "write"
    assert failed["error"]["message"] == (
        f"refusing to write 'icons/small/home.png': {out}/{link} is a symbolic link"
    )
    assert snapshot(outside) == before_outside  # nothing created, renamed or removed there
    assert not (outside / "new").exists()
    after = snapshot(out)
    for name in before_out:  # the link and the real folder are as they were
        assert after[name] == before_out[name]
    assert sorted(set(after) - set(before_out)) == [
        ".lock",
        "manifest.jsonl",
        "report.html",
        "top.png",
    ]


async def test_out_itself_may_be_a_link(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "icons/home", "prompt": "a home"}])
    real = tmp_path / "real-out"
    real.mkdir()
    out = tmp_path / "out"
    out.symlink_to(real, target_is_directory=True)
    result = await run_cli(_argv(tmp_path, server, out), capsys)
    assert result.code == 0, result.err
    open_image(real / "icons" / "home.png")
    assert read_manifest(real)[0]["status"] == "ok"
    assert (real / "report.html").is_file()


# --- §2: the manifest and the report -----------------------------------------------------


@pytest.mark.parametrize("name", ["manifest.jsonl", ".lock"])
async def test_a_linked_manifest_or_lock_stops_the_run_before_anything_is_sent(
    tmp_path, make_mock, capsys, name
):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    outside = _outside(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(outside / "keep.txt")
    before = snapshot(outside)
    result = await run_cli(_argv(tmp_path, server, out), capsys)
    assert result.code == 2
    assert result.err.strip().endswith(
        f"pmock-batch: error: refusing to write {name!r}: {out}/{name} is a symbolic link"
    )
    assert server.stats.requests == 0
    assert snapshot(outside) == before
    assert os.readlink(out / name) == str(outside / "keep.txt")
    assert sorted(os.listdir(out)) in ([name], sorted([".lock", name]))  # no image, no report
    if name == "manifest.jsonl":  # --dry-run says what the run would: it reads nothing through it
        plan = await run_cli([*_argv(tmp_path, server, out), "--dry-run"], capsys)
        assert plan.code == 2
        assert f"{out}/manifest.jsonl is a symbolic link" in plan.err


async def test_a_linked_report_is_skipped_with_a_warning(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    outside = _outside(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").symlink_to(outside / "keep.txt")
    before = snapshot(outside)
    result = await run_cli(_argv(tmp_path, server, out), capsys)
    assert result.code == 0, result.err  # the images are what matters
    assert "could not write the report: refusing to write 'report.html'" in result.err
    assert snapshot(outside) == before
    assert os.readlink(out / "report.html") == str(outside / "keep.txt")
    assert read_manifest(out)[0]["status"] == "ok"

    again = await run_cli(["report", str(out)], capsys)
    assert again.code == 2
    assert f"{out}/report.html is a symbolic link" in again.err
    assert snapshot(outside) == before and (out / "report.html").is_symlink()


@pytest.mark.parametrize("link", [".thumbs", ".thumbs/icons"])
async def test_report_thumbnails_write_nothing_through_a_link(tmp_path, make_mock, capsys, link):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "icons/home", "prompt": "a home"}])
    out = tmp_path / "out"
    assert (await run_cli(_argv(tmp_path, server, out), capsys)).code == 0
    outside = _outside(tmp_path)
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    report_before = (out / "report.html").read_bytes()
    result = await run_cli(["report", str(out), "--thumbnails"], capsys)
    assert result.code == 2
    assert (
        f"refusing to write '.thumbs/icons/home.png.jpg': {out}/{link} is a symbolic link"
        in result.err
    )
    assert snapshot(outside) == before
    assert (out / link).is_symlink()
    assert (out / "report.html").read_bytes() == report_before


async def test_report_refuses_a_linked_manifest(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    out = tmp_path / "out"
    assert (await run_cli(_argv(tmp_path, server, out), capsys)).code == 0
    other = tmp_path / "other.jsonl"
    (out / "manifest.jsonl").rename(other)
    (out / "manifest.jsonl").symlink_to(other)
    report_before = (out / "report.html").read_bytes()
    result = await run_cli(["report", str(out)], capsys)
    assert result.code == 2
    assert f"{out}/manifest.jsonl is a symbolic link" in result.err
    assert (out / "report.html").read_bytes() == report_before


# --- §2: .rejected/ ----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["outside", "inside"])
async def test_a_linked_rejected_folder_keeps_nothing_through_it(
    tmp_path, make_mock, capsys, where
):
    server = await make_mock(MockOptions(script={"a fox": ["corrupt"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "fox", "prompt": "a fox"}])
    outside = _outside(tmp_path)
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    target = outside if where == "outside" else out / "real"
    (out / ".rejected").symlink_to(target, target_is_directory=True)
    before_outside, before_real = snapshot(outside), snapshot(out / "real")
    result = await run_cli(_argv(tmp_path, server, out), capsys)
    assert result.code == 0, result.err  # the billed retry succeeded
    [record] = read_manifest(out)
    assert record["status"] == "ok" and record["billed_retries"] == 1
    assert record["rejected"] == []  # nothing could be kept, and nothing is claimed
    assert "could not keep the rejected image: refusing to write '.rejected/fox.1.bin'" in (
        result.err
    )
    assert snapshot(outside) == before_outside
    assert snapshot(out / "real") == before_real
    assert (out / ".rejected").is_symlink()
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))


# --- the primitives ------------------------------------------------------------------------


def test_a_link_at_the_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    victim = _outside(tmp_path) / "keep.txt"
    monkeypatch.setattr("pmock_batch.files.secrets.token_hex", lambda _: "deadbeef")
    (out / f".a.png.deadbeef{TMP_SUFFIX}").symlink_to(victim)
    with pytest.raises(FileExistsError):
        AtomicFile(out, "a.png")
    assert victim.read_bytes() == b"not yours"
    assert not (out / "a.png").exists()


def test_a_link_swapped_in_after_the_temporary_file_is_made_is_not_renamed_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = _outside(tmp_path) / "keep.txt"
    with AtomicFile(out, "a.png") as tmp:
        tmp.write(b"image")
        (out / "a.png").symlink_to(victim)  # appears between the write and the rename
        with pytest.raises(OutputPathError, match="is a symbolic link"):
            tmp.commit()
    assert os.readlink(out / "a.png") == str(victim)
    assert victim.read_bytes() == b"not yours"
    assert sorted(os.listdir(out)) == ["a.png"]  # the temporary file is gone


def test_a_folder_swapped_for_a_link_after_the_temporary_file_is_made(tmp_path):
    """The rename is relative to the folder opened at the start, never to a new path lookup."""
    out = tmp_path / "out"
    outside = _outside(tmp_path)
    with AtomicFile(out, "icons/a.png") as tmp:
        tmp.write(b"image")
        (out / "icons").rename(out / "moved")
        (out / "icons").symlink_to(outside, target_is_directory=True)
        path = tmp.commit()
    assert path == out / "icons" / "a.png"
    assert (out / "moved" / "a.png").read_bytes() == b"image"  # where the folder went
    assert snapshot(outside) == {"keep.txt": hashlib.sha256(b"not yours").hexdigest()}


async def test_the_sink_never_creates_its_temporary_file_through_a_link(tmp_path):
    """An image over 1 MB is written before it ends: the temporary file, too, refuses links."""
    out = tmp_path / "out"
    outside = _outside(tmp_path)
    out.mkdir()
    (out / "icons").symlink_to(outside, target_is_directory=True)
    sink = ImageSink(out, "icons/home")
    with pytest.raises(OutputPathError, match="icons is a symbolic link"):
        await sink.feed_raw(b"\0" * (2 << 20))
    sink.discard()
    assert snapshot(outside) == {"keep.txt": hashlib.sha256(b"not yours").hexdigest()}


def test_remove_file_deletes_only_a_regular_file_reached_through_no_link(tmp_path):
    out = tmp_path / "out"
    outside = _outside(tmp_path)
    (out / "icons").mkdir(parents=True)
    (out / "icons" / "a.png").write_bytes(b"ours")
    (out / "b.png").symlink_to(outside / "keep.txt")
    (out / "linked").symlink_to(outside, target_is_directory=True)
    assert remove_file(out, "icons/a.png") is True
    assert not (out / "icons" / "a.png").exists()
    assert remove_file(out, "icons/a.png") is False
    assert remove_file(out, "nowhere/a.png") is False
    with pytest.raises(OutputPathError, match=r"b\.png is a symbolic link"):
        remove_file(out, "b.png")
    with pytest.raises(OutputPathError, match="linked is a symbolic link"):
        remove_file(out, "linked/keep.txt")
    assert (out / "b.png").is_symlink()
    assert snapshot(outside) == {"keep.txt": hashlib.sha256(b"not yours").hexdigest()}


def test_stray_temps_are_removed_only_below_out(tmp_path):
    out = tmp_path / "out"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / f".x.png.0000{TMP_SUFFIX}").write_bytes(b"not ours")
    (out / "sub").mkdir(parents=True)
    (out / "sub" / f".y.png.0000{TMP_SUFFIX}").write_bytes(b"ours")
    (out / "link").symlink_to(outside, target_is_directory=True)
    assert remove_stray_temps(out) == 1
    assert (outside / f".x.png.0000{TMP_SUFFIX}").read_bytes() == b"not ours"
    assert not (out / "sub" / f".y.png.0000{TMP_SUFFIX}").exists()


# --- §4: precise kinds -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OutputPathError("refusing to write 'a.png': out/a.png is a symbolic link"), "write"),
        (OSError(28, "No space left on device"), "write"),
        (Image.DecompressionBombError("Image size (1600000000 pixels)"), "invalid_response"),
        (MemoryError(), "memory"),
        (InvalidResponseError("the PNG image is truncated"), "invalid_response"),
        (ResponseTooLargeError("too large"), "invalid_response"),
        (APITimeoutError("slow"), "timeout"),
        (APIConnectionError("cut"), "connection"),
        (status_error("boom", status=500), "server"),
        (status_error("no", status=400, code="moderation_blocked"), "moderation"),
        (ValueError("a bug"), "internal"),
    ],
)  # fmt: skip
def test_error_kinds(exc, kind):
    assert describe(exc).kind == kind


def test_error_messages_of_the_new_kinds():
    link = "refusing to write 'a.png': out/a.png is a symbolic link"
    assert describe(OutputPathError(link)).message == link
    assert describe(MemoryError()).message == "ran out of memory handling the image"


async def test_a_decompression_bomb_is_an_invalid_billed_response(tmp_path, make_mock, capsys):
    """A sound PNG whose header claims 40,000 x 40,000 pixels: Pillow refuses to open it."""
    server = await make_mock(MockOptions(script={"a bomb": ["bomb", "bomb"]}))
    write_jobs(tmp_path / "jobs.jsonl", [{"id": "b", "prompt": "a bomb"}])
    out = tmp_path / "out"
    result = await run_cli(_argv(tmp_path, server, out, "--json"), capsys)
    assert result.code == 1
    assert server.stats.requests == 2  # billed: retried once (--max-billed-retries 1), not 6
    [record] = read_manifest(out)
    assert record["status"] == "failed"
    assert record["error"]["kind"] == "invalid_response"
    assert record["error"]["message"].startswith(
        "the png image is refused as a decompression bomb: Image size (1600000000 pixels)"
    )
    assert record["billed_retries"] == 1
    assert [k["path"] for k in record["rejected"]] == [".rejected/b.1.bin", ".rejected/b.2.bin"]
    for kept in record["rejected"]:
        assert (out / kept["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(result.out)["failed_by_kind"] == {"invalid_response": 1}


async def test_running_out_of_memory_is_kind_memory(tmp_path, make_mock):
    server = await make_mock(MockOptions())
    path = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}, {"id": "b", "prompt": "a dog"}]
    )

    async def short_of_memory(sink: ImageSink, out_dir: Path, relative: str) -> Path:
        if relative == "a.png":
            raise MemoryError
        return await commit(sink, out_dir, relative)

    config = RunConfig(out_dir=tmp_path / "out", base_url=server.base_url, api_key=KEY)
    summary = await run_batch(
        config,
        iter_jobs(path, scan(path)),
        policy=RetryPolicy(sleep=FakeSleep()),
        writer=short_of_memory,
    )
    records = by_id(read_manifest(tmp_path / "out"))
    assert records["a"]["status"] == "failed"
    assert records["a"]["error"] == {
        "kind": "memory",
        "status": None,
        "code": None,
        "message": "ran out of memory handling the image",
        "param": None,
    }
    assert records["b"]["status"] == "ok"
    assert summary.failed_by_kind == {"memory": 1}
    assert not list((tmp_path / "out").rglob(f"*{TMP_SUFFIX}"))


def test_open_regular_refuses_a_fifo_at_once_and_a_link(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        open_regular(fifo)  # O_NONBLOCK: no writer is waited for
    assert sha256_of(fifo, 0) is None
    real = tmp_path / "real.png"
    real.write_bytes(b"abc")
    (tmp_path / "link.png").symlink_to(real)
    with pytest.raises(OSError):
        open_regular(tmp_path / "link.png")
    with open_regular(real) as fh:
        assert fh.read() == b"abc"
