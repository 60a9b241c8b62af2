"""``pmock-batch merge``: shard manifests and other output folders, over real loopback HTTP."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers import by_id, read_manifest, run_cli, write_jobs

from pmock_batch import merge as merging
from pmock_batch.lock import run_lock
from pmock_batch.merge import merge_outputs
from pmock_batch.mock import MockOptions

KEY = "sk-merge-test-key"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


class Crash(BaseException):
    """Stands in for kill -9: not an Exception, so nothing handles it."""


def _crash(*_: object, **__: object) -> None:
    raise Crash


def _lines(ids: range) -> list[dict[str, str]]:
    return [{"id": f"j{i}", "prompt": f"prompt {i}"} for i in ids]


async def _run(tmp_path: Path, name: str, lines, out: Path, server, capsys, *extra: str) -> None:
    folder = tmp_path / f"jobs-{name}"
    folder.mkdir(exist_ok=True)
    jobs = write_jobs(folder / "jobs.jsonl", lines)
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), *extra]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file under OUT but the lock files, with its bytes."""
    found = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and not path.name.startswith(".lock"):
            found[str(path.relative_to(out))] = path.read_bytes()
    return found


async def test_merge_matrix_outputs_then_a_rerun_sends_nothing(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(0, 3)), a, server, capsys)
    await _run(tmp_path, "b", _lines(range(3, 6)), b, server, capsys)
    assert server.stats.requests == 6
    result = await run_cli(["merge", str(out), str(a), str(b)], capsys)
    assert result.code == 0, result.err
    assert "6 job(s), 6 ok" in result.err and "6 image(s) copied" in result.err
    records = by_id(read_manifest(out))
    assert sorted(records) == [f"j{i}" for i in range(6)]
    assert all(r["status"] == "ok" for r in records.values())
    for record in records.values():
        (image,) = record["files"]
        assert (out / image["path"]).stat().st_size == image["bytes"]
    assert "j5" in (out / "report.html").read_text(encoding="utf-8")
    await _run(tmp_path, "all", _lines(range(6)), out, server, capsys)
    assert server.stats.requests == 6  # the whole job file: nothing sent


async def test_merge_shard_manifests_on_a_shared_volume(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    out = tmp_path / "out"
    for k, ids in ((1, range(0, 2)), (2, range(2, 5))):
        await _run(tmp_path, f"s{k}", _lines(ids), out, server, capsys)
        (out / "manifest.jsonl").rename(out / f"manifest.shard-{k}-of-2.jsonl")
    result = await run_cli(["merge", str(out)], capsys)
    assert result.code == 0, result.err
    assert "0 image(s) copied, 5 already in" in result.err
    assert sorted(by_id(read_manifest(out))) == [f"j{i}" for i in range(5)]
    assert not list(out.glob("manifest.shard-*"))  # merged, then removed
    await _run(tmp_path, "all", _lines(range(5)), out, server, capsys)
    assert server.stats.requests == 5


async def test_merge_twice_changes_nothing(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    a, out = tmp_path / "a", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(0, 2)), a, server, capsys)
    await _run(tmp_path, "o", _lines(range(2, 4)), out, server, capsys)
    (out / "manifest.jsonl").rename(out / "manifest.shard-1-of-1.jsonl")
    assert (await run_cli(["merge", str(out), str(a)], capsys)).code == 0
    before = _snapshot(out)
    assert len(read_manifest(out)) == 4
    again = await run_cli(["merge", str(out), str(a)], capsys)
    assert again.code == 0, again.err
    assert "nothing changed" in again.err and "0 image(s) copied" in again.err
    assert _snapshot(out) == before


async def test_conflicting_ok_results_are_refused_unless_prefer_newest(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    a, b = tmp_path / "a", tmp_path / "b"
    await _run(tmp_path, "a", [{"id": "j0", "prompt": "a cat"}], a, server, capsys)
    await _run(tmp_path, "b", [{"id": "j0", "prompt": "a dog"}], b, server, capsys)
    before = _snapshot(a)
    refused = await run_cli(["merge", str(a), str(b)], capsys)
    assert refused.code == 2
    assert "pmock-batch: error: job 'j0' has two different ok results" in refused.err
    assert str(a / "manifest.jsonl") in refused.err and str(b / "manifest.jsonl") in refused.err
    assert _snapshot(a) == before  # nothing changed
    newest = by_id(read_manifest(b))["j0"]
    result = await run_cli(["merge", str(a), str(b), "--prefer", "newest"], capsys)
    assert result.code == 0, result.err
    kept = by_id(read_manifest(a))["j0"]
    assert kept["fingerprint"] == newest["fingerprint"]
    assert (a / "j0.png").read_bytes() == (b / "j0.png").read_bytes()
    await _run(tmp_path, "b", [{"id": "j0", "prompt": "a dog"}], a, server, capsys)
    assert server.stats.requests == 2  # the dog is done in a now


async def test_a_corrupted_image_is_not_copied_and_is_reported(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    a, out = tmp_path / "a", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(3)), a, server, capsys)
    image = a / "j1.png"
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    image.write_bytes(bytes(data))
    result = await run_cli(["merge", str(out), str(a)], capsys)
    assert result.code == 1
    assert "job 'j1'" in result.err and "not merged as ok" in result.err
    assert not (out / "j1.png").exists()
    records = by_id(read_manifest(out))
    assert records["j1"]["status"] == "failed" and records["j1"]["error"]["kind"] == "merge"
    assert records["j0"]["status"] == records["j2"]["status"] == "ok"
    await _run(tmp_path, "all", _lines(range(3)), out, server, capsys)
    assert server.stats.requests == 4  # only j1 again


async def test_a_link_in_another_output_is_not_followed(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    a, out = tmp_path / "a", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(2)), a, server, capsys)
    elsewhere = tmp_path / "elsewhere.png"
    (a / "j0.png").rename(elsewhere)  # the same bytes, reached through a link
    os.symlink(elsewhere, a / "j0.png")
    result = await run_cli(["merge", str(out), str(a)], capsys)
    assert result.code == 1
    assert "job 'j0'" in result.err and "behind a link" in result.err
    assert not os.path.lexists(out / "j0.png")
    assert (out / "j1.png").is_file()


@pytest.mark.parametrize("lock", [".lock", ".lock.shard-1-of-2"])
async def test_merge_refuses_while_out_or_a_shard_is_locked(tmp_path, make_mock, capsys, lock):
    server = await make_mock(MockOptions())
    a, out = tmp_path / "a", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(2)), a, server, capsys)
    out.mkdir()
    with run_lock(out, name=lock):
        result = await run_cli(["merge", str(out), str(a)], capsys)
    assert result.code == 4, result.err
    assert str(out / lock) in result.err
    assert _snapshot(out) == {}


@pytest.mark.parametrize("lock", [".lock", ".lock.shard-0-of-2"])
async def test_merge_refuses_an_other_out_a_run_is_writing(tmp_path, make_mock, capsys, lock):
    server = await make_mock(MockOptions())
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(2)), a, server, capsys)
    await _run(tmp_path, "b", _lines(range(2, 4)), b, server, capsys)
    with run_lock(b, name=lock):
        result = await run_cli(["merge", str(out), str(a), str(b)], capsys)
    assert result.code == 4, result.err
    assert f"a pmock-batch run is writing {b}" in result.err and str(b / lock) in result.err
    assert _snapshot(out) == {}
    assert (b / lock).exists()  # left behind, but no one holds it: no bar
    result = await run_cli(["merge", str(out), str(a), str(b)], capsys)
    assert result.code == 0, result.err
    assert len(read_manifest(out)) == 4


async def test_a_crash_at_any_step_loses_nothing(tmp_path, make_mock, capsys, monkeypatch):
    server = await make_mock(MockOptions())
    a, out = tmp_path / "a", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(0, 2)), a, server, capsys)
    await _run(tmp_path, "o", _lines(range(2, 4)), out, server, capsys)
    shard = out / "manifest.shard-1-of-1.jsonl"
    (out / "manifest.jsonl").rename(shard)
    logged = shard.read_bytes()
    write_manifest, remove_file = merging._write_manifest, merging.remove_file
    monkeypatch.setattr(merging, "_write_manifest", _crash)  # images copied, no manifest yet
    with pytest.raises(Crash):
        merge_outputs(out, [a])
    assert shard.read_bytes() == logged and not (out / "manifest.jsonl").exists()
    monkeypatch.setattr(merging, "_write_manifest", write_manifest)
    monkeypatch.setattr(merging, "remove_file", _crash)  # the manifest written, shards not removed
    with pytest.raises(Crash):
        merge_outputs(out, [a])
    assert shard.read_bytes() == logged and len(read_manifest(out)) == 4
    monkeypatch.setattr(merging, "remove_file", remove_file)
    result = await run_cli(["merge", str(out), str(a)], capsys)
    assert result.code == 0, result.err
    assert "removed manifest.shard-1-of-1.jsonl" in result.err and not shard.exists()
    assert sorted(by_id(read_manifest(out))) == [f"j{i}" for i in range(4)]
    await _run(tmp_path, "all", _lines(range(4)), out, server, capsys)
    assert server.stats.requests == 4


async def test_a_damaged_record_keeps_its_shard_manifest(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    out = tmp_path / "out"
    await _run(tmp_path, "o", _lines(range(2)), out, server, capsys)
    shard = out / "manifest.shard-1-of-2.jsonl"
    (out / "manifest.jsonl").rename(shard)
    with shard.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "j9", "line": "nine", "status": "ok"}\n')
    result = await run_cli(["merge", str(out)], capsys)
    assert result.code == 0, result.err
    assert f"{shard}:3: a damaged record; skipped" in result.err
    assert shard.exists() and len(read_manifest(out)) == 2


async def test_saved_partials_are_copied_too(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions(image_px=32))
    a, out = tmp_path / "a", tmp_path / "out"
    lines = [{"id": "fox", "prompt": "a fox", "partial_images": 2}]
    await _run(tmp_path, "a", lines, a, server, capsys, "--stream", "--save-partials")
    (a / ".partials" / "fox.1.png").write_bytes(b"not the partial")  # best effort: skipped
    result = await run_cli(["merge", str(out), str(a)], capsys)
    assert result.code == 0, result.err
    assert "partial .partials/fox.1.png not copied" in result.err
    assert (out / ".partials" / "fox.0.png").read_bytes() == (
        a / ".partials" / "fox.0.png"
    ).read_bytes()
    assert not (out / ".partials" / "fox.1.png").exists()
    assert [p["index"] for p in by_id(read_manifest(out))["fox"]["partials"]] == [0, 1]


async def test_a_record_naming_a_file_the_tool_keeps_is_not_copied(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    a, out = tmp_path / "a", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(1)), a, server, capsys)
    record = read_manifest(a)[0]
    report = (a / "report.html").read_bytes()
    forged = hashlib.sha256(report).hexdigest()
    record["files"][0].update(path="report.html", bytes=len(report), sha256=forged)
    (a / "manifest.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    result = await run_cli(["merge", str(out), str(a)], capsys)
    assert result.code == 1
    assert "'report.html' is not an image path a run writes" in result.err
    assert by_id(read_manifest(out))["j0"]["status"] == "failed"


async def test_usage_errors_change_nothing(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    a, empty, out = tmp_path / "a", tmp_path / "empty", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(1)), a, server, capsys)
    empty.mkdir()
    nothing = await run_cli(["merge", str(out)], capsys)
    assert nothing.code == 2 and "nothing to merge" in nothing.err
    missing = await run_cli(["merge", str(out), str(tmp_path / "nope")], capsys)
    assert missing.code == 2 and "not a directory" in missing.err
    bare = await run_cli(["merge", str(out), str(a), str(empty)], capsys)
    assert bare.code == 2 and f"no manifest.jsonl or shard manifest in {empty}" in bare.err
    itself = await run_cli(["merge", str(a), str(a)], capsys)
    assert itself.code == 2 and "is OUT itself" in itself.err
    assert not out.exists() or _snapshot(out) == {}


@pytest.mark.parametrize("shared", [True, False])
async def test_real_shards_then_merge_then_a_rerun_sends_nothing(
    tmp_path, make_mock, capsys, shared
):
    """--shard K/3 runs (on one OUT, or on one OUT each as matrix jobs), then merge."""
    server = await make_mock(MockOptions())
    lines = [{"id": f"j{i}", "prompt": f"prompt {i}", "n": 1 + i % 2} for i in range(12)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    outs = [out if shared else tmp_path / f"shard-{k}" for k in range(3)]
    for k, folder in enumerate(outs):
        argv = [str(jobs), "--base-url", server.base_url, "--out", str(folder)]
        result = await run_cli([*argv, "--shard", f"{k}/3"], capsys)
        assert result.code == 0, result.err
    images = sum(line["n"] for line in lines)
    assert server.stats.requests == images  # each image once, over the three shards
    others = [] if shared else [str(folder) for folder in outs]
    result = await run_cli(["merge", str(out), *others], capsys)
    assert result.code == 0, result.err
    records = by_id(read_manifest(out))
    assert sorted(records) == sorted(f"j{i}" for i in range(12))
    assert all(r["status"] == "ok" for r in records.values())
    assert not list(out.glob("manifest.shard-*"))
    for record in records.values():
        for image in record["files"]:
            assert (out / image["path"]).stat().st_size == image["bytes"]
    again = await run_cli([str(jobs), "--base-url", server.base_url, "--out", str(out)], capsys)
    assert again.code == 0, again.err
    assert server.stats.requests == images  # the whole file, unsharded: nothing sent


async def test_text_from_other_manifests_reaches_the_terminal_escaped(tmp_path, make_mock, capsys):
    server = await make_mock(MockOptions())
    a, out = tmp_path / "a", tmp_path / "out"
    await _run(tmp_path, "a", _lines(range(1)), a, server, capsys)
    [record] = read_manifest(a)
    record["files"][0]["path"] = "evil\x1b[2J.png"  # names a file that is not there
    (a / "manifest.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    result = await run_cli(["merge", str(out), str(a)], capsys)
    assert result.code == 1
    assert "\x1b" not in result.err and "evil\\x1b[2J.png" in result.err


async def test_prefer_newest_keeps_an_older_intact_result_when_the_newest_is_broken(
    tmp_path, make_mock, capsys
):
    server = await make_mock(MockOptions())
    a, b = tmp_path / "a", tmp_path / "b"
    await _run(tmp_path, "a", [{"id": "j0", "prompt": "a cat"}], a, server, capsys)
    await _run(tmp_path, "b", [{"id": "j0", "prompt": "a dog"}], b, server, capsys)
    (b / "j0.png").unlink()  # a cut-off artifact: the newest result lost its image
    cat = by_id(read_manifest(a))["j0"]
    result = await run_cli(["merge", str(a), str(b), "--prefer", "newest"], capsys)
    assert result.code == 1  # the dog's record is reported, not merged
    kept = by_id(read_manifest(a))["j0"]
    assert (kept["status"], kept["fingerprint"]) == ("ok", cat["fingerprint"])
    await _run(tmp_path, "a", [{"id": "j0", "prompt": "a cat"}], a, server, capsys)
    assert server.stats.requests == 2  # the cat, paid for once, is kept


async def test_merge_brings_an_unfinished_jobs_saved_images(tmp_path, make_mock, capsys):
    """A matrix job's n > 1 job that stopped part way: its images come into OUT, so the
    re-run after the merge makes only the missing one."""
    server = await make_mock(MockOptions(script={"a fox": ["ok", "ok", "moderation"]}))
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    fox = {"id": "fox", "prompt": "a fox", "n": 3}
    folder = tmp_path / "jobs-a"
    folder.mkdir()
    jobs = write_jobs(folder / "jobs.jsonl", [fox])
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(a)]
    assert (await run_cli(argv, capsys)).code == 1  # fox-3 refused
    await _run(tmp_path, "b", _lines(range(2)), b, server, capsys)
    result = await run_cli(["merge", str(out), str(a), str(b)], capsys)
    assert result.code == 0, result.err
    record = by_id(read_manifest(out))["fox"]
    assert record["status"] == "failed" and len(record["files"]) == 2
    for f in record["files"]:
        assert (out / f["path"]).read_bytes() == (a / f["path"]).read_bytes()
    write_jobs(folder / "jobs.jsonl", [fox, *_lines(range(2))])
    rerun = await run_cli([str(jobs), "--base-url", server.base_url, "--out", str(out)], capsys)
    assert rerun.code == 0, rerun.err
    assert server.stats.attempts["a fox"] == 4  # only fox-3 again
    assert by_id(read_manifest(out))["fox"]["kept"] == 2
    (a / "fox-1.png").write_bytes(b"damaged")  # a saved image that fails: not merged
    again = await run_cli(["merge", str(tmp_path / "out2"), str(a)], capsys)
    assert again.code == 0 and "a saved image was not merged" in again.err
    files = by_id(read_manifest(tmp_path / "out2"))["fox"]["files"]
    assert [f["path"] for f in files] == ["fox-2.png"]  # the intact one still counts


def test_a_demoted_ok_record_keeps_no_kept_count(tmp_path):
    """An ok record whose images fail becomes failed with no images: its kept count goes
    too, so the merged summary never counts negative images."""
    from pmock_batch.merge import merge_outputs
    from pmock_batch.models import JobRecord
    from pmock_batch.tally import summarize

    other, out = tmp_path / "other", tmp_path / "out"
    other.mkdir()
    image = {"sha256": "0" * 64, "bytes": 3, "format": "png", "width": 1, "height": 1}
    files = [{"path": f"fox-{i}.png", **image} for i in (1, 2, 3)]  # none is in OTHER
    record = {"id": "fox", "line": 1, "status": "ok", "fingerprint": "f" * 64, "files": files}
    record |= {"kept": 2, "finished_at": "2026-12-01T00:00:00.000Z"}
    (other / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    merge_outputs(out, [other])
    (line,) = (out / "manifest.jsonl").read_text().splitlines()
    merged = JobRecord.model_validate_json(line)
    assert merged.status == "failed" and merged.files == [] and merged.kept == 0
    assert summarize([merged]).images == 0
