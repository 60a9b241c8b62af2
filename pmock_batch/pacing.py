"""One pacer shared by every worker: run at the rate limit, not into it.

Every attempt calls :meth:`Pacer.acquire` before it is sent, retries
included. The pacer spaces dispatches to a rate (generic cell rate
algorithm: each caller reserves the next slot, a small burst allowed at the
start), and holds the whole pool when a response says 429 or when the
server's ``x-ratelimit-remaining-*`` reaches zero.

The rate comes from ``--rpm`` and from what servers say: :func:`parse_limits`
reads ``x-ratelimit-limit-requests``, ``-remaining-`` and ``-reset-`` (and the
``-images`` variants) from every response, and :meth:`Pacer.observe` paces
just under the learned rate. With neither, the pacer lets everything through
and concurrency is the only bound. The clock and the sleep are injectable,
so tests move a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .errors import ci_headers

__all__ = ["Limits", "Pacer", "parse_duration", "parse_limits"]

log = logging.getLogger("pmock_batch")

SAFETY = 0.95  # pace at this fraction of a limit, learned or given
DEFAULT_REFUSED_HOLD = 1.0  # seconds to hold after a 429 that names no wait, with no known rate
HOLD_TOLERANCE = 0.001  # seconds: a hold this little longer does not count as a new one
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Parse OpenAI-style durations: ``1s``, ``120ms``, ``1m30s``, ``6m0s``, ``0.5s``, ``2``.

    A bare number is seconds. Returns None for anything else.
    """
    text = text.strip().lower()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos else None


@dataclass(frozen=True, slots=True)
class Limits:
    """What one response's ``x-ratelimit-*`` headers said (per minute, as OpenAI's are)."""

    limit: int | None = None  # requests (or images) per minute
    remaining: int | None = None
    reset: float | None = None  # seconds until the budget is whole again


def parse_limits(headers: Mapping[str, str]) -> Limits:
    """Read the tightest of the ``-requests`` and ``-images`` rate-limit headers."""
    headers = ci_headers(headers)
    limits, remainings, resets = [], [], []
    for unit in ("requests", "images"):
        limit = _int(headers.get(f"x-ratelimit-limit-{unit}"))
        remaining = _int(headers.get(f"x-ratelimit-remaining-{unit}"))
        raw_reset = headers.get(f"x-ratelimit-reset-{unit}")
        reset = parse_duration(raw_reset) if raw_reset is not None else None
        if limit is not None and limit > 0:
            limits.append(limit)
        if remaining is not None:
            remainings.append(remaining)
            if reset is not None:
                resets.append((remaining, reset))
    return Limits(
        limit=min(limits) if limits else None,
        remaining=min(remainings) if remainings else None,
        reset=min(resets)[1] if resets else None,
    )


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(float(text.strip()))
    except ValueError:
        return None


class Pacer:
    """Spaces dispatches for the whole pool; holds it after a 429.

    A token bucket refilled at the paced rate, holding ``burst`` tokens at most
    (so a small burst goes at the start), with waiters served first come,
    first served. A hold caps the bucket at one token, so the pool resumes at
    the paced rate rather than in a burst, but it does not empty it: the
    first dispatch after a hold goes when the hold ends. ``stopping`` lets a
    run that is shutting down leave the queue at once.
    """

    def __init__(
        self,
        *,
        rpm: float | None = None,
        burst: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self.user_rpm = rpm
        self.learned_rpm: float | None = None
        self.burst = max(1, burst)
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._stopping = stopping or (lambda: False)
        self._lock = asyncio.Lock()  # fair: waiters are served in arrival order
        self._tokens = float(self.burst)
        self._refilled_at = clock()
        self.hold_until = 0.0  # no dispatch before this (a 429 or an empty budget)
        self.holds = 0  # how often the pool was held
        self.waited = 0.0  # seconds spent waiting in acquire, summed over callers

    @property
    def rate(self) -> float | None:
        """Requests per second to pace at, or None for no pacing.

        95 % of the tighter of ``--rpm`` and the learned limit: exactly at a
        limit, every rounding of either clock would be a 429.
        """
        user = self.user_rpm * SAFETY if self.user_rpm else None
        rpms = [r for r in (user, self.learned_rpm) if r]
        return min(rpms) / 60.0 if rpms else None

    @property
    def hold_remaining(self) -> float:
        """Seconds until the pool may dispatch again (0 when it is not held)."""
        return max(0.0, self.hold_until - self._clock())

    @property
    def held(self) -> bool:
        """Whether the pool is held right now (for a progress display)."""
        return self._clock() < self.hold_until

    def _refill(self, now: float) -> None:
        rate = self.rate
        if rate is not None and now > self._refilled_at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = max(self._refilled_at, now)

    async def acquire(self) -> float:
        """Wait for this caller's turn; return how long it waited."""
        started = self._clock()
        async with self._lock:
            while not self._stopping():
                now = self._clock()
                if now < self.hold_until:
                    await self._sleep(self.hold_until - now)
                    continue
                self._refill(now)
                rate = self.rate
                if rate is None:
                    break
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    break
                await self._sleep((1.0 - self._tokens) / rate)
        waited = self._clock() - started
        self.waited += waited
        return waited

    def hold(self, seconds: float, *, reason: str) -> None:
        """Hold every new dispatch for ``seconds`` (a 429's Retry-After, an empty budget).

        The hold and the paced rate do not add up: the next dispatch goes when
        the hold ends, or at its paced slot if that comes later. What the bucket
        saved up during the hold is capped at one token, so the pool resumes at
        the paced rate, not in a burst: the burst is for the start only.
        """
        now = self._clock()
        until = now + max(0.0, seconds)
        if until > self.hold_until + HOLD_TOLERANCE:
            if not self.held:
                self.holds += 1
                log.debug(
                    "pausing dispatches for %.1fs: %s",
                    seconds,
                    reason,
                    extra={"event": "hold", "wait_s": round(seconds, 3), "reason": reason},
                )
            self.hold_until = until
        self._refill(max(now, self.hold_until))
        self._tokens = min(self._tokens, 1.0)

    def refused(self, wait: float | None) -> None:
        """A 429: hold the pool for the server's ``wait``, or one paced slot if it named none.

        ``wait`` is what :func:`pmock_batch.failures.server_wait` read from the answer.
        """
        if wait is None:
            rate = self.rate
            wait = 1.0 / rate if rate else DEFAULT_REFUSED_HOLD
        self.hold(wait, reason="HTTP 429")

    def observe(self, headers: Mapping[str, str], *, sent_at: float | None = None) -> None:
        """Learn the rate limit from a response's headers; hold if the budget is spent.

        ``sent_at`` (on this pacer's clock) is when the request was dispatched.
        The server counted it on arrival, so a spent budget's reset runs from
        then, not from when the answer came back: a late answer holds the pool
        less, or not at all, instead of holding it for a budget that has
        already refilled.
        """
        limits = parse_limits(headers)
        if limits.limit is not None:
            learned = limits.limit * SAFETY
            if self.learned_rpm is None or not math.isclose(
                learned, self.learned_rpm, rel_tol=0.05
            ):
                before = self.rate
                self._refill(self._clock())
                self.learned_rpm = learned
                if self.rate != before and self.rate is not None:
                    log.info(
                        "pacing at %.1f requests/min (the server allows %d/min)",
                        self.rate * 60.0,
                        limits.limit,
                        extra={"event": "pacing", "rpm": round(self.rate * 60.0, 1)},
                    )
        if limits.remaining == 0 and limits.reset:
            # The budget refills gradually: wait about one slot, not the whole reset.
            slot = 60.0 / limits.limit if limits.limit else 1.0
            wait = min(limits.reset, slot)
            if sent_at is not None:
                wait -= self._clock() - sent_at
            if wait > 0:
                self.hold(wait, reason="the server's rate-limit budget is spent")

    def now(self) -> float:
        """The pacer's clock: what ``sent_at`` is measured on."""
        return self._clock()
