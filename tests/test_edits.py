"""Edits (issue 13 §1): job lines with ``image``, their checks, the fingerprint, the multipart
wire format, and the mock's ``/images/edits``; end to end over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from helpers import by_id, open_image, read_manifest, run_cli, write_jobs
from PIL import Image

from pmock_batch import inputs as inputs_module
from pmock_batch.jobs import Job, iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.mock.edits import TINT
from pmock_batch.models import fingerprint

KEY = "sk-test-edits"
SIDE = 64  # the inputs are small: the mock's answer is their size


def picture(
    path: Path,
    colour: tuple[int, ...] = (0, 200, 0),
    *,
    fmt: str = "PNG",
    mode: str = "RGB",
    size: tuple[int, int] = (SIDE, SIDE),
) -> Path:
    """Write a flat image of ``colour``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt)
    return path


def mask(path: Path, size: tuple[int, int] = (SIDE, SIDE)) -> Path:
    """A mask whose left half is transparent (to edit) and right half opaque (to keep)."""
    image = Image.new("RGBA", size, (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    image.save(path, "PNG")
    return path


def write(tmp_path: Path, *lines: dict[str, Any], name: str = "jobs.jsonl") -> Path:
    return write_jobs(tmp_path / name, list(lines))


def problems(tmp_path: Path, *lines: dict[str, Any], **kwargs: Any) -> list[str]:
    path = write(tmp_path, *lines)
    return [str(p) for p in scan(path, **kwargs).problems]


# -- the job reader ----------------------------------------------------------------------


def test_an_image_makes_an_edit_whose_fingerprint_holds_the_inputs_sha256(tmp_path):
    a = picture(tmp_path / "refs" / "a.png")
    m = mask(tmp_path / "m.png")
    path = write(
        tmp_path,
        {"id": "one", "prompt": "p", "image": "refs/a.png"},
        {"id": "masked", "prompt": "p", "image": ["refs/a.png"], "mask": "m.png"},
        {"id": "gen", "prompt": "p"},
    )
    scanned = scan(path)
    assert scanned.ok, scanned.problems
    jobs = {job.id: job for job in iter_jobs(path, scanned) if isinstance(job, Job)}
    digest_a = hashlib.sha256(a.read_bytes()).hexdigest()
    one, masked, gen = jobs["one"], jobs["masked"], jobs["gen"]
    assert one.inputs is not None and one.inputs.images[0].sha256 == digest_a
    assert one.inputs.images[0].content_type == "image/png"
    assert one.fingerprint == fingerprint(one.request, {"image_sha256": [digest_a]})
    assert masked.inputs is not None and masked.inputs.mask is not None
    assert masked.fingerprint == fingerprint(
        masked.request,
        {"image_sha256": [digest_a], "mask_sha256": hashlib.sha256(m.read_bytes()).hexdigest()},
    )
    # A generation's fingerprint is what it always was: the canonical body alone.
    canonical = json.dumps(gen.request.canonical(), sort_keys=True, separators=(",", ":"))
    assert gen.inputs is None
    assert gen.fingerprint == hashlib.sha256(canonical.encode()).hexdigest()
    assert len({one.fingerprint, masked.fingerprint, gen.fingerprint}) == 3
    assert one.record_request()["image"] == ["refs/a.png"]
    assert masked.record_request()["mask"] == "m.png"


def test_each_distinct_file_is_hashed_once_however_many_jobs_share_it(tmp_path):
    picture(tmp_path / "a.png")
    picture(tmp_path / "b.png", (9, 9, 9))
    lines = [{"id": f"j{i}", "prompt": "p", "image": ["a.png", "b.png"]} for i in range(1000)]
    path = write(tmp_path, *lines)
    scanned = scan(path)
    assert scanned.ok and scanned.jobs == 1000
    assert len(list(iter_jobs(path, scanned))) == 1000
    assert scanned.files is not None and scanned.files.hashed == 2


def test_input_fidelity_is_sent_on_edits_where_the_table_allows(tmp_path):
    picture(tmp_path / "a.png")
    path = write(
        tmp_path,
        {
            "id": "e1",
            "prompt": "p",
            "image": "a.png",
            "model": "gpt-image-1",
            "input_fidelity": "high",
        },
        {
            "id": "e2",
            "prompt": "p",
            "image": "a.png",
            "model": "gpt-image-2",
            "input_fidelity": "high",
        },
        {"id": "g1", "prompt": "p", "model": "gpt-image-1", "input_fidelity": "high"},
    )
    scanned = scan(path)
    assert scanned.ok, scanned.problems
    jobs = {job.id: job for job in iter_jobs(path, scanned) if isinstance(job, Job)}
    assert jobs["e1"].wire_body()["input_fidelity"] == "high"
    assert "input_fidelity" not in jobs["e2"].wire_body()  # gpt-image-2 ignores it
    assert "input_fidelity" not in jobs["g1"].wire_body()  # never sent to generations
    assert any("gpt-image-2 ignores input_fidelity" in w for w in scanned.warnings)
    bad = problems(
        tmp_path,
        {"prompt": "p", "image": "a.png", "model": "gpt-image-1", "input_fidelity": "max"},
    )
    wanted = "input_fidelity: 'max' is not one of high, low for gpt-image-1"
    assert bad == [f"{tmp_path / 'jobs.jsonl'}:1: {wanted}"]


def test_every_input_problem_names_the_line_and_the_file(tmp_path, monkeypatch):
    picture(tmp_path / "a.png")
    picture(tmp_path / "big.png", size=(96, 96))
    picture(tmp_path / "anim.gif", fmt="GIF", mode="P", colour=1)
    picture(tmp_path / "opaque.png", (1, 2, 3))
    picture(tmp_path / "mask.jpg", fmt="JPEG")
    mask(tmp_path / "small-mask.png", (32, 32))
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    outside = picture(tmp_path.parent / f"{tmp_path.name}-outside" / "o.png")
    (tmp_path / "link.png").symlink_to(outside)
    (tmp_path / "inner-link.png").symlink_to(tmp_path / "a.png")  # stays inside: fine
    monkeypatch.setattr(inputs_module, "MAX_IMAGE_BYTES", 2_000)
    Image.effect_noise((96, 96), 64).save(tmp_path / "heavy.png")
    lines: list[tuple[dict[str, Any], str]] = [
        ({"image": "missing.png"}, "image: missing.png: no such file"),
        ({"image": "folder.png"}, "image: folder.png: is not a regular file"),
        ({"image": "notes.png"}, "image: notes.png: is not an image pmock-batch can read"),
        ({"image": "anim.gif"}, "image: anim.gif: is GIF, not PNG, JPEG or WebP"),
        ({"image": "link.png"}, "image: link.png: is outside the allowed folders"),
        ({"image": "../" + tmp_path.name + "-outside/o.png"}, "is outside the allowed"),
        ({"image": str(outside)}, "is outside the allowed folders"),
        ({"image": "heavy.png"}, "image: heavy.png: is "),
        ({"image": ["a.png"] * 17}, "image: 17 images; at most 16 are allowed"),
        ({"image": []}, "image: expected a path or a list of paths"),
        ({"image": None}, "image: expected a path or a list of paths"),
        ({"image": ["a.png", 3]}, "image[1]: expected a non-empty path"),
        ({"image": "a.png", "mask": "opaque.png"}, "mask: opaque.png: must be a PNG with an alpha"),
        ({"image": "a.png", "mask": "mask.jpg"}, "mask: mask.jpg: must be a PNG with an alpha"),
        (
            {"image": "a.png", "mask": "small-mask.png"},
            "mask: small-mask.png: is 32x32, but the first image a.png is 64x64; they must match",
        ),
        ({"mask": "small-mask.png"}, "mask: a mask needs an image to edit"),
        ({"image": "a.png", "model": "dall-e-3"}, "model: dall-e-3 does not edit images"),
    ]
    path = write(tmp_path, *({"prompt": "p", **line} for line, _ in lines))
    scanned = scan(path)
    found = [str(p) for p in scanned.problems]
    assert len(found) == len(lines), found
    for number, ((_, expected), problem) in enumerate(zip(lines, found, strict=True), start=1):
        assert problem.startswith(f"{path}:{number}: "), problem
        assert expected in problem, (expected, problem)
    assert "at most 2,000 are allowed" in found[7]
    ok = write(tmp_path, {"prompt": "p", "image": "inner-link.png"}, name="ok.jsonl")
    assert scan(ok).ok


def test_mask_limit_is_4_mib(tmp_path, monkeypatch):
    picture(tmp_path / "a.png")
    mask(tmp_path / "m.png")
    monkeypatch.setattr(inputs_module, "MAX_MASK_BYTES", 10)
    found = problems(tmp_path, {"prompt": "p", "image": "a.png", "mask": "m.png"})
    assert len(found) == 1 and "mask: m.png: is " in found[0]
    assert "at most 10 are allowed" in found[0]
    assert inputs_module.MAX_IMAGES == 16


def test_inputs_dir_is_a_second_allowed_root(tmp_path):
    shared = tmp_path / "shared"
    ref = picture(shared / "ref.png")
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    path = write(jobs_dir, {"prompt": "p", "image": str(ref)})
    assert not scan(path).ok
    assert scan(path, inputs=shared).ok
    relative = write(jobs_dir, {"prompt": "p", "image": "../shared/ref.png"}, name="rel.jsonl")
    assert scan(relative, inputs=shared).ok


# -- end to end over loopback ------------------------------------------------------------


def _tinted_towards(pixel: tuple[int, ...], source: tuple[int, ...]) -> bool:
    """The pixel lies between the source colour and the tint, strictly off the source."""
    moved = False
    for have, src, tint in zip(pixel[:3], source, TINT, strict=True):
        lo, hi = sorted((src, tint))
        if not lo - 2 <= have <= hi + 2:
            return False
        moved = moved or abs(have - src) > 20
    return moved


@pytest.mark.parametrize("dialect", ["pmock", "openai"])
async def test_edits_with_one_and_three_inputs_with_and_without_a_mask(
    tmp_path, capsys, make_mock, monkeypatch, dialect
):
    server = await make_mock(MockOptions(dialect=dialect))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    green, blue = (0, 200, 0), (0, 0, 220)
    picture(tmp_path / "in" / "a.png", green)
    picture(tmp_path / "in" / "b.jpg", blue, fmt="JPEG")
    picture(tmp_path / "in" / "c.webp", blue, fmt="WEBP")
    mask(tmp_path / "in" / "mask.png")
    three = ["in/a.png", "in/b.jpg", "in/c.webp"]
    model = {"model": "gpt-image-1", "input_fidelity": "low"}
    jobs = write(
        tmp_path,
        {"id": "one", "prompt": "tint one", "image": "in/a.png", **model},
        {"id": "one-mask", "prompt": "tint half", "image": "in/a.png", "mask": "in/mask.png"},
        {"id": "three", "prompt": "tint three", "image": three, **model},
        {"id": "three-mask", "prompt": "three, half", "image": three, "mask": "in/mask.png"},
        {"id": "gen", "prompt": "a plain generation"},
    )
    out = tmp_path / "out"
    result = await run_cli([str(jobs), "--base-url", server.base_url, "--out", str(out)], capsys)
    assert result.code == 0, result.err
    assert set(server.stats.outcomes) == {"ok"}, [e.to_json() for e in server.stats.log]
    log = {entry.prompt: entry for entry in server.stats.log}
    assert log["a plain generation"].path == "/v1/images/generations"
    parts = {p: log[p].parts for p in ("tint one", "tint half", "tint three", "three, half")}
    assert all(log[p].path == "/v1/images/edits" for p in parts)
    assert parts["tint one"] == [
        {"name": "image", "filename": "a.png", "content_type": "image/png", "bytes": 0}
        | {"bytes": (tmp_path / "in" / "a.png").stat().st_size}
    ]
    assert [(p["name"], p["filename"], p["content_type"]) for p in parts["three, half"]] == [
        ("image[]", "a.png", "image/png"),
        ("image[]", "b.jpg", "image/jpeg"),
        ("image[]", "c.webp", "image/webp"),
        ("mask", "mask.png", "image/png"),
    ]
    assert [p["name"] for p in parts["tint three"]] == ["image[]"] * 3
    assert [p["name"] for p in parts["tint half"]] == ["image", "mask"]
    assert log["tint one"].body["input_fidelity"] == "low"
    assert log["tint one"].headers["Authorization"] == f"Bearer {KEY}"
    assert log["tint one"].headers["Content-Type"].startswith("multipart/form-data; boundary=")
    records = by_id(read_manifest(out))
    assert all(r["status"] == "ok" for r in records.values()), records
    assert records["three"]["request"]["image"] == three
    assert records["one-mask"]["request"]["mask"] == "in/mask.png"
    for job in ("one", "one-mask", "three", "three-mask"):
        image = open_image(out / records[job]["files"][0]["path"]).convert("RGB")
        assert image.size == (SIDE, SIDE)  # the first input's size
        left, right = image.getpixel((2, SIDE // 2)), image.getpixel((SIDE - 3, SIDE // 2))
        assert _tinted_towards(left, green), (job, left)  # from the first input, tinted
        if job.endswith("mask"):  # the opaque half of the mask is kept as it was
            assert max(abs(a - b) for a, b in zip(right, green, strict=True)) <= 2, right
        else:
            assert _tinted_towards(right, green), (job, right)


async def test_a_changed_reference_regenerates_exactly_its_jobs(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock()
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    picture(tmp_path / "a.png", (10, 100, 10))
    picture(tmp_path / "b.png", (100, 10, 10))
    jobs = write(
        tmp_path,
        {"id": "a1", "prompt": "first a", "image": "a.png"},
        {"id": "a2", "prompt": "second a", "image": ["b.png", "a.png"]},
        {"id": "b1", "prompt": "only b", "image": "b.png"},
        {"id": "g", "prompt": "no inputs"},
    )
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out")]
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.requests == 4
    first = by_id(read_manifest(tmp_path / "out"))
    # The same files (even touched): nothing to do.
    os.utime(tmp_path / "a.png")
    assert (await run_cli(argv, capsys)).code == 0
    assert server.stats.requests == 4
    picture(tmp_path / "a.png", (10, 100, 200))
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    assert server.stats.requests == 6
    assert sorted(e.prompt or "" for e in list(server.stats.log)[4:]) == ["first a", "second a"]
    second = by_id(read_manifest(tmp_path / "out"))
    changed = {k for k in first if first[k]["fingerprint"] != second[k]["fingerprint"]}
    assert changed == {"a1", "a2"}


async def test_invalid_inputs_exit_2_and_send_nothing(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock()
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    picture(tmp_path / "a.png")
    jobs = write(
        tmp_path,
        {"id": "ok", "prompt": "p", "image": "a.png"},
        {"id": "bad", "prompt": "p", "image": "gone.png"},
    )
    result = await run_cli([str(jobs), "--base-url", server.base_url], capsys)
    assert result.code == 2
    assert f"{jobs}:2" in result.err and "gone.png: no such file" in result.err
    assert server.stats.requests == 0
    shared = picture(tmp_path / "elsewhere" / "s.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    other = write(sub, {"prompt": "p", "image": str(shared)})
    assert (await run_cli(["validate", str(other)], capsys)).code == 2
    ok = await run_cli(["validate", str(other), "--inputs", str(shared.parent)], capsys)
    assert ok.code == 0, ok.err


# -- the mock's checks -------------------------------------------------------------------


def _png(size: tuple[int, int] = (SIDE, SIDE), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


async def _post_edit(
    url: str, files: list[tuple[str, bytes, str]], fields: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in (fields or {"prompt": "p", "model": "gpt-image-1"}).items():
        form.add_field(name, value)
    for name, data, content_type in files:
        form.add_field(name, io.BytesIO(data), filename=f"{name}.bin", content_type=content_type)
    async with aiohttp.ClientSession() as session, session.post(url, data=form) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("files", "fields", "param", "code"),
    [
        (
            [("image", _png(), "application/octet-stream")],
            None,
            "image",
            "unsupported_file_mimetype",
        ),
        ([("image", b"not a png", "image/png")], None, "image", "invalid_image_format"),
        ([("image", _png(), "image/jpeg")], None, "image", "invalid_image_format"),
        ([], None, "image", "missing_required_parameter"),
        ([("image[]", _png(), "image/png")] * 17, None, "image", "invalid_value"),
        (
            [("image", _png(), "image/png"), ("mask", _png(), "image/png")],
            None,
            "mask",
            "invalid_value",
        ),
        (
            [("image", _png(), "image/png"), ("mask", _png((32, 32), "RGBA"), "image/png")],
            None,
            "mask",
            "invalid_value",
        ),
        (
            [("image", _png(), "image/png")],
            {"prompt": "p", "model": "gpt-image-1", "colour": "red"},
            "colour",
            "unknown_parameter",
        ),
        (
            [("image", _png(), "image/png")],
            {"prompt": "p", "model": "gpt-image-2", "input_fidelity": "high"},
            "input_fidelity",
            "unknown_parameter",
        ),
        (
            [("image", _png(), "image/png")],
            {"prompt": "p", "model": "dall-e-3"},
            "model",
            "invalid_value",
        ),
    ],
)
async def test_the_mock_checks_an_edit_as_the_real_api(make_mock, files, fields, param, code):
    server = await make_mock(MockOptions(dialect="openai"))
    status, body = await _post_edit(server.base_url + "/images/edits", files, fields)
    assert status == 400, body
    assert body["error"]["param"] == param and body["error"]["code"] == code, body


async def test_the_mock_limits_an_image_to_50_mib(make_mock, monkeypatch):
    from pmock_batch.mock import edits

    monkeypatch.setattr(edits, "MAX_IMAGE_BYTES", 100)
    server = await make_mock(MockOptions(dialect="openai"))
    status, body = await _post_edit(
        server.base_url + "/images/edits", [("image", _png(), "image/png")]
    )
    assert status == 400 and body["error"]["code"] == "file_too_large", body


async def test_input_fidelity_is_accepted_by_the_openai_dialect_only_on_edits(make_mock):
    server = await make_mock(MockOptions(dialect="openai"))
    fields = {"prompt": "p", "model": "gpt-image-1", "input_fidelity": "high"}
    status, body = await _post_edit(
        server.base_url + "/images/edits", [("image", _png(), "image/png")], fields
    )
    assert status == 200, body
    url = server.base_url + "/images/generations"
    async with aiohttp.ClientSession() as session, session.post(url, json=fields) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "unknown_parameter"


async def test_the_official_sdk_edits_against_the_mock(tmp_path, make_mock):
    server = await make_mock(MockOptions(dialect="openai"))
    one = picture(tmp_path / "a.png", (0, 200, 0))
    two = picture(tmp_path / "b.webp", (0, 0, 200), fmt="WEBP")
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    async with client:
        with one.open("rb") as fh:
            answer = await client.images.edit(
                image=fh, prompt="tint it", model="gpt-image-1", input_fidelity="high"
            )
        with one.open("rb") as a, two.open("rb") as b, mask(tmp_path / "m.png").open("rb") as m:
            many = await client.images.edit(image=[a, b], mask=m, prompt="two", model="gpt-image-1")
    assert answer.data and answer.data[0].b64_json and answer.usage is not None
    image = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json)))
    assert image.size == (SIDE, SIDE)
    assert _tinted_towards(image.convert("RGB").getpixel((5, 5)), (0, 200, 0))
    assert many.data and many.data[0].b64_json
    first, second = list(server.stats.log)
    assert [(p["name"], p["filename"], p["content_type"]) for p in first.parts or []] == [
        ("image", "a.png", "image/png")
    ]
    assert [(p["name"], p["content_type"]) for p in second.parts or []] == [
        ("image[]", "image/png"),
        ("image[]", "image/webp"),
        ("mask", "image/png"),
    ]


async def test_the_official_sdk_streams_an_edit_as_image_edit_events(tmp_path, make_mock):
    server = await make_mock(MockOptions(dialect="openai"))
    one = picture(tmp_path / "a.png", (0, 200, 0))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    async with client:
        with one.open("rb") as fh:
            stream = await client.images.edit(
                image=fh, prompt="tint it", model="gpt-image-1", stream=True, partial_images=2
            )
            events = [event async for event in stream]
    assert [e.type for e in events] == [
        "image_edit.partial_image",
        "image_edit.partial_image",
        "image_edit.completed",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
    assert final.size == (SIDE, SIDE)  # the input's size, tinted: the edit used the input
    assert _tinted_towards(final.convert("RGB").getpixel((5, 5)), (0, 200, 0))
    [entry] = server.stats.log
    assert entry.path == "/v1/images/edits" and entry.body["stream"] in (True, "true")


@pytest.mark.parametrize("dialect", ["pmock", "openai"])
async def test_a_streamed_edit_saves_the_tinted_input_and_its_partials(
    tmp_path, capsys, make_mock, monkeypatch, dialect
):
    server = await make_mock(MockOptions(dialect=dialect))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    green = (0, 200, 0)
    picture(tmp_path / "a.png", green)
    line = {"id": "e", "prompt": "tint it", "image": "a.png", "model": "gpt-image-1"}
    jobs = write(tmp_path, line | {"stream": True, "partial_images": 2})
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--save-partials"]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    [entry] = server.stats.log
    assert entry.path == "/v1/images/edits"
    assert entry.body["stream"] in (True, "true") and int(entry.body["partial_images"]) == 2
    record = by_id(read_manifest(out))["e"]
    assert record["status"] == "ok" and record["attempts"] == 1
    assert [p["index"] for p in record["partials"]] == [0, 1]
    for partial in record["partials"]:
        saved = out / partial["path"]
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == partial["sha256"]
    image = open_image(out / record["files"][0]["path"]).convert("RGB")
    assert image.size == (SIDE, SIDE)
    assert _tinted_towards(image.getpixel((5, 5)), green)


async def test_a_retried_edit_sends_its_files_again_whole(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions(script={"retry me": ("500", "drop", "ok")}))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    a = picture(tmp_path / "a.png")
    jobs = write(tmp_path, {"id": "r", "prompt": "retry me", "image": ["a.png", "a.png"]})
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out")]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    assert read_manifest(tmp_path / "out")[0]["attempts"] == 3
    entries = list(server.stats.log)
    assert len(entries) == 3
    size = a.stat().st_size
    for entry in entries:
        assert [(p["name"], p["bytes"]) for p in entry.parts or []] == [("image[]", size)] * 2


def test_the_form_streams_from_open_files_and_closes_them(tmp_path):
    from pmock_batch.uploads import edit_form

    picture(tmp_path / "a.png")
    mask(tmp_path / "m.png")
    path = write(tmp_path, {"prompt": "p", "image": "a.png", "mask": "m.png", "n": 2})
    job = next(j for j in iter_jobs(path, scan(path)) if isinstance(j, Job))
    assert job.inputs is not None
    with edit_form(job.wire_body(), job.inputs) as form:
        values = [value for _, _, value in form._fields]
        handles = [v for v in values if isinstance(v, io.BufferedReader)]
        assert len(handles) == 2 and not any(isinstance(v, bytes) for v in values)
        assert not any(h.closed for h in handles)
    assert all(h.closed for h in handles)


def test_a_file_changed_after_its_check_is_not_sent(tmp_path):
    from pmock_batch.errors import Decision, InputFileError
    from pmock_batch.failures import describe

    a = picture(tmp_path / "a.png")
    path = write(tmp_path, {"prompt": "p", "image": "a.png"})
    job = next(j for j in iter_jobs(path, scan(path)) if isinstance(j, Job))
    assert job.inputs is not None
    file = job.inputs.images[0]
    with file.open() as fh:
        assert fh.read() == a.read_bytes()
    picture(a, (1, 1, 1))  # rewritten: another time, maybe another size
    os.utime(a, ns=(1, 1))
    with pytest.raises(InputFileError, match=r"a\.png: changed since it was checked") as caught:
        file.open()
    failure = describe(caught.value)
    assert failure.kind == "input" and failure.decision is Decision.FAIL
    a.unlink()
    a.symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(InputFileError, match=r"a\.png: cannot be opened"):
        file.open()


async def test_edits_are_accepted_with_the_batch_api(tmp_path, capsys):
    from helpers import run_cli, write_jobs
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(tmp_path / "ref.png")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "e", "prompt": "tint", "image": "ref.png"}])
    result = await run_cli([str(jobs), "--mock", "--batch-api", "--dry-run"], capsys)
    assert result.code == 0, result.err
    assert "one endpoint and model per batch" in result.out
