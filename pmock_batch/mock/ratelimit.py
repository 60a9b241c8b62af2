"""A requests-per-minute limit over a sliding window, with an injectable clock.

Like OpenAI's, the limit is also enforced in shorter quanta: at most
``ceil(limit / 60)`` requests in any one second, so 1,200 requests per minute
means about 20 per second, not 1,200 at once followed by a minute of 429s.

Every response of a limited server carries OpenAI's headers::

    x-ratelimit-limit-requests      the limit per minute
    x-ratelimit-remaining-requests  requests left in the window after this one
    x-ratelimit-reset-requests      time until the window is empty: 1s, 120ms, 1m30s

A request over the limit is refused with a 429 whose ``Retry-After`` is the
number of seconds, rounded up, until the next slot frees.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["WINDOW_SECONDS", "Admission", "RequestLimiter", "format_duration"]

WINDOW_SECONDS = 60.0


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
