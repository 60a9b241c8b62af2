"""Four shards under one organisation's rate limit (issue 14, section 1), in virtual time.

The limit belongs to the organisation, so shards that each paced at the whole
limit they learn from the headers would send four times too much. Here four
shard runs (:func:`~pmock_batch.run.run_batch` with ``Shard(k, 4)``, each with
its own pacer, pool and manifest, as four processes would have) share one
limited mock over loopback HTTP. Everything runs on one
:class:`~virtualtime.VirtualLoop`: the mock's limiter, the latency, the pacers
and the retries keep to its clock, so a 30 s run takes a few seconds and gives
the same answer every time (checked by hand, also with the cores busy; should
the kernel ever deliver loopback data late, the bounds below leave room).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import write_jobs
from virtualtime import run_virtual

from pmock_batch import pacing, run
from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions, MockServer
from pmock_batch.mock.ratelimit import LimiterKind
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import Run, run_batch
from pmock_batch.shards import Shard

pytestmark = pytest.mark.skipif(
    sys.platform != "linux",
    reason="virtualtime.py relies on Linux delivering loopback data at once",
)

RPM = 1200  # the organisation's limit: 20 a second
SHARDS = 4
JOBS = 400  # 100 a shard: 20 s at the limit
IO_GRACE = 0.0001


@dataclass
class Outcome:
    ok: int  # jobs recorded ok, over all shards
    answers: int  # generation requests the mock answered
    refused: int  # of them 429
    admitted: int  # of them 200
    elapsed: float  # virtual seconds
    shares: list[float]  # each shard's share of the limit at the end


def _run_shards(
    tmp_path: Path, limiter: LimiterKind, *, concurrency: int = 4, latency: float = 0.2
) -> Outcome:
    """Four shard runs of ``concurrency`` each; the mock takes ``latency`` s an image."""
    tmp_path.mkdir(exist_ok=True)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"prompt {i}" for i in range(JOBS)])
    out = tmp_path / "out"

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        server = MockServer(
            MockOptions(rpm=RPM, limiter=limiter, latency=latency, image_px=8), clock=loop.time
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
                            concurrency=concurrency,
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
            shares=[handle.pacer.share.value for handle in runs],
        )

    return run_virtual(main)


@pytest.mark.parametrize(
    ("limiter", "concurrency", "latency"),
    [("window", 4, 0.2), ("bucket", 4, 0.2), ("window", 16, 2.0)],
    ids=["window", "bucket", "window, slow answers"],
)
def test_four_shards_share_one_limit_with_few_429s(
    tmp_path: Path, limiter: LimiterKind, concurrency: int, latency: float
) -> None:
    outcome = _run_shards(tmp_path, limiter, concurrency=concurrency, latency=latency)
    assert outcome.ok == JOBS and outcome.admitted == JOBS  # every job once, none failed
    assert outcome.refused < 0.1 * outcome.answers  # the bound
    assert outcome.elapsed <= 1.8 * (JOBS / (RPM / 60) + latency)  # near the limit
    assert min(outcome.shares) < 1.0  # no shard paced at the whole limit
    out = tmp_path / "out"
    records = [
        json.loads(line)
        for k in range(SHARDS)
        for line in (out / Shard(k, SHARDS).manifest_name).read_text().splitlines()
    ]
    ids = [r["id"] for r in records if r["status"] == "ok"]
    assert len(ids) == len(set(ids)) == JOBS


class _WholePacer(pacing.Pacer):
    """A pacer that paces at the whole learned limit: no share, no cuts, no first wave."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "share": 1.0, "first_wave": None})

    def refused(self, wait: float | None, *, sent_at: float | None = None, hold: bool = True):
        super().refused(wait, sent_at=None, hold=hold)  # no sent_at: never a cut


def test_without_a_share_four_shards_run_into_the_limit(tmp_path: Path, monkeypatch) -> None:
    """The control: shards that each pace at the whole limit they learn meet 429 after 429."""
    monkeypatch.setattr(run, "Pacer", _WholePacer)
    outcome = _run_shards(tmp_path, "window")
    assert outcome.refused > 0.3 * outcome.answers
    assert outcome.ok < JOBS  # some jobs ran out of attempts
    assert outcome.shares == [1.0] * SHARDS
