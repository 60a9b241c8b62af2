"""The shared pacer, header parsing, and pacing against the mock's rate limit, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import pytest
from helpers import Clock, read_manifest, write_jobs
from ratesim import STYLES, ideal_seconds, simulate

from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.pacing import (
    BACKOFF,
    FIRST_BACKOFF,
    GROW,
    SAFETY,
    Limits,
    Pacer,
    parse_duration,
    parse_limits,
)
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import run_batch


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
    pacer = Pacer(rpm=600, burst=3, clock=clock, sleep=clock.sleep)  # 9.5 per second
    start = clock.now
    times = []
    for _ in range(13):
        await pacer.acquire()
        times.append(round(clock.now - start, 6))
    assert times[:3] == [0, 0, 0]  # the burst
    gaps = [b - a for a, b in itertools.pairwise(times[3:])]
    assert gaps == [pytest.approx(0.1 / SAFETY, abs=1e-5)] * 9  # just under the limit
    assert times[-1] == pytest.approx(1.0 / SAFETY)  # 13 requests with a burst of 3


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
    assert user.rate == pytest.approx(SAFETY)  # the tighter of --rpm and the server's


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


SPENT = {  # a token bucket at 1,200/min with a client exactly at its rate
    "x-ratelimit-limit-requests": "1200",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "50ms",
}


async def test_after_a_spent_budget_the_next_dispatch_goes_when_the_hold_ends() -> None:
    """The hold and the paced interval do not add up (issue 8: every request paid twice)."""
    clock = Clock()
    pacer = Pacer(burst=1, clock=clock, sleep=clock.sleep)
    pacer.observe({**SPENT, "x-ratelimit-remaining-requests": "1"})  # learn the rate
    await pacer.acquire()  # the bucket's one token
    sent_at = pacer.now()
    pacer.observe(SPENT, sent_at=sent_at)
    gap = await pacer.acquire()
    assert pacer.holds == 1
    assert gap == pytest.approx(60 / (1200 * SAFETY))  # the paced slot: not 50 ms + a slot
    clock.advance(10.0)  # idle: the bucket fills up again
    pacer.observe(SPENT, sent_at=pacer.now())
    assert await pacer.acquire() == pytest.approx(0.05)  # exactly when the hold ends
    assert await pacer.acquire() == pytest.approx(60 / (1200 * SAFETY))  # then paced


async def test_a_hold_resumes_with_one_token_not_a_burst() -> None:
    clock = Clock()
    pacer = Pacer(rpm=600, burst=4, clock=clock, sleep=clock.sleep)
    pacer.hold(3.0, reason="HTTP 429")
    start = clock.now
    times = []
    for _ in range(3):
        await pacer.acquire()
        times.append(round(clock.now - start, 6))
    slot = 60 / (600 * SAFETY)
    assert times == [3.0, round(3.0 + slot, 6), round(3.0 + 2 * slot, 6)]


async def test_a_late_answer_holds_only_for_what_is_left_of_its_reset() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    sent_at = pacer.now()
    clock.advance(0.03)  # the answer took 30 ms to come back
    pacer.observe(SPENT, sent_at=sent_at)
    assert pacer.hold_remaining == pytest.approx(0.02)
    clock.advance(0.2)  # a slow answer: its budget refilled long ago
    pacer.observe(SPENT, sent_at=pacer.now() - 0.2)
    assert not pacer.held and pacer.holds == 1


async def test_a_429_without_a_wait_holds_one_paced_slot() -> None:
    clock = Clock()
    pacer = Pacer(rpm=1200, clock=clock, sleep=clock.sleep)
    pacer.refused(None)
    assert pacer.hold_remaining == pytest.approx(60 / (1200 * SAFETY))
    unpaced = Pacer(clock=clock, sleep=clock.sleep)
    unpaced.refused(None)
    assert unpaced.hold_remaining == pytest.approx(1.0)
    unpaced.refused(2.5)
    assert unpaced.hold_remaining == pytest.approx(2.5)


SIM_JOBS = 1000
SIM_CONCURRENCY = 32
# Seconds from dispatch to answer: shorter than one 50 ms interval, so a spent budget's
# hold still binds (the double wait shows), and long enough that an answer measured
# from its arrival instead of its dispatch holds the pool too long (that shows too).
SIM_LATENCY = 0.02
SLOW_LATENCY = 0.5  # an answer that comes back long after its budget refilled
SIM_SLOWDOWN = 1.1  # at most this times the ideal time
SIM_REFUSED = 0.05  # at most this share of the requests answered 429
ISSUE_MODELS = [
    "fixed 1 s window",
    "fixed 60 s window",
    "bucket, burst 1",
    "bucket, burst 10 %",
    "sliding log",
]


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("limiter", ISSUE_MODELS)
def test_pacing_is_near_the_limit_whatever_the_limiter(limiter: str, style: str) -> None:
    """1,000 requests at 1,200/min, concurrency 32, in virtual time (issue 8, part 5)."""
    result = simulate(
        limiter, style, jobs=SIM_JOBS, concurrency=SIM_CONCURRENCY, latency=SIM_LATENCY
    )
    assert result.ok == SIM_JOBS and result.failed == 0
    assert result.elapsed <= SIM_SLOWDOWN * ideal_seconds(SIM_JOBS, latency=SIM_LATENCY)
    assert result.refused <= SIM_REFUSED * SIM_JOBS
    assert result.requests == SIM_JOBS + result.refused


@pytest.mark.parametrize("limiter", ["mock window", "mock bucket"])
def test_pacing_is_near_the_mocks_limits_at_zero_latency(limiter: str) -> None:
    """The mock's own limiters and headers, at the benchmark's size and loopback latency."""
    jobs = 200
    result = simulate(limiter, "remaining counts down", jobs=jobs, concurrency=SIM_CONCURRENCY)
    assert result.ok == jobs
    assert result.elapsed <= SIM_SLOWDOWN * ideal_seconds(jobs)
    assert result.refused <= 0.1 * jobs  # the benchmark's target


@pytest.mark.parametrize("limiter", ["bucket, burst 1", "fixed 1 s window"])
def test_late_answers_do_not_slow_the_pool(limiter: str) -> None:
    result = simulate(limiter, "remaining 0, reset 1 interval", latency=SLOW_LATENCY)
    assert result.ok == SIM_JOBS
    assert result.elapsed <= SIM_SLOWDOWN * ideal_seconds(SIM_JOBS, latency=SLOW_LATENCY)
    assert result.refused <= SIM_REFUSED * SIM_JOBS


def test_the_simulation_is_deterministic() -> None:
    runs = [simulate("bucket, burst 1", "Retry-After only", jobs=200) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0].refused > 0  # the start's burst meets the limit: a cell that can fail


def test_the_simulation_catches_a_double_wait(monkeypatch) -> None:
    """The table above would fail with the old hold, which emptied the bucket."""

    def emptying_hold(pacer: Pacer, seconds: float, *, reason: str) -> None:
        now = pacer.now()
        pacer.hold_until = max(pacer.hold_until, now + seconds)
        pacer._tokens, pacer._refilled_at = 0.0, max(pacer._refilled_at, pacer.hold_until)

    monkeypatch.setattr(Pacer, "hold", emptying_hold)
    result = simulate("bucket, burst 1", "remaining 0, reset 1 interval", jobs=200)
    assert result.elapsed > 1.8 * ideal_seconds(200)  # every request paid the gap twice


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


async def test_batch_keeps_pace_with_a_bucket_that_answers_remaining_0(
    tmp_path: Path, make_mock
) -> None:
    """The issue's case end to end: every answer says ``remaining: 0``, reset 50 ms."""
    clock = Clock()
    options = MockOptions(rpm=1200, limiter="bucket", burst=1)
    server = await make_mock(options, clock=clock)
    jobs = 60
    path = write_jobs(tmp_path / "jobs.jsonl", [f"prompt {i}" for i in range(jobs)])
    config = RunConfig(
        out_dir=tmp_path / "out", base_url=server.base_url, api_key="k", concurrency=1
    )
    policy = RetryPolicy(sleep=clock.sleep, rng=random.Random(0))
    pacer = Pacer(burst=1, clock=clock, sleep=clock.sleep)
    start = clock.now
    summary = await run_batch(config, iter_jobs(path, scan(path)), policy=policy, pacer=pacer)
    elapsed = clock.now - start
    assert summary.ok == jobs and summary.rate_limited == 0
    assert pacer.holds >= jobs - 1  # every answer held the pool
    ideal = jobs / 20
    assert elapsed <= 1.1 * ideal  # it took twice as long when the hold and the pace added up


# -- a share of a limit others spend too (issue 14: shards) ------------------------------

SLOT = 60 / 1140  # one slot of 1,200 a minute, paced at 95 %


def _learned(pacer: Pacer, limit: int = 1200) -> None:
    pacer.observe({"x-ratelimit-limit-requests": str(limit)})


def _cut_twice(pacer: Pacer, clock: Clock) -> None:
    """Two 429s, each for a request sent after the last change: 0.85, then half of it."""
    for _ in range(2):
        clock.advance(0.01)
        sent = clock.now
        clock.advance(0.1)
        pacer.refused(0.05, sent_at=sent)


async def test_a_429_cuts_the_share_once_per_round_trip() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    sent = clock.now
    _learned(pacer)  # the first answer
    pacer.refused(0.05, sent_at=sent)  # sent before it: the first wave says nothing
    pacer.refused(0.05)  # nothing says when it was sent
    assert pacer.share.value == 1.0
    clock.advance(0.01)
    sent = clock.now
    clock.advance(0.1)
    pacer.refused(0.05, sent_at=sent)
    assert pacer.share.value == pytest.approx(FIRST_BACKOFF)  # alone at a window's edge?
    pacer.refused(0.05, sent_at=sent)  # in flight before the cut: the same round trip
    assert pacer.share.value == pytest.approx(FIRST_BACKOFF)
    clock.advance(0.01)
    sent = clock.now
    clock.advance(0.1)
    pacer.refused(0.05, sent_at=sent)  # again, soon: others spend the limit too
    assert pacer.share.value == pytest.approx(FIRST_BACKOFF * BACKOFF)
    assert pacer.rate == pytest.approx(1140 / 60 * FIRST_BACKOFF * BACKOFF)


async def test_admitted_answers_grow_the_share_back_faster_and_faster() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep, share=0.25)
    _learned(pacer)
    assert pacer.rate == pytest.approx(1140 / 60 / 4)  # a shard of four starts at a quarter
    grown = []
    for span in range(1, 4):  # three spans of 100 slots, answers at the paced rate
        before = pacer.share.value
        while clock.now < 1000.0 + span * 100 * SLOT:
            clock.advance(SLOT / pacer.share.value)
            pacer.observe({}, admitted=True)
        grown.append(pacer.share.value - before)
    assert grown[0] == pytest.approx(100 * GROW * 1.5, rel=0.2)  # accelerating to 2x
    assert grown == sorted(grown)  # the longer no 429 came, the faster it grows
    while pacer.share.value < 1.0:
        clock.advance(SLOT)
        pacer.observe({}, admitted=True)
    assert pacer.rate == pytest.approx(1140 / 60)  # alone again: the whole limit


async def test_a_long_hold_does_not_undo_a_cut() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    _learned(pacer)
    _cut_twice(pacer, clock)
    cut = pacer.share.value
    clock.advance(20.0)  # a 429's long Retry-After, or a slow answer: 380 slots
    pacer.observe({}, admitted=True)
    assert pacer.share.value == pytest.approx(cut + GROW / cut, rel=0.05)  # one request's worth


async def test_cuts_slow_a_run_paced_by_rpm() -> None:
    clock = Clock()
    pacer = Pacer(rpm=300, clock=clock, sleep=clock.sleep, share=0.25)
    assert pacer.rate == pytest.approx(300 * SAFETY / 60)  # --rpm is per shard already
    _learned(pacer, 1200)
    assert pacer.rate == pytest.approx(300 * SAFETY / 60)  # no 1/N on top of --rpm
    _cut_twice(pacer, clock)
    assert pacer.rate == pytest.approx(300 * SAFETY / 60 * FIRST_BACKOFF * BACKOFF)


async def test_a_429_the_job_gives_up_on_cuts_without_holding() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    _learned(pacer)
    clock.advance(0.01)
    sent = clock.now
    pacer.refused(600.0, sent_at=sent, hold=False)  # longer than --max-retry-wait
    assert pacer.share.value == pytest.approx(FIRST_BACKOFF)
    assert not pacer.held and pacer.holds == 0


async def test_the_first_wave_spends_the_start_burst() -> None:
    clock = Clock()
    pacer = Pacer(burst=4, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        assert await pacer.acquire() == 0  # no limit known: unpaced
    _learned(pacer)
    await pacer.acquire()
    assert clock.now - 1000.0 == pytest.approx(SLOT)  # paced at once, no second burst


async def test_a_shards_first_wave_waits_for_the_first_answer() -> None:
    clock = Clock()
    pacer = Pacer(burst=2, clock=clock, sleep=clock.sleep, share=0.5, first_wave=2)
    await pacer.acquire()
    await pacer.acquire()
    third = asyncio.ensure_future(pacer.acquire())
    await asyncio.sleep(0)
    assert not third.done()  # the first wave is out: wait to learn the limit
    pacer.settled()  # an answer, a connection error, a cancel: any end opens it
    await asyncio.wait_for(third, 1)


@pytest.mark.parametrize("limiter", ["mock window", "mock bucket", "fixed 1 s window"])
@pytest.mark.parametrize(
    ("concurrency", "latency", "shards", "bound"),
    [
        (4, 0.2, True, 0.1),
        (32, 5.0, True, 0.1),  # slow answers: each cut lands a round trip late
        (4, 0.2, False, 0.15),  # independent runs: each starts whole
    ],
    ids=["shards", "shards, slow answers", "independent runs"],
)
def test_four_clients_on_one_limit_stay_near_it(
    limiter: str, concurrency: int, latency: float, shards: bool, bound: float
) -> None:
    """Four clients that each learn the whole limit: shards start at a quarter, others learn."""
    jobs = 400
    result = simulate(
        limiter,
        "remaining counts down",
        jobs=jobs,
        concurrency=concurrency,
        latency=latency,
        clients=4,
        shards=shards,
    )
    assert result.ok == jobs and result.failed == 0
    assert result.refused <= bound * result.requests
    assert result.elapsed <= 1.5 * ideal_seconds(jobs, latency=latency)
