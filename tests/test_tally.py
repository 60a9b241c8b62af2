"""The one reducer: the CLI's --json, the summary and report.html count the same run alike."""

from __future__ import annotations

import json
import re

from helpers import read_manifest, run_cli, write_jobs

from pmock_batch.mock import MockOptions
from pmock_batch.models import ErrorRecord, FileRecord, JobRecord
from pmock_batch.tally import summarize

KEY = "sk-tally-test-key-0123456789"


def _file(name: str) -> FileRecord:
    return FileRecord(path=name, sha256="0" * 64, bytes=1, format="png", width=1, height=1)


def test_the_rules_of_counting() -> None:
    summary = summarize(
        [
            JobRecord(id="a", line=1, status="ok", files=[_file("a.png")], attempts=2, retries=1),
            JobRecord(
                id="v",
                line=2,
                status="failed",
                files=[_file("v-1.png"), _file("v-2.png")],  # saved before the third failed
                attempts=3,
                error=ErrorRecord(kind="bad_request", status=400, message="no"),
            ),
            JobRecord(
                id="n", line=3, status="not_run", error=ErrorRecord(kind="not_run", message="x")
            ),
            JobRecord(
                id=None, line=4, status="invalid", error=ErrorRecord(kind="invalid", message="y")
            ),
        ]
    )
    assert (summary.jobs, summary.ok, summary.failed, summary.not_run, summary.invalid) == (
        4,
        1,
        1,
        1,
        1,
    )
    assert summary.images == 3  # the partly failed job's two saved images count
    assert (summary.attempts, summary.retries) == (5, 1)
    assert dict(summary.failed_by_kind) == {"bad_request": 1, "invalid": 1}  # not_run is not
    assert summary.failures == [("v", "no"), ("line 4", "y")]


async def test_json_summary_and_report_count_a_mixed_batch_alike(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(
        MockOptions(
            moderation_words=("forbidden",),
            script={"three cats": ["ok", "ok", "400"], "stop here": ["401"]},
        )
    )
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "out"
    jobs = tmp_path / "jobs.jsonl"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--concurrency", "1"]
    write_jobs(jobs, [{"id": "done", "prompt": "already done"}])
    assert (await run_cli(argv, capsys)).code == 0
    write_jobs(
        jobs,
        [
            {"id": "done", "prompt": "already done"},  # skipped
            {"id": "ok", "prompt": "a dog"},
            {"id": "mod", "prompt": "a forbidden thing"},  # moderation
            {"id": "multi", "prompt": "three cats", "n": 3},  # one image of three fails
            {"id": "key", "prompt": "stop here"},  # 401: aborts the run
            {"id": "later", "prompt": "never sent"},  # not run
        ],
    )
    result = await run_cli([*argv, "--json"], capsys)
    assert result.code == 3, result.err
    summary = json.loads(result.out)
    html = (out / "report.html").read_text(encoding="utf-8")
    embedded = re.search(r'<script type="application/json" id="run-counts">(.*?)</script>', html)
    assert embedded is not None
    counts = json.loads(embedded.group(1))
    assert counts == {key: summary[key] for key in counts}
    jobs = summary["jobs"]
    assert (jobs["total"], jobs["ok"], jobs["skipped"], jobs["invalid"]) == (6, 1, 1, 0)
    # multi failed by its 400, or was stopped by the abort mid-way (not run, then).
    assert jobs["failed"] + jobs["not_run"] == 4 and jobs["failed"] >= 2
    kinds = summary["failed_by_kind"]
    assert kinds["auth"] == kinds["moderation"] == 1 and sum(kinds.values()) == jobs["failed"]
    this_run = [r for r in read_manifest(out) if r["id"] != "done"]
    saved = sum(len(r["files"]) for r in this_run)
    assert summary["images"] == saved >= 2  # ok's, and what multi saved before it stopped
    # The page's own header counts OUT as it is, by the same rules.
    records = read_manifest(out)
    ok = sum(r["status"] == "ok" for r in records)
    assert re.search(rf'data-stat="ok".*?<span class="value">{ok}</span>', html) or (
        f'>{ok}</span><span class="label">ok<' in html
    )
