"""A deterministic, virtual-time simulation of the pacer against server rate limiters.

:func:`simulate` runs ``jobs`` requests through the real
:class:`~pmock_batch.pacing.Pacer` and the engine's reaction to each answer:
observe the headers of every answer, and on a 429 hold the pool for the
server's wait (:func:`~pmock_batch.failures.describe`) and retry after the
wait the real :class:`~pmock_batch.retry.RetryPolicy` chooses. The server is
a limiter model (the mock's own ``window`` and ``bucket`` limiters, plus fixed
windows and a sliding log) behind one of four header styles.

Time is virtual: :class:`VirtualLoop` is an asyncio loop whose clock jumps to
the next timer instead of waiting for it, so a 50 s run takes milliseconds
and every run gives the same answer.
"""

from __future__ import annotations

import asyncio
import math
import random
import selectors
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

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

T = TypeVar("T")

START = 1000.0  # the virtual clock's first reading


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that never blocks: a wait for a timer moves the virtual clock instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if not events:
            if timeout is None:
                raise RuntimeError("deadlock: every task waits and no timer is set")
            self._loop.now += timeout
        return events


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: ``asyncio.sleep`` returns at once, the clock jumps."""

    def __init__(self) -> None:
        self.now = START
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run_virtual(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to the end on a fresh :class:`VirtualLoop`."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


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


async def _simulate(
    make_limiter: MakeLimiter,
    style: HeaderStyle,
    *,
    jobs: int,
    concurrency: int,
    latency: float,
    rpm: float | None,
) -> SimResult:
    loop = asyncio.get_running_loop()
    limiter = make_limiter(loop.time)
    pacer = Pacer(rpm=rpm, burst=min(concurrency, 4), clock=loop.time, sleep=asyncio.sleep)
    policy = RetryPolicy(rng=random.Random(0), sleep=asyncio.sleep)
    result = SimResult(jobs=jobs)
    todo = iter(range(jobs))
    started = loop.time()

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
            pacer.observe(headers, sent_at=sent_at)
            return None
        headers |= style.refusal(admission)
        result.refused += 1
        exc = status_error("Rate limit exceeded", status=429, headers=headers)
        # What the direct runner does with a 429 (attempt.DirectRunner._answered).
        pacer.observe(exc.headers, sent_at=sent_at)
        failure = describe(exc, policy)
        if failure.decision is Decision.RETRY:
            pacer.refused(failure.wait)
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
    result.elapsed = loop.time() - started
    result.holds = pacer.holds
    return result


def simulate(
    limiter: str,
    style: str,
    *,
    jobs: int = 1000,
    concurrency: int = 32,
    latency: float = 0.0,
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
        )
    )


def ideal_seconds(jobs: int, *, latency: float = 0.0) -> float:
    """The time ``jobs`` requests take at exactly the limit, the last answer included."""
    return jobs / (RPM / WINDOW_SECONDS) + latency
