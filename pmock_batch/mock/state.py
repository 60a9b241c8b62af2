"""Everything one running mock holds: options, stats, caches, the limiter, the clock, and the
Batch API's files and batches."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import time
from collections.abc import Callable

from aiohttp import web

from .batches import BatchStore
from .files import FileStore
from .images import ImageCache
from .lru import BytesLRU
from .options import MockOptions
from .ratelimit import Limiter, make_limiter
from .stats import MockStats

__all__ = ["FILE_STORE_MAX_BYTES", "FILE_STORE_MAX_ENTRIES", "STATE", "MockState", "authorized"]

FILE_STORE_MAX_ENTRIES = 256  # images kept for response_format "url"
FILE_STORE_MAX_BYTES = 512 * 1024 * 1024


class MockState:
    """The shared state of one mock app."""

    def __init__(self, options: MockOptions, *, clock: Callable[[], float]) -> None:
        self.options = options
        self.clock = clock
        self.stats = MockStats(log_limit=options.log_limit)
        self.images = ImageCache()
        self.files: BytesLRU[str] = BytesLRU(
            max_entries=FILE_STORE_MAX_ENTRIES, max_bytes=FILE_STORE_MAX_BYTES
        )
        self.stored_files = FileStore()  # the Files API's (uploads, batch output)
        epoch = time.time() - clock()  # Unix seconds at clock 0: batch timestamps move with it
        self.batches = BatchStore(self.stored_files, clock=clock, epoch=epoch)
        self.limiter: Limiter | None = None
        if options.rpm:
            self.limiter = make_limiter(
                options.limiter, options.rpm, clock=clock, burst=options.burst
            )
        self.closing = asyncio.Event()  # set when the server shuts down: sleepers wake
        self._random = random.Random()  # used only when no seed is given

    def rng(self, purpose: str, prompt: str, attempt: int) -> random.Random:
        """Randomness for one request: with a seed, a pure function of (purpose, prompt, attempt).

        Deriving it per request, rather than drawing from one stream, keeps a
        seeded run reproducible even when requests arrive in a different order.
        """
        if self.options.seed is None:
            return self._random
        return random.Random(f"{self.options.seed}|{purpose}|{attempt}|{prompt}")

    def latency(self, prompt: str, attempt: int) -> float:
        """Seconds to wait before answering: ``latency`` plus up to ``latency_jitter``."""
        jitter = self.options.latency_jitter
        extra = self.rng("jitter", prompt, attempt).uniform(0.0, jitter) if jitter else 0.0
        return self.options.latency + extra

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake early when the server shuts down."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)

    def reset(self) -> None:
        """Zero the stats (and so every prompt's attempt count) and the rate limit."""
        self.stats.reset()
        if self.limiter is not None:
            self.limiter.reset()


STATE = web.AppKey("pmock_batch.mock.state", MockState)


def authorized(header: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <key>`` (compared in constant time)."""
    scheme, _, token = (header or "").partition(" ")
    given = token.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, key.encode("utf-8"))
