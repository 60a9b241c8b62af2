"""End-to-end tests of the CLI over real loopback HTTP against the project's mock server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from helpers import (
    FORMAT_NAMES,
    by_id,
    open_image,
    read_manifest,
    run_cli,
    subprocess_env,
    write_jobs,
)

from pmock_batch.cli import AbortedError
from pmock_batch.errors import LockedError, OutputPathError, UsageError
from pmock_batch.flags import ADVANCED
from pmock_batch.jobs import scan
from pmock_batch.mock import MockOptions

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "jobs" / "example.jsonl"
KEY = "sk-test-0123456789abcdefSECRET"


@pytest.mark.parametrize("dialect", ["pmock", "openai"])
async def test_example_batch_with_mock_writes_valid_images_and_manifest(
    tmp_path, capsys, make_mock, monkeypatch, dialect
):
    server = await make_mock(MockOptions(dialect=dialect))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "out"
    argv = [str(EXAMPLE), "--concurrency", "8", "--base-url", server.base_url, "--out", str(out)]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    # No request carried a field the dialect refuses: every answer was a 200.
    assert set(server.stats.outcomes) == {"ok"}, server.stats.outcomes
    assert server.stats.downloads == 1  # url/owl: dall-e-2 with response_format url
    sent = [entry.body for entry in server.stats.log]
    assert all("input_fidelity" not in b and "partial_images" not in b for b in sent)
    gpt = [b for b in sent if b["model"] == "gpt-image-2"]
    assert gpt and all("response_format" not in b and "responseFormat" not in b for b in gpt)
    records = read_manifest(out)
    scanned = scan(EXAMPLE)
    assert len(records) == scanned.jobs == 12
    assert [r["line"] for r in records] == sorted(r["line"] for r in records)
    expected_sizes = {"1536x1024": (1536, 1024), "1024x1536": (1024, 1536)}
    for record in records:
        assert record["status"] == "ok", record
        request = record["request"]
        if record["id"] == "url/owl":
            assert request["model"] == "dall-e-2" and request["response_format"] == "url"
        else:
            assert request["model"] == "gpt-image-2"
            assert "response_format" not in request
        assert len(record["fingerprint"]) == 64
        assert record["error"] is None
        assert record["attempts"] >= len(record["files"]) >= 1
        assert record["started_at"].endswith("Z") and record["finished_at"].endswith("Z")
        assert isinstance(record["usage"], dict) and record["usage"]["total_tokens"] > 0
        for f in record["files"]:
            path = out / f["path"]
            data = path.read_bytes()
            assert len(data) == f["bytes"]
            assert hashlib.sha256(data).hexdigest() == f["sha256"]
            img = open_image(path)
            wanted_format = request.get("output_format", "png")
            assert img.format == FORMAT_NAMES[wanted_format] == FORMAT_NAMES[f["format"]]
            w, h = expected_sizes.get(request.get("size", "1024x1024"), (None, None))
            if w is not None:
                assert img.size == (w, h)
            assert img.size == (f["width"], f["height"])
            if request.get("background") == "transparent":
                assert "A" in img.mode
    ids = by_id(records)
    assert [f["path"] for f in ids["variants/robot"]["files"]] == [
        "variants/robot-1.png",
        "variants/robot-2.png",
        "variants/robot-3.png",
    ]
    assert ids["icons/home"]["files"][0]["path"] == "icons/home.png"
    assert ids["photo/fox"]["files"][0]["path"] == "photo/fox.jpg"
    assert ids["wallpaper/mountains"]["files"][0]["width"] == 2048
    assert re.search(r"^\| jobs +\| 12 +\|$", result.err, re.M), result.err
    assert re.search(r"^\| ok +\| 12 +\|$", result.err, re.M)
    assert f"| manifest               | {out}/manifest.jsonl" in result.err
    assert not list(out.rglob("*.pmock-tmp"))


async def test_default_out_dir_is_out_slash_jobs_stem(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "nightly.jsonl", [{"id": "a", "prompt": "a cat"}])
    result = await run_cli([str(jobs), "--mock"], capsys)
    assert result.code == 0, result.err
    assert open_image(tmp_path / "out" / "nightly" / "a.png").size == (1024, 1024)


async def test_invalid_file_exits_2_and_sends_nothing(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "ok1", "prompt": "fine"},
            {"prompt": "x", "quailty": "high"},
            "RAW:{not json",
            {"prompt": "y", "size": "1000x1000"},
        ],
    )
    result = await run_cli([str(jobs), "--base-url", server.base_url], capsys)
    assert result.code == 2
    lines = result.err.splitlines()
    assert f"{jobs}:2: 'quailty': unknown field; did you mean 'quality'?" in lines
    assert any(line.startswith(f"{jobs}:3: not valid JSON") for line in lines)
    size_problem = "is not allowed for gpt-image-2: both edges must be multiples of 16"
    assert f"{jobs}:4: size: '1000x1000' {size_problem}" in lines
    assert "Traceback" not in result.err
    assert server.stats.requests == 0
    assert not (tmp_path / "out").exists()


async def test_at_most_20_problems_are_listed(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "bad.jsonl", [{"prompt": ""}] * 25)
    result = await run_cli([str(jobs), "--mock"], capsys)
    assert result.code == 2
    assert result.err.count(": prompt: must not be empty") == 20
    assert "... and 5 more problem(s)" in result.err


async def test_skip_invalid_runs_the_rest_and_exits_1(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "good", "prompt": "a cat"}, {"id": "bad", "prompt": "x", "size": "9x9"}],
    )
    argv = [str(jobs), "--base-url", server.base_url, "--skip-invalid", "--out", str(out)]
    result = await run_cli(argv, capsys)
    assert result.code == 1
    records = by_id(read_manifest(out))
    assert records["good"]["status"] == "ok"
    assert records["bad"]["status"] == "invalid"
    assert records["bad"]["line"] == 2
    assert records["bad"]["error"]["kind"] == "invalid"
    assert "size: '9x9' is not allowed for gpt-image-2" in records["bad"]["error"]["message"]
    assert server.stats.requests == 1


async def test_dry_run_prints_plan_and_sends_nothing(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "icons/a", "prompt": "a", "n": 2}, {"prompt": "b", "output_format": "jpeg"}],
    )
    out = tmp_path / "o"
    argv = [str(jobs), "--base-url", server.base_url, "--dry-run", "--out", str(out)]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    assert "2 job(s), 3 image(s)" in result.out
    assert str(out / "icons" / "a-1.png") in result.out
    assert str(out / "icons" / "a-2.png") in result.out
    assert ".jpg" in result.out
    assert server.stats.requests == 0
    assert not out.exists()


async def test_no_key_without_mock_exits_2_before_sending(tmp_path, capsys, make_mock):
    server = await make_mock(MockOptions())
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    result = await run_cli([str(jobs), "--base-url", server.base_url], capsys)
    assert result.code == 2
    assert "PMOCK_API_KEY" in result.err
    assert server.stats.requests == 0


async def test_key_is_sent_but_never_shown_or_stored(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions(require_key=KEY, moderation_words=("forbidden",)))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "a", "prompt": "a cat"}, {"id": "b", "prompt": "a forbidden cat"}],
    )
    result = await run_cli(
        [str(jobs), "--base-url", server.base_url, "--out", str(out), "-v"], capsys
    )
    assert result.code == 1
    assert {entry.authorization for entry in server.stats.log} == {f"Bearer {KEY}"}
    manifest_text = (out / "manifest.jsonl").read_text()
    for text in (result.out, result.err, manifest_text):
        assert KEY not in text
        assert KEY[-8:] not in text


async def test_wrong_key_aborts_with_exit_3(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions(require_key="sk-the-right-one"))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(40)]
    )
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--concurrency", "4"]
    result = await run_cli(argv, capsys)
    assert result.code == 3
    assert "aborting the run: the server refused the API key" in result.err
    assert "check PMOCK_API_KEY" in result.err
    assert KEY not in result.err
    assert server.stats.requests <= 4 + 4  # the first 401 plus at most what was in flight
    records = read_manifest(out)
    assert len(records) == 40
    statuses = {r["status"] for r in records}
    assert statuses <= {"failed", "not_run"} and "not_run" in statuses
    assert all(r["error"]["kind"] in ("auth", "not_run") for r in records)


async def test_field_case_camel_and_snake_on_the_wire(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "a", "prompt": "a cat", "outputFormat": "webp", "output_compression": 50}],
    )
    base = [str(jobs), "--base-url", server.base_url]
    assert (await run_cli([*base, "--out", str(tmp_path / "s")], capsys)).code == 0
    assert (
        await run_cli([*base, "--out", str(tmp_path / "c"), "--field-case", "camel"], capsys)
    ).code == 0
    snake, camel = (entry.body for entry in server.stats.log)
    assert snake == {
        "prompt": "a cat",
        "model": "gpt-image-2",
        "output_format": "webp",
        "output_compression": 50,
    }
    assert camel == {
        "prompt": "a cat",
        "model": "gpt-image-2",
        "outputFormat": "webp",
        "outputCompression": 50,
    }
    assert open_image(tmp_path / "c" / "a.webp").format == "WEBP"


async def test_concurrency_bound_holds_on_the_server(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions(latency=0.05))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"prompt number {i}" for i in range(24)])
    argv = [
        str(jobs),
        "--base-url",
        server.base_url,
        "--concurrency",
        "3",
        "--out",
        str(tmp_path / "o"),
    ]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    assert server.stats.requests == 24
    assert server.stats.peak_in_flight == 3


async def test_n_fans_out_into_single_image_requests(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "v/robot", "prompt": "a robot", "n": 3}])
    result = await run_cli([str(jobs), "--base-url", server.base_url, "--out", str(out)], capsys)
    assert result.code == 0, result.err
    assert server.stats.requests == 3
    assert all("n" not in entry.body for entry in server.stats.log)
    record = read_manifest(out)[0]
    assert [f["path"] for f in record["files"]] == [
        "v/robot-1.png",
        "v/robot-2.png",
        "v/robot-3.png",
    ]
    for f in record["files"]:
        assert open_image(out / f["path"]).size == (1024, 1024)


async def test_bare_string_batch_api_bom_and_crlf(tmp_path, capsys):
    out = tmp_path / "o"
    batch = {
        "custom_id": "lantern",
        "method": "POST",
        "url": "/v1/images/generations",
        "body": {"prompt": "a lantern", "size": "1024x1536"},
    }
    text = "\r\n".join(['"a bare prompt"', "", "# comment", json.dumps(batch)]) + "\r\n"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    result = await run_cli([str(jobs), "--mock", "--out", str(out)], capsys)
    assert result.code == 0, result.err
    records = read_manifest(out)
    assert [r["line"] for r in records] == [1, 4]
    assert records[0]["id"].startswith("a-bare-prompt-")
    assert records[1]["id"] == "lantern"
    assert open_image(out / "lantern.png").size == (1024, 1536)


async def test_url_response_format_downloads_the_image(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "owl", "prompt": "an owl", "response_format": "url", "model": "dall-e-2"}],
    )
    result = await run_cli([str(jobs), "--base-url", server.base_url, "--out", str(out)], capsys)
    assert result.code == 0, result.err
    assert server.stats.log[0].body["response_format"] == "url"
    assert server.stats.downloads == 1
    assert open_image(out / "owl.png").size == (1024, 1024)


async def test_a_failed_job_does_not_stop_the_others(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions(moderation_words=("forbidden",)))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "a", "prompt": "a forbidden thing"}, {"id": "b", "prompt": "a cat"}],
    )
    result = await run_cli([str(jobs), "--base-url", server.base_url, "--out", str(out)], capsys)
    assert result.code == 1
    records = by_id(read_manifest(out))
    assert records["b"]["status"] == "ok"
    assert records["a"]["status"] == "failed"
    assert records["a"]["attempts"] == 1
    assert records["a"]["http_status"] == 400
    assert records["a"]["error"]["kind"] == "moderation"
    assert records["a"]["error"]["code"] == "moderation_blocked"
    assert "FAILED a:" in result.err


async def test_traversal_id_is_rejected(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "../../etc/evil", "prompt": "x"}])
    result = await run_cli([str(jobs), "--mock", "--out", str(tmp_path / "o")], capsys)
    assert result.code == 2
    assert "id: '../../etc/evil' contains '..'" in result.err
    assert not (tmp_path / "etc").exists()


async def test_validate_subcommand(tmp_path, capsys):
    good = write_jobs(tmp_path / "good.jsonl", [{"prompt": "a"}])
    bad = write_jobs(tmp_path / "bad.jsonl", [{"prompt": "a", "n": 0}])
    assert (await run_cli(["validate", str(good)], capsys)).code == 0
    result = await run_cli(["validate", str(bad)], capsys)
    assert result.code == 2
    assert f"{bad}:1: n: 0 is out of range; must be at least 1" in result.err


async def test_bad_flags_exit_2(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    assert (await run_cli([str(jobs), "--size", "9x9", "--mock"], capsys)).code == 2
    assert (await run_cli([str(jobs), "--concurrency", "0", "--mock"], capsys)).code == 2
    assert (await run_cli([str(tmp_path / "missing.jsonl"), "--mock"], capsys)).code == 2
    result = await run_cli([str(jobs), "--mock", "--mock-fault-rate", "500=2"], capsys)
    assert result.code == 2 and "500" in result.err


async def test_cli_defaults_apply_and_the_line_wins(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b", "output_format": "png"}],
    )
    argv = [
        str(jobs),
        "--base-url",
        server.base_url,
        "--out",
        str(out),
        "--output-format",
        "jpeg",
        "--output-compression",
        "60",
        "--size",
        "1536x1024",
        "--quality",
        "low",
    ]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    a, b = (entry.body for entry in server.stats.log)
    assert a["output_format"] == "jpeg" and a["output_compression"] == 60
    assert b["output_format"] == "png" and "output_compression" not in b
    assert a["size"] == b["size"] == "1536x1024"
    assert open_image(out / "a.jpg").size == (1536, 1024)
    assert open_image(out / "b.png").format == "PNG"


def _subprocess_env() -> dict[str, str]:
    return subprocess_env(key=False)  # these run --mock: no key at all


def test_python_dash_m_and_console_script(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pmock_batch", "--version"],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        check=False,
    )
    assert proc.returncode == 0 and "pmock-batch" in proc.stdout
    script = shutil.which("pmock-batch", path=str(Path(sys.executable).parent))
    assert script is not None
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    for group in ("input", "request defaults", "endpoint", "concurrency and retries", "output"):
        assert group in proc.stdout.lower()


def test_sigint_exits_130_with_consistent_manifest(tmp_path):
    """A real process, a real SIGINT: no new jobs, not_run records, exit 130."""
    import signal
    import time

    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(50)]
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pmock_batch",
            str(jobs),
            "--mock",
            "--mock-latency",
            "0.2",
            "--concurrency",
            "2",
            "--grace",
            "5",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_subprocess_env(),
    )
    deadline = time.monotonic() + 20
    manifest = out / "manifest.jsonl"
    while time.monotonic() < deadline and not (manifest.exists() and manifest.stat().st_size):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    records = read_manifest(out)
    assert len(records) == 50
    done = [r for r in records if r["status"] == "ok"]
    assert 1 <= len(done) < 50
    assert {r["status"] for r in records} == {"ok", "not_run"}
    for r in done:
        assert open_image(out / r["files"][0]["path"]).size == (1024, 1024)
    assert not list(out.rglob("*.pmock-tmp"))


def test_sigterm_to_the_process_then_its_group_is_one_stop(tmp_path):
    """``timeout`` and CI runners signal the process, then its group: the same SIGTERM
    twice within a moment is one stop (a summary, every job recorded), not an exit."""
    import signal
    import time

    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(50)]
    )
    argv = [sys.executable, "-m", "pmock_batch", str(jobs), "--mock", "--mock-latency", "0.2"]
    proc = subprocess.Popen(
        [*argv, "--concurrency", "2", "--grace", "5", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_subprocess_env(),
        start_new_session=True,  # its own process group, as under timeout
    )
    deadline = time.monotonic() + 20
    manifest = out / "manifest.jsonl"
    while time.monotonic() < deadline and not (manifest.exists() and manifest.stat().st_size):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)  # handled by now: the group's copy comes as a second signal
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Interrupted again" not in err and "stopping" in err
    assert len(read_manifest(out)) == 50  # the summary ran: every job recorded
    # Ctrl-C is a key press: pressed twice, however quickly, it exits at once.
    slow = [a if a != "0.2" else "5" for a in argv]  # jobs in flight outlast both presses
    proc = subprocess.Popen(
        [*slow, "--concurrency", "2", "--grace", "10", "--out", str(tmp_path / "o2")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_subprocess_env(),
    )
    time.sleep(1.5)  # started, its first two jobs in flight
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Interrupted again" in err, err


async def test_every_run_writes_a_report_and_report_regenerates_it(tmp_path, capsys):
    out = tmp_path / "o"
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a/b", "prompt": "a <b> & c"}])
    result = await run_cli([str(jobs), "--mock", "--out", str(out)], capsys)
    assert result.code == 0
    report = out / "report.html"
    html = report.read_text()
    assert 'data-id="a/b"' in html and "a &lt;b&gt; &amp; c" in html
    assert 'id="run-counts"' in html  # the run that wrote it embeds its counts
    assert f"| report                 | {report}" in result.err
    report.unlink()
    again = await run_cli(["report", str(out)], capsys)
    assert again.code == 0

    def undated(text: str) -> str:
        text = re.sub(r'<script type="application/json" id="run-counts">.*?</script>', "", text)
        return re.sub(r"\d{4}-\d\d-\d\d[T ][0-9:.]+(\+00:00| UTC)?", "", text)

    assert undated(report.read_text()) == undated(html)
    assert (await run_cli(["report", str(tmp_path / "nowhere")], capsys)).code == 2
    from pmock_batch.lock import run_lock

    with run_lock(out):
        assert (await run_cli(["report", str(out)], capsys)).code == 4


async def test_wrong_base_url_aborts_with_exit_3(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(20)]
    )
    argv = [str(jobs), "--base-url", server.url + "/wrong/v1", "--out", str(tmp_path / "o")]
    result = await run_cli([*argv, "--concurrency", "2"], capsys)
    assert result.code == 3
    assert "was not found (HTTP 404" in result.err and "check --base-url" in result.err
    assert server.stats.requests == 0  # the generation route never saw a request


async def test_an_unusable_output_directory_exits_3(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a directory")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    result = await run_cli([str(jobs), "--mock", "--out", str(tmp_path / "afile" / "sub")], capsys)
    assert result.code == 3
    assert "cannot use the output directory" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("command", ["run", "validate", "report", "mock-server"])
def test_every_flag_in_help_has_an_explanation_and_a_default(command):
    from pmock_batch.cli import cli

    for param in cli.commands[command].params:
        if not isinstance(param, click.Option) or param.name in ("help", "help_all"):
            continue
        assert param.help, param.opts
        own = not param.hidden or param.opts[-1] in ADVANCED  # not the mock's
        if param.is_flag and command in ("run", "validate") and own:  # "off unless given"
            assert "(default: " not in param.help, param.opts
        else:
            assert param.help.count("(default: ") == 1, param.opts


def test_the_readme_table_lists_every_flag_with_the_default_help_gives():
    """The README's tables and ``--help`` agree: every flag, and its default."""
    from pmock_batch.cli import cli

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = {
        "run": readme.partition("## Command line\n")[2].partition("\n## ")[0],
        "mock-server": readme.partition("### Its flags\n")[2].partition("\n#")[0],
    }
    for command, section in sections.items():
        rows = [line for line in section.splitlines() if line.startswith("| `-")]
        for param in cli.commands[command].params:
            if not isinstance(param, click.Option) or param.name in ("help", "help_all"):
                continue
            if param.hidden and param.opts[-1] not in ADVANCED:  # the mock's, listed below
                continue
            name = param.opts[-1]
            [row] = [r for r in rows if re.search(rf"`{re.escape(name)}[` ]", r.split("|")[1])] or [
                name
            ]
            said = re.search(r"\(default: (.*)\)$", param.help or "")
            default = said.group(1) if said else "off"
            assert default.strip("$") in row.replace("`", ""), (name, default, row)


@pytest.mark.parametrize("prefix", ["mock-", ""])
def test_limiter_flags_reach_the_mock_options(prefix):
    """``--mock-limiter``/``--mock-burst`` with --mock; ``--limiter``/``--burst`` on mock-server."""
    from pmock_batch.mock.command import mock_flags, mock_options
    from pmock_batch.mock.ratelimit import LIMITER_KINDS

    @click.command()
    @mock_flags(prefix=prefix)
    def command(**values):
        return mock_options(values)

    limiter = next(p for p in command.params if p.name == "mock_limiter")
    assert tuple(limiter.type.choices) == LIMITER_KINDS
    flags = [f"--{prefix}rpm", "1200", f"--{prefix}limiter", "bucket", f"--{prefix}burst", "120"]
    options = command.main(flags, standalone_mode=False)
    assert (options.rpm, options.limiter, options.burst) == (1200, "bucket", 120)
    default = command.main([f"--{prefix}rpm", "1200"], standalone_mode=False)
    assert (default.limiter, default.burst) == ("window", None)


async def test_bad_limiter_flags_exit_2(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    leaky = await run_cli([str(jobs), "--mock", "--mock-limiter", "leaky"], capsys)
    assert leaky.code == 2 and "'leaky' is not one of 'window', 'bucket'" in leaky.err
    burst = await run_cli([str(jobs), "--mock", "--mock-rpm", "60", "--mock-burst", "5"], capsys)
    assert burst.code == 2
    assert "burst applies to the bucket limiter only" in burst.err
    assert "Traceback" not in burst.err


def test_a_closed_pipe_on_stdout_exits_quietly(tmp_path):
    """`pmock-batch JOBS --dry-run | head`: no BrokenPipeError traceback, exit 0."""
    lines = [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(60)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmock_batch", str(jobs), "--mock", "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("key", ["sk-abc\r\n", "sk-abc def", "sk-\x1b[2Jabc", "sk-ключ"])
async def test_a_key_no_header_can_carry_stops_at_start_up(tmp_path, capsys, monkeypatch, key):
    monkeypatch.setenv("PMOCK_API_KEY", key)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    result = await run_cli([str(jobs), "--base-url", "http://127.0.0.1:9/v1"], capsys)
    assert result.code == 2
    assert "the API key in PMOCK_API_KEY contains whitespace, a control character" in result.err
    assert "abc" not in result.err + result.out and "ключ" not in result.err
    assert not (tmp_path / "out").exists()


async def test_one_damaged_record_does_not_stop_the_report(tmp_path, capsys):
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}]
    )
    assert (await run_cli([str(jobs), "--mock", "--out", str(out)], capsys)).code == 0
    records = read_manifest(out)
    del records[0]["files"][0]["width"]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "report.html").unlink()
    result = await run_cli(["report", str(out)], capsys)
    assert result.code == 0, result.err
    assert "manifest.jsonl:1: skipped a damaged record in the report: files.0.width: required" in (
        result.err
    )
    assert result.err.count("skipped a damaged record") == 1
    html = (out / "report.html").read_text()
    assert 'data-id="b"' in html and 'data-id="a"' not in html
    rerun = await run_cli([str(jobs), "--mock", "--out", str(out)], capsys)
    assert "skipped a damaged record" in rerun.err
    assert (out / "report.html").stat().st_mtime >= (out / "manifest.jsonl").stat().st_mtime


# -- the Click layer: commands, the default command, errors and exit codes -------------------------


async def test_a_mistyped_option_gets_did_you_mean_and_exit_2(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    result = await run_cli([str(jobs), "--mock", "--concurrenzy", "3"], capsys)
    assert result.code == 2
    assert result.err.splitlines() == [
        "pmock-batch: error: No such option '--concurrenzy'. Did you mean '--concurrency'?",
        "Try 'pmock-batch run --help' for help.",
    ]
    assert result.out == ""


async def test_a_mistyped_command_gets_did_you_mean_and_exit_2(tmp_path, capsys):
    result = await run_cli(["reprot", str(tmp_path)], capsys)
    assert result.code == 2
    assert "pmock-batch: error: no such command or file: 'reprot'. Did you mean 'report'?" in (
        result.err
    )


@pytest.mark.parametrize("explicit", [False, True])
async def test_run_is_the_default_command(tmp_path, capsys, explicit):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    argv = ["run"] * explicit + [str(jobs), "--mock", "--out", str(tmp_path / "o")]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    assert open_image(tmp_path / "o" / "a.png").size == (1024, 1024)


@pytest.mark.parametrize("name", ["report", "validate", "run", "mock-server"])
async def test_a_job_file_named_like_a_command_runs_as_dot_slash_name(tmp_path, capsys, name):
    write_jobs(tmp_path / name, [{"id": "a", "prompt": "a cat"}])  # the cwd is tmp_path
    result = await run_cli([f"./{name}", "--mock", "--dry-run"], capsys)
    assert result.code == 0, result.err
    assert f"Plan for {name}: 1 job(s), 1 image(s), into out/{name}/" in result.out


async def test_no_arguments_print_the_commands_and_exit_2(capsys):
    result = await run_cli([], capsys)
    assert result.code == 2
    assert result.err.startswith("Usage: pmock-batch [OPTIONS] COMMAND [ARGS]...")
    commands = re.findall(r"^  ([a-z-]+) ", result.err.partition("Commands:")[2], re.M)
    assert commands == ["run", "validate", "report", "batches", "merge", "mock-server"]
    assert "./report" in result.err


async def test_the_mock_flags_are_hidden_in_the_main_help_and_listed_by_mock_server(capsys):
    from pmock_batch.mock.command import MOCK_FLAGS

    main_help = await run_cli(["--help"], capsys)
    mock_help = await run_cli(["mock-server", "--help"], capsys)
    assert main_help.code == mock_help.code == 0
    assert "--mock-" not in main_help.out
    words = " ".join(main_help.out.split())  # as wrapped at any width
    assert "pmock-batch mock-server --help" in words and "mock- prefix" in words
    assert len(main_help.out.splitlines()) <= 56  # issue 11: one screen, about 50 lines
    for name in MOCK_FLAGS:
        assert f"  --{name} " in mock_help.out, name
    assert not re.search(r"^ +--mock-", mock_help.out, re.M)
    assert "--mock-latency 0.2" in mock_help.out  # the pointer back to the main command


async def test_the_mock_flags_are_still_accepted_with_mock(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    argv = [str(jobs), "--mock", "--mock-latency", "0", "--mock-seed", "7", "--out", "o"]
    result = await run_cli([*argv, "--mock-script", "a cat=500,ok"], capsys)
    assert result.code == 0, result.err
    assert read_manifest(tmp_path / "o")[0]["attempts"] == 2


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (click.UsageError("bad"), 2, "pmock-batch: error: bad"),
        (click.BadParameter("no", param_hint="'--x'"), 2, "pmock-batch: error: Invalid value"),
        (click.ClickException("odd"), 2, "pmock-batch: error: odd"),
        (UsageError("no API key"), 2, "pmock-batch: error: no API key"),
        (OutputPathError("a link"), 2, "pmock-batch: error: a link"),
        (LockedError("another run"), 4, "pmock-batch: error: another run"),
        (AbortedError("disk"), 3, "pmock-batch: error: run aborted: disk"),
        (PermissionError(13, "Permission denied"), 3, "pmock-batch: error: [Errno 13]"),
        (BrokenPipeError(), 0, ""),
        (KeyboardInterrupt(), 130, "pmock-batch: error: interrupted"),
        (click.Abort(), 130, "pmock-batch: error: interrupted"),
    ],
)
def test_one_table_decides_every_exit_code(capsys, monkeypatch, exc, code, message):
    from pmock_batch import cli

    monkeypatch.setattr(cli.console, "quiet_stdout", lambda: None)
    assert cli.fail(exc) == code
    err = capsys.readouterr().err
    assert err.startswith(message) if message else err == ""
    with pytest.raises(ZeroDivisionError):  # a bug is not a usage error: its traceback shows
        cli.fail(ZeroDivisionError())


# -- messages that say what to do (issue 11 §3) -----------------------------------------------


async def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    (tmp_path / "taken").write_text("x")
    result = await run_cli([str(jobs), "--mock", "--out", str(tmp_path / "taken")], capsys)
    assert result.code == 2
    assert result.err.strip() == (
        f"pmock-batch: error: OUT is a file, not a directory: {tmp_path / 'taken'}; "
        "give --out a folder"
    )


async def test_a_directory_as_the_job_file_says_so(tmp_path, capsys):
    result = await run_cli([str(tmp_path), "--mock"], capsys)
    assert result.code == 2
    assert result.err.strip() == (
        f"pmock-batch: error: {tmp_path} is a directory; give the JSONL job file"
    )


HINT = (
    "hint: each line must be one JSON value: an object, or a quoted prompt string "
    '(pretty-printed JSON spans lines; a bare prompt needs "quotes")'
)


@pytest.mark.parametrize(
    "text",
    ['{\n  "id": "a",\n  "prompt": "a cat"\n}\n', "a cat on a mat\n"],
    ids=["pretty-printed", "bare prompt"],
)
async def test_a_file_that_is_not_jsonl_gets_one_hint(tmp_path, capsys, text):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(text)
    result = await run_cli(["validate", str(jobs)], capsys)
    assert result.code == 2
    assert result.err.count(HINT) == 1


async def test_a_busy_port_for_the_mock_server_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = await asyncio.wait_for(run_cli(["mock-server", "--port", str(port)], capsys), 30)
    assert result.code == 2
    assert result.err.strip() == (
        f"pmock-batch: error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "pick another --port"
    )


async def test_a_rerun_with_nothing_to_do_says_so_and_an_empty_file_too(tmp_path, capsys):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(3)]
    )
    argv = [str(jobs), "--mock", "--out", str(tmp_path / "o")]
    assert (await run_cli(argv, capsys)).code == 0
    again = await run_cli(argv, capsys)
    assert again.code == 0
    assert "nothing to do: all 3 jobs are done (use --force to regenerate)" in again.err
    jobs.write_text("# nothing yet\n")
    empty = await run_cli(argv, capsys)
    assert (empty.code, empty.err.strip()) == (0, f"no jobs in {jobs}: nothing to do")


async def test_a_dry_run_needs_no_key(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    result = await run_cli([str(jobs), "--dry-run"], capsys)  # no PMOCK_API_KEY, no --mock
    assert result.code == 0, result.err
    assert "Nothing was sent (--dry-run)." in result.out


@pytest.mark.parametrize("flag", ["--timeout", "--connect-timeout", "--grace"])
@pytest.mark.parametrize("value", ["inf", "nan", "-5"])
async def test_numbers_that_would_break_a_run_are_usage_errors(tmp_path, capsys, flag, value):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    result = await run_cli([str(jobs), "--mock", flag, value], capsys)
    assert result.code == 2, (flag, value, result.err)
    assert "Traceback" not in result.err


async def test_help_shows_the_common_flags_and_help_all_every_flag(capsys):
    """``--help`` leaves out the advanced flags, ``--help-all`` shows them; the README names
    the same ones."""
    short = await run_cli(["--help"], capsys)
    whole = await run_cli(["--help-all"], capsys)
    again = await run_cli(["run", "--help"], capsys)
    assert short.code == whole.code == again.code == 0
    assert again.out == short.out  # --help-all left the command as it was
    assert "Every flag: --help-all" in " ".join(short.out.split())
    for name in ADVANCED:
        assert f" {name} " not in short.out, name
        assert f" {name} " in whole.out, name
    for name in ("--concurrency", "--rpm", "--out", "--batch-api", "--shard", "--dry-run"):
        assert f" {name} " in short.out and f" {name} " in whole.out, name
    assert "--mock-" not in whole.out  # the mock's flags: mock-server --help
    validate = await run_cli(["validate", "--help-all"], capsys)
    assert validate.code == 0 and " --background " in validate.out
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    said = readme.partition("The flags only `--help-all` shows: ")[2].partition(".\n")[0]
    assert set(re.findall(r"`(--[a-z-]+)`", said)) == ADVANCED


async def test_validate_stream_warns_about_models_that_do_not_stream(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x", "model": "dall-e-3"}])
    plain = await run_cli(["validate", str(jobs)], capsys)
    streamed = await run_cli(["validate", str(jobs), "--stream"], capsys)
    assert plain.code == streamed.code == 0
    assert "does not stream" not in plain.err
    assert "jobs.jsonl:1: dall-e-3 does not stream" in streamed.err


async def test_the_suite_never_resolves_a_real_api_host(tmp_path, capsys, monkeypatch, cli_sleep):
    """conftest's guard: a run that would reach the real endpoint (no --base-url) fails
    to resolve its name, before any packet leaves the machine."""
    monkeypatch.setenv("PMOCK_API_KEY", "sk-never-sent")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x"}])
    result = await run_cli([str(jobs), "--out", str(tmp_path / "o")], capsys)
    assert result.code == 3, result.err
    assert "tests reach loopback only" in result.err


async def test_json_says_why_when_the_run_never_started(tmp_path, capsys):
    """A script that reads --json's stdout always gets one object: on exit 2 and 4 too."""
    bad = write_jobs(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "x", "quailty": "high"}])
    invalid = await run_cli([str(bad), "--mock", "--json"], capsys)
    assert invalid.code == 2
    assert json.loads(invalid.out) == {
        "schema": "pmock-batch/summary/v1",
        "exit_code": 2,
        "error": f"{bad}: 1 invalid line(s)",
    }
    flag = await run_cli([str(bad), "--mock", "--json", "--bogus"], capsys)
    assert flag.code == 2 and json.loads(flag.out)["error"].startswith("No such option '--bogus'")
    from pmock_batch.lock import run_lock

    good = write_jobs(tmp_path / "good.jsonl", [{"id": "a", "prompt": "x"}])
    out = tmp_path / "out"
    with run_lock(out):
        locked = await run_cli([str(good), "--mock", "--json", "--out", str(out)], capsys)
    assert locked.code == 4 and json.loads(locked.out)["exit_code"] == 4
