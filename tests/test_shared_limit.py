"""Four shards under one organisation's rate limit (issue 14, section 1), in virtual time.

The limit belongs to the organisation, so shards that each paced at the whole
limit they learn from the headers would send four times too much. Here four
shard runs (:func:`~pmock_batch.run.run_batch` with ``Shard(k, 4)``, each with
its own pacer, pool and manifest, as four processes would have) share one
limited mock over loopback HTTP. Everything runs on one
:class:`~virtualtime.VirtualLoop`: the mock's limiter, the latency, the pacers
and the retries keep to its clock, so a 30 s run takes a few seconds and gives
the same answer every time.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import write_jobs
from virtualtime import run_virtual

from pmock_batch import pacing
from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions, MockServer
from pmock_batch.mock.ratelimit import LimiterKind
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import Run, run_batch
from pmock_batch.shards import Shard

RPM = 1200  # the organisation's limit: 20 a second
SHARDS = 4
JOBS = 400  # 100 a shard: 20 s at the limit
CONCURRENCY = 4  # per shard
LATENCY = 0.2  # seconds the mock takes per image
IO_GRACE = 0.0001


@dataclass
class Outcome:
    ok: int  # jobs recorded ok, over all shards
    answers: int  # generation requests the mock answered
    refused: int  # of them 429
    admitted: int  # of them 200
    elapsed: float  # virtual seconds
    shares: list[float]  # each shard's share of the limit at the end


def _run_shards(tmp_path: Path, limiter: LimiterKind) -> Outcome:
    tmp_path.mkdir(exist_ok=True)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"prompt {i}" for i in range(JOBS)])
    out = tmp_path / "out"

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        server = MockServer(
            MockOptions(rpm=RPM, limiter=limiter, latency=LATENCY, image_px=8), clock=loop.time
        )
        await server.start()
        runs: list[Run] = []
        try:
            started = loop.time()
            summaries = await asyncio.gather(
                *(
                    run_batch(
                        RunConfig(
                            out_dir=out,
                            base_url=server.base_url,
                            api_key="sk-shared-limit",
                            concurrency=CONCURRENCY,
                            shard=Shard(k, SHARDS),
                        ),
                        iter_jobs(jobs, scan(jobs)),
                        policy=RetryPolicy(rng=random.Random(k), sleep=asyncio.sleep),
                        on_start=runs.append,
                    )
                    for k in range(SHARDS)
                )
            )
            elapsed = loop.time() - started
        finally:
            await server.stop()
        stats = server.stats
        return Outcome(
            ok=sum(s.ok for s in summaries),
            answers=stats.requests,
            refused=stats.outcomes.get("429", 0),
            admitted=stats.successes.total(),
            elapsed=elapsed,
            shares=[run._pacer.share.value for run in runs],
        )

    return run_virtual(main)


@pytest.mark.parametrize("limiter", ["window", "bucket"])
def test_four_shards_share_one_limit_with_few_429s(tmp_path: Path, limiter: LimiterKind) -> None:
    outcome = _run_shards(tmp_path, limiter)
    assert outcome.ok == JOBS and outcome.admitted == JOBS  # every job once, none failed
    assert outcome.refused < 0.1 * outcome.answers  # the bound
    assert outcome.elapsed <= 1.6 * JOBS / (RPM / 60)  # near the limit, not far under it
    assert sum(outcome.shares) <= 1.6  # each paces at its share, not at the whole limit
    out = tmp_path / "out"
    records = [
        json.loads(line)
        for k in range(SHARDS)
        for line in (out / Shard(k, SHARDS).manifest_name).read_text().splitlines()
    ]
    ids = [r["id"] for r in records if r["status"] == "ok"]
    assert len(ids) == len(set(ids)) == JOBS


def test_without_a_share_four_shards_run_into_the_limit(tmp_path: Path, monkeypatch) -> None:
    """The control: shards that each pace at the whole limit they learn meet 429 after 429."""

    def whole(share: pacing.Share, now: float, value: float | None = None) -> None:
        share._since = share._grown_at = now  # learned; the share stays whole

    monkeypatch.setattr(pacing.Share, "restart", whole)
    monkeypatch.setattr(pacing.Share, "refused", lambda *args: False)
    outcome = _run_shards(tmp_path, "window")
    assert outcome.refused > 0.3 * outcome.answers
    assert outcome.ok < JOBS  # some jobs ran out of attempts


def test_the_run_is_the_same_every_time(tmp_path: Path) -> None:
    """Virtual time and loopback HTTP together still give one answer (see virtualtime.py)."""
    first = _run_shards(tmp_path / "a", "bucket")
    assert _run_shards(tmp_path / "b", "bucket") == first
