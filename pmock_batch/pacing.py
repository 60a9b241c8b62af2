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

__all__ = ["Limits", "Pacer", "Share", "parse_duration", "parse_limits"]

log = logging.getLogger("pmock_batch")

SAFETY = 0.95  # pace at this fraction of a limit, learned or given
DEFAULT_REFUSED_HOLD = 1.0  # seconds to hold after a 429 that names no wait, with no known rate
HOLD_TOLERANCE = 0.001  # seconds: a hold this little longer does not count as a new one
# The share of a limit others spend too (see Share): halved by a 429, grown back per slot.
FIRST_BACKOFF = 0.85  # a 429 at the current share multiplies it by this...
BACKOFF = 0.5  # ... or by this when the last cut came less than RECENT_SLOTS ago
RECENT_SLOTS = 300
GROW = 0.0005  # per slot of the whole limit, the share grows back by this...
ACCELERATE = 100.0  # ... times 1 + (slots since the last 429) / this
MIN_SHARE = 0.01
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


def _loop_clock() -> Callable[[], float]:
    """The running event loop's clock, which its sleeps and timeouts keep to."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        return time.monotonic


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
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        stopping: Callable[[], bool] | None = None,
        share: float = 1.0,
    ) -> None:
        clock = clock or _loop_clock()
        self.user_rpm = rpm
        self.learned_rpm: float | None = None
        self.share = Share()  # of the limit: less once 429s show others spend it too
        self._first_share = share
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
        server = self.learned_rpm or user
        if server is None:
            return None
        rpm = server * self.share.value
        return (min(rpm, user) if user else rpm) / 60.0

    @property
    def _whole_rate(self) -> float | None:
        """Requests per second at the whole limit: the learned one, else ``--rpm``."""
        rpm = self.learned_rpm or (self.user_rpm * SAFETY if self.user_rpm else None)
        return rpm / 60.0 if rpm else None

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
                if rate is None:  # unpaced, but what it sends spends the first burst
                    self._tokens = max(0.0, self._tokens - 1.0)
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

    def refused(self, wait: float | None, *, sent_at: float | None = None) -> None:
        """A 429: hold the pool for the server's ``wait``, or one paced slot if it named none.

        ``wait`` is what :func:`pmock_batch.failures.server_wait` read from the
        answer. A 429 for a request dispatched (at ``sent_at``) since the share
        last changed also cuts the share: others may spend the limit too.
        """
        if wait is None:
            rate = self.rate
            wait = 1.0 / rate if rate else DEFAULT_REFUSED_HOLD
        now = self._clock()
        whole = self._whole_rate
        if whole is not None:
            self._refill(now)
            if self.share.refused(now, sent_at, whole):
                rpm = whole * self.share.value * 60.0
                log.debug(
                    "sharing the limit: pacing at %.1f requests/min",
                    rpm,
                    extra={"event": "share", "rpm": round(rpm, 1)},
                )
        self.hold(wait, reason="HTTP 429")

    def admitted(self) -> None:
        """A 2xx: the share grows back a little (see :class:`Share`)."""
        now = self._clock()
        whole = self._whole_rate
        if whole is not None:
            self._refill(now)
            self.share.grow(now, whole)

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
                now = self._clock()
                self._refill(now)
                self.share.restart(now, self._first_share if self.learned_rpm is None else None)
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


class Share:
    """This client's share of a rate limit that others may spend too: AIMD, as TCP does.

    Limits belong to the organisation, so other runs (shards, colleagues) spend
    the same budget, and pacing at the whole learned limit would send 429 after
    429. A 429 for a request dispatched since the share last changed cuts it
    (once per round trip, not once per refused request in flight): by 15 %
    when the last cut was long ago (a lone client meets a window's edge now
    and then), by half when it was recent (others are spending the budget).
    Each admitted answer grows the share back by :data:`GROW` per slot of the
    whole limit that passed, faster the longer no 429 came, up to the whole
    limit. Clients that grow alike and are cut alike settle on even shares
    that add up to the limit. Slots, not seconds, so a limit of 5 a minute
    probes as rarely, per request, as one of 1,200.

    Requests dispatched before the first answer (the first wave, sent before
    any limit was known) say nothing about the share.
    """

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self._since = math.inf  # when the share last changed, or the first answer came
        self._grown_at = math.inf
        self._cut_at = -math.inf

    def restart(self, now: float, value: float | None = None) -> None:
        """A limit was learned: requests dispatched before now say nothing about this share."""
        if value is not None:
            self.value = min(1.0, max(MIN_SHARE, value))
        self._since = self._grown_at = now

    def refused(self, now: float, sent_at: float | None, whole_rate: float) -> bool:
        """A 429 for a request dispatched at ``sent_at``; whether the share was cut."""
        if self._since == math.inf:  # the first answer
            self._since = self._grown_at = now
        if sent_at is not None and sent_at <= self._since:
            return False
        alone = self.value == 1.0 and (now - self._cut_at) * whole_rate >= RECENT_SLOTS
        self.value = max(MIN_SHARE, self.value * (FIRST_BACKOFF if alone else BACKOFF))
        self._since = self._grown_at = self._cut_at = now
        return True

    def grow(self, now: float, whole_rate: float) -> None:
        """An admitted answer: grow by the slots (of ``whole_rate`` per second) since the last."""
        if self._since == math.inf:  # the first answer
            self._since = now
        slots = max(0.0, now - self._grown_at) * whole_rate
        self._grown_at = now
        if self.value < 1.0:
            accelerate = 1.0 + (now - self._since) * whole_rate / ACCELERATE
            self.value = min(1.0, self.value + GROW * slots * accelerate)
