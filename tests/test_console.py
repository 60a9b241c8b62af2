"""Progress and logs: the TTY bar, plain lines for cron and CI, JSON logs, and the summaries."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_manifest, run_cli, write_jobs

from pmock_batch.config import RunConfig
from pmock_batch.console import SUMMARY_SCHEMA, Reporter, make_console, render_summary
from pmock_batch.console.progress import STATE_WIDTH
from pmock_batch.mock import MockOptions
from pmock_batch.models import ErrorRecord, JobRecord
from pmock_batch.run import RunStatus
from pmock_batch.tally import Summary

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-progress-test-SECRET-1234567890"
# C0 controls other than newline and tab, DEL and C1 controls: what a cron mail must not hold.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    """Every test here talks to a mock with this key (conftest isolates the rest)."""
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


def _mixed_jobs(path: Path) -> Path:
    lines: list[object] = [{"id": f"ok{i}", "prompt": f"fine {i}"} for i in range(6)]
    lines += [{"id": "bad", "prompt": "a forbidden thing"}, {"id": "flaky", "prompt": "flaky"}]
    return write_jobs(path, lines)


async def _server(make_mock):
    return await make_mock(
        MockOptions(
            moderation_words=("forbidden",), script={"flaky": ["500:0", "ok"]}
        )  # 500 with Retry-After 0: a retry, no real backoff
    )


async def test_non_tty_output_is_plain_lines_with_no_control_characters(
    tmp_path, capsys, make_mock
):
    server = await _server(make_mock)
    jobs = _mixed_jobs(tmp_path / "jobs.jsonl")
    argv = [
        str(jobs),
        "--base-url",
        server.base_url,
        "--out",
        str(tmp_path / "o"),
        "--max-attempts",
        "2",
    ]
    result = await run_cli(argv, capsys)
    assert result.code == 1
    assert not CONTROL.search(result.err), repr(result.err)
    lines = result.err.splitlines()
    progress = [line for line in lines if " progress: " in line]
    assert progress and re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ progress: \d+/8 done", progress[0]
    )
    failed = [line for line in lines if " FAILED " in line]
    assert len(failed) == 1
    assert "FAILED bad: Your request was rejected by the safety system" in failed[0]
    assert "| failed                 | 1 (moderation 1)" in result.err
    assert "| attempts               | 9 (1 retry, 0 were 429s)" in result.err
    assert "Failures, grouped by kind and message:" in result.err
    assert "  1 × moderation: Your request was rejected by the safety system." in result.err
    assert KEY not in result.err


async def test_quiet_shows_errors_and_the_summary_only(tmp_path, capsys, make_mock):
    server = await _server(make_mock)
    jobs = _mixed_jobs(tmp_path / "jobs.jsonl")
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "o"), "-q"]
    result = await run_cli(argv, capsys)
    assert result.code == 1
    assert "progress:" not in result.err
    assert "FAILED bad:" in result.err
    assert "pmock-batch summary" in result.err


async def test_verbose_logs_every_attempt_with_status_latency_and_wait(tmp_path, capsys, make_mock):
    server = await _server(make_mock)
    jobs = _mixed_jobs(tmp_path / "jobs.jsonl")
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "o"), "-v"]
    result = await run_cli(argv, capsys)
    attempts = re.findall(r"(\S+): attempt (\d+): HTTP (\d+) in \d+\.\d\ds", result.err)
    assert ("flaky", "1", "500") in attempts and ("flaky", "2", "200") in attempts
    assert ("bad", "1", "400") in attempts
    assert len(attempts) == server.stats.requests == 9
    assert re.search(r"flaky: attempt 1 failed \(.*500.*\); retrying in \d+\.\ds", result.err)
    assert KEY not in result.err and KEY[-10:] not in result.err


async def test_log_format_json_gives_one_object_per_line(tmp_path, capsys, make_mock):
    server = await _server(make_mock)
    jobs = _mixed_jobs(tmp_path / "jobs.jsonl")
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "o"), "-v"]
    result = await run_cli([*argv, "--log-format", "json", "--json"], capsys)
    events = [json.loads(line) for line in result.err.splitlines()]  # every line is JSON
    kinds = {e["event"] for e in events}
    assert {"attempt", "retry", "job_failed", "progress", "summary"} <= kinds
    assert "log" not in {e["event"] for e in events if e["level"] in ("warning", "error")}
    [summary] = [e for e in events if e["event"] == "summary"]
    fields = {k: v for k, v in summary.items() if k not in ("ts", "level", "event", "message")}
    stdout = json.loads(result.out)
    assert fields == {**stdout, "elapsed_s": fields["elapsed_s"]}  # the same as --json
    assert fields["failure_groups"][0]["ids"] == ["bad"]
    failed = next(e for e in events if e["event"] == "job_failed")
    assert (
        failed["job_id"] == "bad" and failed["kind"] == "moderation" and failed["level"] == "error"
    )
    attempt = next(e for e in events if e["event"] == "attempt")
    assert {"ts", "job_id", "attempt", "http_status", "latency_s"} <= attempt.keys()
    assert not CONTROL.search(result.err)


async def test_json_summary_on_stdout_follows_the_schema(tmp_path, capsys, make_mock):
    server = await _server(make_mock)
    jobs = _mixed_jobs(tmp_path / "jobs.jsonl")
    out = tmp_path / "o"
    result = await run_cli(
        [str(jobs), "--base-url", server.base_url, "--out", str(out), "--json"], capsys
    )
    data = json.loads(result.out)
    assert data["schema"] == SUMMARY_SCHEMA
    assert data["exit_code"] == result.code == 1
    assert data["jobs"] == {
        "total": 8,
        "ok": 7,
        "failed": 1,
        "invalid": 0,
        "not_run": 0,
        "pending": 0,
        "skipped": 0,
    }
    assert data["failed_by_kind"] == {"moderation": 1}
    assert data["attempts"] == 9 and data["retries"] == 1 and data["rate_limited"] == 0
    assert data["images"] == 7 and data["ambiguous_retries"] == 0
    assert data["billed_retries"] == 0 and data["warnings"] == 0
    assert isinstance(data["elapsed_s"], float) and data["images_per_minute"] > 0
    assert data["usage"]["total_tokens"] > 0
    assert data["out_dir"] == str(out) and data["manifest"] == str(out / "manifest.jsonl")
    assert data["aborted"] is None and data["interrupted"] is False
    assert [f["id"] for f in data["failures"]] == ["bad"]
    [group] = data["failure_groups"]
    assert (group["kind"], group["count"], group["ids"]) == ("moderation", 1, ["bad"])
    assert group["message"].startswith("Your request was rejected by the safety system.")
    expected_keys = {
        "schema", "exit_code", "jobs", "failed_by_kind", "images", "attempts", "retries",
        "ambiguous_retries", "billed_retries", "warnings", "rate_limited", "elapsed_s",
        "images_per_minute", "usage", "out_dir", "manifest", "report", "aborted", "interrupted",
        "budget", "shard",
        "failures", "failure_groups", "cost_usd", "cost_unpriced",
    }  # fmt: skip
    assert set(data) == expected_keys
    again = await run_cli(
        [str(jobs), "--base-url", server.base_url, "--out", str(out), "--json"], capsys
    )
    assert json.loads(again.out)["jobs"]["skipped"] == 7


class FakeRun:
    """A run the reporter can look at: the one tally, and what the pool is doing."""

    def __init__(self) -> None:
        self.summary = Summary()
        self.retrying = 0
        self.in_flight = 0
        self.held_for = 0.0

    def status(self) -> RunStatus:
        return RunStatus(
            self.summary,
            in_flight=self.in_flight,
            retrying=self.retrying,
            held_for=self.held_for,
            stopping=False,
        )

    def finish(self, reporter: Reporter, record: JobRecord) -> None:
        """What the ledger does: count the record, then tell the observer."""
        self.summary.add(record)
        reporter.job_done(record)


def _bar(width: int, total: int = 2000) -> tuple[Reporter, FakeRun]:
    console = make_console(io.StringIO(), tty=True)
    console.width = width
    now = [0.0]
    reporter = Reporter(console, total=total, mode="bar", clock=lambda: now[0])
    run = FakeRun()
    reporter.attach(run)  # type: ignore[arg-type]
    for i in range(21):
        run.summary.add(JobRecord(id=f"j{i}", line=i, status="ok"))
    now[0] = 42.0
    return reporter, run


def _lines_of(reporter: Reporter) -> list[str]:
    console = reporter.console
    with console.capture() as capture:
        console.print(reporter.frame())
    return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in capture.get().splitlines()]


@pytest.mark.parametrize("width", [60, 80, 120])
@pytest.mark.parametrize("busy", ["generating", "retrying", "paused", "backing off"])
def test_the_count_percentage_and_eta_always_show(width: int, busy: str) -> None:
    reporter, run = _bar(width)
    run.in_flight = 0 if busy in ("paused", "backing off") else 7
    run.retrying = 3 if busy != "generating" else 0
    run.held_for = 42.0 if busy in ("retrying", "paused") else 0.0
    first, second = _lines_of(reporter)
    assert len(first) <= width
    assert "21/2000" in first and " 1% " in first and re.search(r"ETA 1h0\dm", first)
    assert first.startswith(f"{reporter.state(run.status()):<11}")
    assert second.startswith("ok 21 · failed 0 · ")


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_bar_does_not_jump_when_the_state_changes(width: int) -> None:
    reporter, run = _bar(width)
    plain = _lines_of(reporter)[0]
    run.in_flight, run.retrying, run.held_for = 0, 3, 5.0
    paused = _lines_of(reporter)[0]
    assert reporter.state(run.status()) == "paused 5s"
    assert plain.index("21/2000") == paused.index("21/2000")
    assert len(plain) == len(paused)


def test_paused_and_backing_off_only_when_nothing_is_in_flight() -> None:
    reporter, run = _bar(80)
    run.retrying, run.in_flight = 3, 5
    assert reporter.state(run.status()) == "generating"  # the others go on: not stalled
    assert "3 retrying" in reporter.counts(run.status())
    run.held_for = 10.0
    assert reporter.state(run.status()) == "generating"
    run.in_flight = 0
    assert reporter.state(run.status()) == "paused 10s"
    run.held_for = 0.0
    assert reporter.state(run.status()) == "backing off"


def test_a_re_run_passing_over_done_jobs_is_skipping_not_generating() -> None:
    console = make_console(io.StringIO(), tty=True)
    reporter = Reporter(console, total=10, mode="bar", clock=lambda: 1.0)
    summary = Summary()
    summary.skipped = 4
    status = RunStatus(summary, in_flight=0, retrying=0, held_for=0.0, stopping=False)
    assert reporter.state(status) == "skipping"
    assert reporter.state(dataclasses.replace(status, in_flight=1)) == "generating"
    summary.skipped = 10
    assert reporter.state(status) == "done"


def test_a_batch_api_run_is_in_batches_not_generating() -> None:
    reporter, run = _bar(80)
    status = dataclasses.replace(run.status(), batch_api=True)
    assert reporter.state(status) == "in batches"
    assert len("in batches") <= STATE_WIDTH
    assert reporter.state(dataclasses.replace(status, stopping=True)) == "stopping"


def test_reporter_bar_on_a_terminal_shows_counts_and_pause():
    buf = io.StringIO()
    console = make_console(buf, tty=True)
    console.width = 160
    assert console.is_terminal
    now = [0.0]
    reporter = Reporter(console, total=4, mode="bar", clock=lambda: now[0])
    run = FakeRun()
    reporter.attach(run)  # type: ignore[arg-type]
    reporter.start()
    now[0] = 30.0
    run.finish(reporter, JobRecord(id="a", line=1, status="ok", files=[]))
    run.retrying = 1
    reporter.retrying("b", 1, 2.0, "HTTP 500")
    run.finish(
        reporter,
        JobRecord(id="c", line=3, status="failed", error=ErrorRecord(kind="server", message="x")),
    )
    status = run.status()
    assert reporter.state(status) == "backing off"
    assert reporter.counts(status).startswith("ok 1 · failed 1 · 1 retrying · skipped 0")
    assert reporter.counts(status).endswith("images/min")
    run.held_for = 3.0
    assert reporter.state(run.status()) == "paused 3s"
    reporter.stop()
    assert "\x1b[" in buf.getvalue()  # a live display: cursor control
    assert "2/4" in buf.getvalue()


def test_reporter_lines_every_5_percent_or_10_seconds(caplog):
    now = [0.0]
    console = make_console(io.StringIO(), tty=False)
    reporter = Reporter(console, total=1000, mode="lines", clock=lambda: now[0])
    run = FakeRun()
    reporter.attach(run)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="pmock_batch"):
        for i in range(120):
            run.finish(reporter, JobRecord(id=f"j{i}", line=i, status="ok"))
        count_lines = [r for r in caplog.records if r.event == "progress"]
        assert [r.done for r in count_lines] == [50, 100]  # every 5 % of 1,000
        now[0] = 9.9
        reporter.tick()
        now[0] = 10.5
        reporter.tick()
        timed = [r for r in caplog.records if r.event == "progress"]
        assert [r.done for r in timed] == [50, 100, 120]  # and after 10 s of no line
    assert "ETA" in timed[-1].getMessage()


def test_summary_groups_failures_by_kind_and_message(tmp_path):
    summary = Summary()
    for i in range(25):
        error = ErrorRecord(kind="server", message="boom: the engine is overloaded")
        summary.add(JobRecord(id=f"j{i}", line=i, status="failed", error=error))
    for i in range(25):  # 25 different messages: 19 more groups, then a count
        error = ErrorRecord(kind="bad_request", message=f"odd {i}")
        summary.add(JobRecord(id=f"b{i}", line=100 + i, status="failed", error=error))
    buf = io.StringIO()
    render_summary(summary, RunConfig(out_dir=tmp_path), make_console(buf, tty=False))
    text = buf.getvalue()
    assert "  25 × server: boom: the engine is overloaded (j0, j1, j2, j3, j4 and 20 more)" in text
    assert text.count("1 × bad_request: odd") == 19
    assert "  ... and 6 more failure(s) (see the manifest)" in text
    assert not CONTROL.search(text)


def test_failures_wrap_at_word_boundaries_on_a_terminal(tmp_path):
    summary = Summary()
    message = "Your request was rejected by the safety system because of several reasons"
    for i in range(8):
        error = ErrorRecord(kind="moderation", message=message)
        summary.add(JobRecord(id=f"m{i}", line=i, status="failed", error=error))
    console = make_console(io.StringIO(), tty=True)
    console.width = 60
    with console.capture() as capture:
        render_summary(summary, RunConfig(out_dir=tmp_path), console)
    lines = re.sub(r"\x1b\[[0-9;]*m", "", capture.get()).splitlines()
    start = next(i for i, line in enumerate(lines) if "8 × moderation" in line)
    words = " ".join(line.strip() for line in lines[start : start + 4]).split()
    assert "rejected" in words and "safety" in words and "several" in words  # no word cut


def test_tty_run_in_a_real_pty_draws_a_bar_and_no_color_is_honoured(tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(6)]
    )

    def run(extra_env: dict[str, str]) -> str:
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PMOCK_")}
        env.update(
            {"PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "120"}, **extra_env
        )
        env.pop("NO_COLOR", None) if "NO_COLOR" not in extra_env else None
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pmock_batch",
                str(jobs),
                "--mock",
                "--out",
                str(tmp_path / "o"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=env,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=60)
        os.close(master)
        assert proc.returncode == 0
        return b"".join(chunks).decode("utf-8", "replace")

    colored = run({"FORCE_COLOR": "1"})
    assert "\x1b[" in colored  # the live bar moves the cursor
    assert "╭" in colored  # the rounded summary table
    assert "progress:" not in colored  # no plain progress lines on a TTY
    plain = run({"NO_COLOR": "1"})
    assert not re.search(r"\x1b\[[0-9;]*3[0-9](;[0-9]+)*m", plain)  # no foreground colors


def test_a_finished_run_says_done_not_generating(caplog):
    console = make_console(io.StringIO(), tty=False)
    reporter = Reporter(console, total=2, mode="lines", clock=lambda: 5.0)
    run = FakeRun()
    reporter.attach(run)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="pmock_batch"):
        run.finish(reporter, JobRecord(id="a", line=1, status="ok"))
        run.finish(reporter, JobRecord(id="b", line=2, status="ok"))
    last = [r for r in caplog.records if r.event == "progress"][-1].getMessage()
    assert last.startswith("progress: 2/2 done (100%)")
    assert last.endswith("images/min; done")


async def test_images_of_one_job_are_not_called_attempts(tmp_path, capsys, make_mock):
    server = await _server(make_mock)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "v", "prompt": "three robots", "n": 3}])
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "o"), "-v"]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    for image in (1, 2, 3):
        assert f"v (image {image} of 3): attempt 1: HTTP 200" in result.err
    assert "attempt 2" not in result.err and "attempt 3" not in result.err
    [record] = read_manifest(tmp_path / "o")
    assert (record["attempts"], record["retries"], len(record["files"])) == (3, 0, 3)


@pytest.mark.parametrize(
    "lines",
    [
        [{"id": "a", "prompt": ""}, "RAW:not json"],  # invalid lines and the hint
        [],  # no jobs
    ],
    ids=["invalid", "empty"],
)
async def test_json_log_mode_keeps_every_line_json_when_nothing_runs(tmp_path, capsys, lines):
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines) if lines else tmp_path / "jobs.jsonl"
    if not lines:
        jobs.write_text("")
    result = await run_cli([str(jobs), "--mock", "--log-format", "json"], capsys)
    events = [json.loads(line) for line in result.err.splitlines()]
    assert events, result.err
    if lines:
        assert result.code == 2
        assert {e["event"] for e in events} == {"invalid_line", "hint", "invalid_file"}
    else:
        assert (result.code, events[0]["event"]) == (0, "nothing_to_do")
    plain = await run_cli([str(jobs), "--mock"], capsys)  # the next command is plain again
    assert not plain.err.lstrip().startswith("{")


def test_a_warning_without_an_event_is_a_warning_event() -> None:
    from pmock_batch.console.logs import _JsonFormatter

    record = logging.LogRecord("pmock_batch", logging.WARNING, __file__, 1, "careful", None, None)
    assert json.loads(_JsonFormatter().format(record))["event"] == "warning"
    record.levelno, record.levelname = logging.INFO, "INFO"
    assert json.loads(_JsonFormatter().format(record))["event"] == "log"
