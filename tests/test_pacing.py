"""The shared pacer, header parsing, and pacing against the mock's rate limit, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import pytest
from helpers import Clock, read_manifest, write_jobs

from pmock_batch.batch import run_batch
from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.pacing import Limits, Pacer, parse_duration, parse_limits
from pmock_batch.retry import RetryPolicy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("120ms", 0.12),
        ("1m30s", 90.0),
        ("6m0s", 360.0),
        ("0.5s", 0.5),
        ("2h", 7200.0),
        ("17", 17.0),
        ("1h2m3.5s", 3723.5),
        ("", None),
        ("soon", None),
        ("1x", None),
        ("s1", None),
    ],
)
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_parse_limits_takes_the_tightest_of_requests_and_images() -> None:
    headers = {
        "X-RateLimit-Limit-Requests": "1200",
        "x-ratelimit-remaining-requests": "1199",
        "x-ratelimit-reset-requests": "50ms",
        "x-ratelimit-limit-images": "300",
        "x-ratelimit-remaining-images": "0",
        "x-ratelimit-reset-images": "1m",
    }
    assert parse_limits(headers) == Limits(limit=300, remaining=0, reset=60.0)
    assert parse_limits({}) == Limits()
    assert parse_limits({"x-ratelimit-limit-requests": "many"}) == Limits()


async def test_no_signal_means_no_pacing() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    for _ in range(100):
        assert await pacer.acquire() == 0
    assert clock.sleeps == []


async def test_rpm_spaces_dispatches_after_a_small_burst() -> None:
    clock = Clock()
    pacer = Pacer(rpm=600, burst=3, clock=clock, sleep=clock.sleep)  # 10 per second
    start = clock.now
    times = []
    for _ in range(13):
        await pacer.acquire()
        times.append(round(clock.now - start, 3))
    assert times[:3] == [0, 0, 0]  # the burst
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times[3:])]
    assert gaps == [0.1] * 9
    assert times[-1] == pytest.approx(1.0)  # 13 requests at 10/s with a burst of 3


async def test_a_429_holds_the_whole_pool() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.hold(5.0, reason="HTTP 429")
    assert pacer.held and pacer.holds == 1
    start = clock.now
    waits = await asyncio.gather(*(pacer.acquire() for _ in range(4)))
    assert all(w == pytest.approx(5.0) for w in waits)  # every worker waited, not just one
    assert clock.now - start == pytest.approx(5.0)
    assert not pacer.held
    pacer.hold(2.0, reason="again")
    pacer.hold(1.0, reason="shorter: does not shorten the hold")
    assert pacer.hold_until == pytest.approx(clock.now + 2.0)


async def test_the_rate_is_learned_from_headers_and_can_change() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.observe({"x-ratelimit-limit-requests": "600"})
    assert pacer.rate == pytest.approx(600 * 0.95 / 60)
    pacer.observe({"x-ratelimit-limit-requests": "120"})
    assert pacer.rate == pytest.approx(120 * 0.95 / 60)
    user = Pacer(rpm=60, clock=clock, sleep=clock.sleep)
    user.observe({"x-ratelimit-limit-requests": "6000"})
    assert user.rate == pytest.approx(1.0)  # the tighter of --rpm and the server's


async def test_a_spent_budget_holds_for_about_one_slot() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.observe(
        {
            "x-ratelimit-limit-requests": "1200",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "30s",
        }
    )
    assert pacer.hold_until - clock.now == pytest.approx(0.05)


async def test_pacing_logs_a_change_once(caplog) -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    with caplog.at_level("INFO", logger="pmock_batch"):
        for _ in range(50):
            pacer.observe({"x-ratelimit-limit-requests": "1200"})
    assert [r.message for r in caplog.records].count(
        "pacing at 1140.0 requests/min (the server allows 1200/min)"
    ) == 1


async def test_batch_runs_at_the_mock_limit_not_into_it(tmp_path: Path, make_mock) -> None:
    """120 jobs against a 1,200/min limit with 32 workers, all on one fake clock."""
    clock = Clock()
    server = await make_mock(MockOptions(rpm=1200), clock=clock)
    path = write_jobs(tmp_path / "jobs.jsonl", [f"prompt {i}" for i in range(120)])
    config = RunConfig(
        out_dir=tmp_path / "out", base_url=server.base_url, api_key="k", concurrency=32
    )
    policy = RetryPolicy(sleep=clock.sleep, rng=random.Random(0))
    pacer = Pacer(burst=4, clock=clock, sleep=clock.sleep)
    start = clock.now
    summary = await run_batch(config, iter_jobs(path, scan(path)), policy=policy, pacer=pacer)
    elapsed = clock.now - start
    assert summary.ok == 120 and summary.failed == 0
    assert server.stats.successes.total() == 120
    assert summary.rate_limited <= 0.2 * 120  # only the first, unpaced wave meets the limit
    assert server.stats.outcomes.get("429", 0) == summary.rate_limited
    assert pacer.learned_rpm == pytest.approx(1140)
    assert elapsed <= 1.2 * (120 / 20)  # ideal: 6 s at 20 per second
    assert all(r["status"] == "ok" for r in read_manifest(tmp_path / "out"))
