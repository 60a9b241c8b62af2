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

A limit is the organisation's, so other runs (shards of this one, other
people's) may spend it too. The pacer therefore paces at its share of the
limit, :class:`LimitShare`: 429s cut it, admitted answers grow it back, and
runs that share a limit settle on shares that add up to it.
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

__all__ = ["LimitShare", "Limits", "Pacer", "parse_duration", "parse_limits"]

log = logging.getLogger("pmock_batch")

SAFETY = 0.95  # pace at this fraction of a limit, learned or given
DEFAULT_REFUSED_HOLD = 1.0  # seconds to hold after a 429 that names no wait, with no known rate
HOLD_TOLERANCE = 0.001  # seconds: a hold this little longer does not count as a new one
# A run's share of a limit others spend too (LimitShare). A slot is 1/rate of the whole limit.
FIRST_BACKOFF = 0.85  # a 429 at the whole limit after a quiet spell cuts the share by 15 %...
BACKOFF = 0.5  # ... any other 429 (one per round trip) halves it
QUIET_SLOTS = 300  # slots grown through without a cut that make a quiet spell
GROW = 0.0005  # an admitted answer grows the share by this per slot it stands for...
ACCELERATE = 100.0  # ... times 1 + (slots grown through since the last cut) / this
MIN_SHARE = 0.01  # the share never falls below 1 % of the limit
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

    The paced rate is the run's share (:class:`LimitShare`) of the whole
    limit; ``share`` is where a learned limit's share starts when no
    ``--rpm`` is given (1/N for a shard of N). A token bucket refilled at the
    paced rate, holding ``burst`` tokens at most (a small burst at the start:
    the first wave, sent before any limit is known, spends it), with waiters
    served first come, first served. A hold caps the bucket at one token, so
    the pool resumes at the paced rate rather than in a burst, but it does not
    empty it: the first dispatch after a hold goes when the hold ends.
    ``stopping`` lets a run that is shutting down leave the queue at once.
    ``first_wave`` bounds what goes before the first answer settles (a shard
    sends its burst, then waits to learn the limit its siblings spend too).
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
        first_wave: int | None = None,
    ) -> None:
        clock = clock or _loop_clock()
        self.user_rpm = rpm
        self.learned_rpm: float | None = None
        self.share = LimitShare()  # of the limit: less once 429s show others spend it too
        self._first_share = share
        self._first_wave = first_wave  # dispatches before the first answer; None: no bound
        self._sent = 0
        self._first_answer = asyncio.Event()
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
    def whole_rate(self) -> float | None:
        """Requests per second at the whole limit, or None when no limit is known.

        95 % of the tighter of ``--rpm`` and the learned limit: exactly at a
        limit, every rounding of either clock would be a 429.
        """
        rpms = [rpm for rpm in (self.user_rpm and self.user_rpm * SAFETY, self.learned_rpm) if rpm]
        return min(rpms) / 60.0 if rpms else None

    @property
    def rate(self) -> float | None:
        """Requests per second to pace at: the share of :attr:`whole_rate`, or None (unpaced)."""
        whole = self.whole_rate
        return whole * self.share.value if whole is not None else None

    @property
    def _first_wave_sent(self) -> bool:
        """Whether the first wave is out and no answer has come yet."""
        wave = self._first_wave
        return wave is not None and self._sent >= wave and not self._first_answer.is_set()

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
                if self._first_wave_sent:
                    await self._first_answer.wait()  # set by settled(), whatever the end
                    continue
                now = self._clock()
                if now < self.hold_until:
                    await self._sleep(self.hold_until - now)
                    continue
                self._refill(now)
                rate = self.rate
                if rate is None or self._tokens >= 1.0 - 1e-9:
                    # Unpaced (no limit known) spends the start's burst too: the first wave.
                    self._tokens = max(0.0, self._tokens - 1.0)
                    self._sent += 1
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

    def settled(self) -> None:
        """A dispatched request ended, however: after the first, the first wave is over."""
        self._first_answer.set()

    def refused(
        self, wait: float | None, *, sent_at: float | None = None, hold: bool = True
    ) -> None:
        """A 429: cut the share; hold the pool for the server's ``wait`` (one paced slot if none).

        ``wait`` is what :func:`pmock_batch.failures.server_wait` read from the
        answer; ``hold`` is False when the job gives up instead of waiting. Only a
        429 for a request dispatched (at ``sent_at``) since the share last
        changed cuts it; without ``sent_at`` nothing says when it was sent.
        """
        now = self._clock()
        whole = self.whole_rate
        if whole is not None:
            self._refill(now)
            if self.share.refused(now, sent_at):
                log.debug(
                    "sharing the limit: pacing at %.1f requests/min",
                    whole * self.share.value * 60.0,
                    extra={"event": "share", "share": round(self.share.value, 3)},
                )
        if hold:
            rate = self.rate
            self.hold(
                wait if wait is not None else 1.0 / rate if rate else DEFAULT_REFUSED_HOLD,
                reason="HTTP 429",
            )

    def observe(
        self, headers: Mapping[str, str], *, sent_at: float | None = None, admitted: bool = False
    ) -> None:
        """Learn the rate limit from an answer's headers; hold if the budget is spent.

        ``admitted`` says the answer was a 2xx: the share grows a little.
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
                if self.learned_rpm is None and self.user_rpm is None:  # --rpm is per run
                    self.share.value = min(1.0, max(MIN_SHARE, self._first_share))
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
        now = self._clock()
        self.share.answered(now)
        self.settled()
        whole = self.whole_rate
        if admitted and whole is not None:
            self._refill(now)
            self.share.admitted(now, whole)

    def now(self) -> float:
        """The pacer's clock: what ``sent_at`` is measured on."""
        return self._clock()


class LimitShare:
    """A run's share of a rate limit that others may spend too: AIMD, as TCP does.

    A limit is the organisation's, so other runs (shards, colleagues) spend
    the same budget, and pacing at the whole learned limit would send 429
    after 429. A 429 for a request dispatched since the share last changed
    cuts it, so the 429s of requests already in flight cut it once, not once
    each: by 15 % when the share is whole and no cut came for a quiet spell
    (a lone run meets a window's edge now and then), else by half. Each
    admitted answer grows it back by :data:`GROW` per slot of the whole limit
    that passed since the last answer, faster the more slots passed without a
    cut, up to the whole limit. An answer stands for at most the slots of one
    request at the current share, so a long hold or a slow answer does not
    undo a cut. Runs that grow alike and are cut alike settle on even shares
    that add up to the limit. Slots, not seconds: a limit of 5 a minute
    probes as rarely, per request, as one of 1,200.

    Requests dispatched before the first answer (the first wave, sent before
    any limit was known) say nothing about the share.
    """

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self._since = math.inf  # later dispatches count: the first answer, then each cut
        self._answered_at = math.inf  # the last answer, from which the next one's slots count
        self._slots = 0.0  # slots grown through since the last cut
        self._cut = False  # whether any 429 cut the share yet

    def answered(self, now: float) -> None:
        """Any answer: the first one starts the count."""
        if self._since == math.inf:
            self._since = self._answered_at = now

    def refused(self, now: float, sent_at: float | None) -> bool:
        """A 429 for a request dispatched at ``sent_at``; whether it cut the share."""
        self.answered(now)
        if sent_at is None or sent_at <= self._since:
            return False
        quiet = self.value == 1.0 and (not self._cut or self._slots >= QUIET_SLOTS)
        self.value = max(MIN_SHARE, self.value * (FIRST_BACKOFF if quiet else BACKOFF))
        self._since = self._answered_at = now
        self._slots, self._cut = 0.0, True
        return True

    def admitted(self, now: float, whole_rate: float) -> None:
        """A 2xx, with the whole limit at ``whole_rate`` per second: grow the share."""
        self.answered(now)
        slots = min(max(0.0, now - self._answered_at) * whole_rate, 1.0 / self.value)
        self._answered_at = now
        self._slots += slots
        if self.value < 1.0:
            accelerate = 1.0 + self._slots / ACCELERATE
            self.value = min(1.0, self.value + GROW * slots * accelerate)
