"""A deterministic, virtual-time simulation of the pacer against server rate limiters.

:func:`simulate` runs ``jobs`` requests through the real
:class:`~pmock_batch.pacing.Pacer` and the engine's reaction to each answer:
observe the headers of every answer, and on a 429 hold the pool for the
server's wait (:func:`~pmock_batch.failures.describe`) and retry after the
wait the real :class:`~pmock_batch.retry.RetryPolicy` chooses. The server is
a limiter model (the mock's own ``window`` and ``bucket`` limiters, plus fixed
windows and a sliding log) behind one of four header styles.

Time is virtual (:mod:`virtualtime`): the clock jumps to the next timer
instead of waiting for it, so a 50 s run takes milliseconds and every run
gives the same answer. With ``clients``, several clients, each with its own
pacer, share one server limiter, as shards of a run share an organisation's.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from virtualtime import run_virtual

from pmock_batch.errors import APIStatusError, Decision, status_error
from pmock_batch.failures import describe
from pmock_batch.mock.ratelimit import (
    WINDOW_SECONDS,
    Admission,
    Limiter,
    RequestLimiter,
    TokenBucketLimiter,
    format_duration,
)
from pmock_batch.pacing import Pacer
from pmock_batch.retry import RetryPolicy

# -- server limiter models ----------------------------------------------------------------


class FixedWindowLimiter:
    """``limit`` per minute, counted in fixed windows ``[k * window, (k + 1) * window)``.

    Each window admits its share, ``limit * window / 60``. The headers speak per
    minute, as OpenAI's do; ``remaining`` is what is left of this window.
    """

    def __init__(self, limit: int, *, clock: Callable[[], float], window: float) -> None:
        self.limit = limit
        self.window = window
        self.per_window = max(1, round(limit * window / WINDOW_SECONDS))
        self._clock = clock
        self._index = -1
        self._count = 0

    def admit(self) -> Admission:
        now = self._clock()
        index = math.floor(now / self.window)
        if index != self._index:
            self._index, self._count = index, 0
        allowed = self._count < self.per_window
        self._count += allowed
        reset = (index + 1) * self.window - now
        remaining = self.per_window - self._count
        return Admission(allowed, self.limit, remaining, reset, 0.0 if allowed else reset)

    def peek(self) -> Admission:  # pragma: no cover - the simulation only admits
        raise NotImplementedError

    def reset(self) -> None:  # pragma: no cover
        self._index = -1


RPM = 1200  # the limit in every model, per minute
MakeLimiter = Callable[[Callable[[], float]], Limiter]

LIMITERS: dict[str, MakeLimiter] = {
    "fixed 1 s window": lambda clock: FixedWindowLimiter(RPM, clock=clock, window=1.0),
    "fixed 60 s window": lambda clock: FixedWindowLimiter(RPM, clock=clock, window=60.0),
    "bucket, burst 1": lambda clock: TokenBucketLimiter(RPM, clock=clock, burst=1),
    "bucket, burst 10 %": lambda clock: TokenBucketLimiter(RPM, clock=clock, burst=RPM // 10),
    "sliding log": lambda clock: RequestLimiter(RPM, clock=clock, quantum=WINDOW_SECONDS),
    "mock window": lambda clock: RequestLimiter(RPM, clock=clock),
    "mock bucket": lambda clock: TokenBucketLimiter(RPM, clock=clock),
}


# -- header styles --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderStyle:
    """How a server words its answers."""

    limits: Callable[[Admission], dict[str, str]]  # on every answer
    refusal: Callable[[Admission], dict[str, str]]  # added to a 429
    sends_limits: bool = True  # whether the client can learn the limit from the answers


def _counting_down(admission: Admission) -> dict[str, str]:
    return admission.headers()


def _always_spent(admission: Admission) -> dict[str, str]:
    interval = WINDOW_SECONDS / admission.limit
    return {
        "x-ratelimit-limit-requests": str(admission.limit),
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": format_duration(interval),
    }


def _no_limits(admission: Admission) -> dict[str, str]:
    return {}


def _both_waits(admission: Admission) -> dict[str, str]:
    return {**_whole_seconds(admission), **_milliseconds(admission)}


def _whole_seconds(admission: Admission) -> dict[str, str]:
    return {"Retry-After": str(math.ceil(admission.retry_after))}


def _milliseconds(admission: Admission) -> dict[str, str]:
    return {"retry-after-ms": str(math.ceil(admission.retry_after * 1000))}


STYLES: dict[str, HeaderStyle] = {
    "remaining counts down": HeaderStyle(_counting_down, _both_waits),
    "remaining 0, reset 1 interval": HeaderStyle(_always_spent, _both_waits),
    "Retry-After only": HeaderStyle(_no_limits, _whole_seconds, sends_limits=False),
    "retry-after-ms only": HeaderStyle(_no_limits, _milliseconds, sends_limits=False),
}


# -- the client -----------------------------------------------------------------------------


@dataclass(slots=True)
class SimResult:
    jobs: int
    ok: int = 0
    failed: int = 0
    requests: int = 0
    refused: int = 0  # 429s
    elapsed: float = 0.0
    holds: int = 0


async def _client(
    limiter: Limiter,
    style: HeaderStyle,
    result: SimResult,
    *,
    jobs: int,
    concurrency: int,
    latency: float,
    rpm: float | None,
    seed: int = 0,
    share: float = 1.0,
) -> Pacer:
    """One client (one run, or one shard of one) sending ``jobs`` requests to ``limiter``."""
    loop = asyncio.get_running_loop()
    pacer = Pacer(
        rpm=rpm,
        burst=min(concurrency, 4),
        clock=loop.time,
        sleep=asyncio.sleep,
        share=share,
        first_wave=min(concurrency, 4) if share < 1.0 else None,  # as run.py gives a shard
    )
    policy = RetryPolicy(rng=random.Random(seed), sleep=asyncio.sleep)
    todo = iter(range(jobs))

    async def attempt() -> APIStatusError | None:
        """One request; the 429 as the client raises it, or None when it was admitted.

        Each worker has one request in flight at most, so ``concurrency``
        workers stand for the engine's ``concurrency`` slots.
        """
        await pacer.acquire()
        sent_at = pacer.now()
        result.requests += 1
        admission = limiter.admit()  # the server counts a request when it arrives
        await asyncio.sleep(latency)
        headers = style.limits(admission)
        if admission.allowed:
            pacer.observe(headers, sent_at=sent_at, admitted=True)
            return None
        headers |= style.refusal(admission)
        result.refused += 1
        exc = status_error("Rate limit exceeded", status=429, headers=headers)
        # What the direct runner does with a 429 (attempt.DirectRunner._answered).
        pacer.observe(exc.headers, sent_at=sent_at)
        failure = describe(exc, policy)
        pacer.refused(failure.wait, sent_at=sent_at, hold=failure.decision is Decision.RETRY)
        return exc

    async def worker() -> None:
        # What the engine's tenacity loop does: RetryPolicy decides and chooses the wait.
        for _ in todo:
            for number in range(1, policy.max_attempts + 1):
                exc = await attempt()
                if exc is None:
                    result.ok += 1
                    break
                failure = describe(exc, policy)
                if not policy.should_retry(failure) or number == policy.max_attempts:
                    result.failed += 1
                    break
                await asyncio.sleep(policy.wait_for(failure, number))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.holds += pacer.holds
    return pacer


async def _simulate(
    make_limiter: MakeLimiter,
    style: HeaderStyle,
    *,
    jobs: int,
    concurrency: int,
    latency: float,
    rpm: float | None,
    clients: int = 1,
    shards: bool = False,
) -> SimResult:
    """``clients`` clients share ``jobs`` and one server limiter, each pacing on its own.

    As ``shards``, each knows there are ``clients`` of them and starts at that share.
    """
    loop = asyncio.get_running_loop()
    limiter = make_limiter(loop.time)
    result = SimResult(jobs=jobs)
    started = loop.time()
    shares = [jobs // clients + (k < jobs % clients) for k in range(clients)]
    await asyncio.gather(
        *(
            _client(
                limiter,
                style,
                result,
                jobs=share,
                concurrency=concurrency,
                latency=latency,
                rpm=rpm,
                seed=k,
                share=1 / clients if shards else 1.0,
            )
            for k, share in enumerate(shares)
        )
    )
    result.elapsed = loop.time() - started
    return result


def simulate(
    limiter: str,
    style: str,
    *,
    jobs: int = 1000,
    concurrency: int = 32,
    latency: float = 0.0,
    clients: int = 1,
    shards: bool = False,
) -> SimResult:
    """Run one cell of the table: ``jobs`` requests against ``limiter`` with ``style`` headers.

    When the style sends no ``x-ratelimit-*`` headers, the client cannot learn the
    limit, so it is given ``--rpm``, as a user who knows their tier would.
    """
    header_style = STYLES[style]
    rpm = None if header_style.sends_limits else float(RPM)
    return run_virtual(
        lambda: _simulate(
            LIMITERS[limiter],
            header_style,
            jobs=jobs,
            concurrency=concurrency,
            latency=latency,
            rpm=rpm,
            clients=clients,
            shards=shards,
        )
    )


def ideal_seconds(jobs: int, *, latency: float = 0.0) -> float:
    """The time ``jobs`` requests take at exactly the limit, the last answer included."""
    return jobs / (RPM / WINDOW_SECONDS) + latency
