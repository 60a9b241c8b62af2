"""Requests-per-minute limiters with OpenAI's headers, on an injectable clock.

Two kinds, chosen with ``--limiter``:

``window`` (:class:`RequestLimiter`, the default)
    At most ``limit`` requests in any sliding 60 s, and, like OpenAI's, also in
    shorter quanta: at most ``ceil(limit / 60)`` in any one second, so 1,200
    requests per minute means about 20 per second, not 1,200 at once followed
    by a minute of 429s.
``bucket`` (:class:`TokenBucketLimiter`)
    A token bucket refilled continuously at ``limit / 60`` per second, holding
    ``burst`` tokens at most (one second's worth unless told). This is how
    OpenAI's limiter behaves: a client at the limit sees ``remaining`` reach 0
    with a reset of one interval (50 ms at 1,200 per minute).

Every response of a limited server carries OpenAI's headers::

    x-ratelimit-limit-requests      the limit per minute
    x-ratelimit-remaining-requests  requests left after this one, counting down
    x-ratelimit-reset-requests      time until the budget is whole again: 1s, 120ms, 1m30s

A request over the limit is refused with a 429 whose ``Retry-After`` and
``retry-after-ms`` say when the next request would be admitted.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

__all__ = [
    "LIMITER_KINDS",
    "WINDOW_SECONDS",
    "Admission",
    "Limiter",
    "LimiterKind",
    "RequestLimiter",
    "TokenBucketLimiter",
    "default_burst",
    "format_duration",
    "make_limiter",
]

WINDOW_SECONDS = 60.0
TOKEN_TOLERANCE = 1e-9  # a token this close to whole counts as whole (float rounding)

LimiterKind = Literal["window", "bucket"]
LIMITER_KINDS: tuple[LimiterKind, ...] = get_args(LimiterKind)


def format_duration(seconds: float) -> str:
    """Format a wait as OpenAI does: ``120ms`` below a second, else ``1s``, ``6.5s``, ``1m30s``."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis < 1000:
        return f"{millis}ms"
    minutes, rest = divmod(millis, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer for one request."""

    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the window is empty
    retry_after: float  # seconds until the next slot frees (0 when allowed)

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers that describe this answer."""
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": format_duration(self.reset),
        }


class RequestLimiter:
    """At most ``limit`` admitted requests in any ``window`` seconds of ``clock``."""

    def __init__(
        self,
        limit: int,
        *,
        clock: Callable[[], float],
        window: float = WINDOW_SECONDS,
        quantum: float = 1.0,
    ) -> None:
        self.limit = limit
        self.window = window
        self.quantum = quantum
        self.per_quantum = max(1, math.ceil(limit * quantum / window))
        self._clock = clock
        self._admitted: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._admitted and self._admitted[0] <= now - self.window:
            self._admitted.popleft()

    def _quantum_wait(self, now: float) -> float:
        """Seconds until the last quantum holds fewer than ``per_quantum`` admissions."""
        if len(self._admitted) < self.per_quantum:
            return 0.0
        oldest_in_quantum = self._admitted[-self.per_quantum]
        return max(0.0, oldest_in_quantum + self.quantum - now)

    def _free(self, now: float) -> bool:
        return len(self._admitted) < self.limit and self._quantum_wait(now) <= 0

    def admit(self) -> Admission:
        """Admit one request now if a slot is free; say so either way."""
        now = self._clock()
        self._expire(now)
        allowed = self._free(now)
        if allowed:
            self._admitted.append(now)
        return self._answer(now, allowed=allowed)

    def peek(self) -> Admission:
        """The current state, without admitting anything."""
        now = self._clock()
        self._expire(now)
        return self._answer(now, allowed=self._free(now))

    def reset(self) -> None:
        """Forget every admitted request."""
        self._admitted.clear()

    def _answer(self, now: float, *, allowed: bool) -> Admission:
        remaining = max(0, self.limit - len(self._admitted))
        reset = self._admitted[-1] + self.window - now if self._admitted else 0.0
        retry_after = 0.0
        if not allowed:
            window_wait = (
                self._admitted[0] + self.window - now if len(self._admitted) >= self.limit else 0
            )
            retry_after = max(window_wait, self._quantum_wait(now))
        return Admission(allowed, self.limit, remaining, max(0.0, reset), max(0.0, retry_after))


class TokenBucketLimiter:
    """A token bucket: ``limit`` per ``window`` refilled continuously, ``burst`` tokens at most.

    It starts full. ``remaining`` is the whole tokens left; the reset is the
    time until the bucket is full again.
    """

    def __init__(
        self,
        limit: int,
        *,
        clock: Callable[[], float],
        burst: int | None = None,
        window: float = WINDOW_SECONDS,
    ) -> None:
        self.limit = limit
        self.rate = limit / window  # tokens per second
        self.burst = burst if burst is not None else default_burst(limit, window=window)
        self._clock = clock
        self._tokens = float(self.burst)
        self._at = clock()

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now

    def admit(self) -> Admission:
        """Admit one request now if a token is there; say so either way."""
        now = self._clock()
        self._refill(now)
        allowed = self._tokens >= 1.0 - TOKEN_TOLERANCE
        if allowed:
            self._tokens = max(0.0, self._tokens - 1.0)
        return self._answer(allowed=allowed)

    def peek(self) -> Admission:
        """The current state, without admitting anything."""
        self._refill(self._clock())
        return self._answer(allowed=self._tokens >= 1.0 - TOKEN_TOLERANCE)

    def reset(self) -> None:
        """Fill the bucket again."""
        self._tokens = float(self.burst)
        self._at = self._clock()

    def _answer(self, *, allowed: bool) -> Admission:
        remaining = math.floor(self._tokens + TOKEN_TOLERANCE)
        reset = (self.burst - self._tokens) / self.rate
        retry_after = 0.0 if allowed else (1.0 - self._tokens) / self.rate
        return Admission(allowed, self.limit, remaining, max(0.0, reset), max(0.0, retry_after))


class Limiter(Protocol):
    """What the mock (and the pacing simulation in the tests) needs of a limiter."""

    limit: int

    def admit(self) -> Admission: ...

    def peek(self) -> Admission: ...

    def reset(self) -> None: ...


def default_burst(limit: int, *, window: float = WINDOW_SECONDS) -> int:
    """A bucket's default capacity: one second's worth of the limit, at least 1."""
    return max(1, round(limit / window))


def make_limiter(
    kind: LimiterKind, limit: int, *, clock: Callable[[], float], burst: int | None = None
) -> Limiter:
    """The mock's limiter of ``kind`` for ``limit`` requests per minute."""
    if kind == "bucket":
        return TokenBucketLimiter(limit, clock=clock, burst=burst)
    return RequestLimiter(limit, clock=clock)
