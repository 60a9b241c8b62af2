"""The retry policy: a pure function of the failure, and a Retry-After-aware wait.

:func:`classify` decides, from the exception an attempt raised (status,
headers, error body and exception type), whether to retry the attempt, fail
the job, or abort the whole run. :func:`server_wait` reads how long the
server asked us to wait. :func:`backoff` is exponential backoff with full
jitter. :class:`RetryPolicy` plugs the three into tenacity.

A failure after the server answered 2xx is :func:`billed`: the generation was
done and paid for, so it is retried (with a new, paid generation) at most
``max_billed_retries`` times per image, whatever ``max_attempts`` allows.
A failed download of a 2xx's image URL is retried alone, a GET and not a
new POST (:func:`download_retryable`, :meth:`RetryPolicy.download_retrying`).
"""

from __future__ import annotations

import enum
import errno
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt
from tenacity.retry import retry_base
from tenacity.wait import wait_base

from .config import (
    DEFAULT_DOWNLOAD_ATTEMPTS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BILLED_RETRIES,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_DELAY,
)
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    DownloadError,
    InvalidResponseError,
    ProxyRefusedError,
    UntrustedCertificateError,
)

__all__ = [
    "DEFAULT_MAX_RETRY_WAIT",
    "RETRY_STATUSES",
    "Decision",
    "RetryPolicy",
    "backoff",
    "billed",
    "classify",
    "download_retryable",
    "server_wait",
]

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Disk full, quota, permissions, read-only: every later write would fail the same way.
ABORT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
ABORT_STATUSES = frozenset({401, 403, 404, 407})  # 407: the proxy wants other credentials
PROXY_ABORT_STATUSES = frozenset({403, 407})  # a CONNECT refused for the host or credentials
DEFAULT_MAX_RETRY_WAIT = 120.0


class Decision(enum.Enum):
    RETRY = "retry"  # try this attempt again after a wait
    FAIL = "fail"  # record the job as failed; the other jobs carry on
    ABORT = "abort"  # every other job would fail the same way: stop the run


def classify(exc: BaseException) -> Decision:
    """Decide what a failed attempt means. Pure: it looks only at the exception."""
    if isinstance(exc, APIStatusError):
        if exc.status == 404 and exc.code == "model_not_found":
            return Decision.FAIL  # one job's model is wrong; the endpoint is fine
        if exc.status in ABORT_STATUSES:
            return Decision.ABORT
        if exc.status == 429 and exc.code == "insufficient_quota":
            return Decision.ABORT
        should = exc.headers.get("x-should-retry", "").strip().lower()
        if should == "true":
            return Decision.RETRY
        if should == "false":
            return Decision.FAIL
        if exc.status in RETRY_STATUSES or exc.status >= 500:
            return Decision.RETRY
        return Decision.FAIL
    if isinstance(exc, UntrustedCertificateError):
        return Decision.ABORT  # the trusted CAs are wrong: every request would fail the same way
    if isinstance(exc, ProxyRefusedError) and exc.status in PROXY_ABORT_STATUSES:
        return Decision.ABORT  # the proxy refuses our credentials or the host: so it will again
    if isinstance(exc, APIConnectionError | InvalidResponseError):
        return Decision.RETRY
    if isinstance(exc, OSError) and exc.errno in ABORT_ERRNOS:
        return Decision.ABORT
    return Decision.FAIL


def billed(exc: BaseException) -> bool:
    """The attempt failed after the server answered 2xx, so it was paid for.

    That is any unusable 2xx body or image (:class:`InvalidResponseError`),
    and a connection cut or a timeout once a 2xx body had started (``answered``).
    """
    return isinstance(exc, APIError) and exc.answered


def download_retryable(exc: BaseException) -> bool:
    """A failed GET of an image URL worth trying again: cut, refused, timed out, or non-2xx."""
    return isinstance(exc, APIConnectionError | DownloadError)


def server_wait(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, then ``Retry-After``.

    ``Retry-After`` may be seconds or an HTTP date. Returns None when there is
    no usable header. ``now`` (epoch seconds) is injectable for tests.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # asctime and "-0000" forms: HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def backoff(
    attempt: int,
    *,
    rng: random.Random | None = None,
    initial: float = INITIAL_RETRY_DELAY,
    cap: float = MAX_RETRY_DELAY,
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, initial * 2**(attempt-1))]."""
    ceiling = min(cap, initial * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0.0, ceiling)


@dataclass(slots=True)
class RetryPolicy:
    """The run's retry settings, turned into tenacity strategies.

    ``sleep`` is injectable so that tests never sleep through real backoff.
    ``on_retry`` is told about every retry (attempt state, wait in seconds).
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    initial: float = INITIAL_RETRY_DELAY
    cap: float = MAX_RETRY_DELAY
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Awaitable[None]] | None = None
    max_billed_retries: int = DEFAULT_MAX_BILLED_RETRIES
    download_attempts: int = DEFAULT_DOWNLOAD_ATTEMPTS

    def wait_for(self, exc: BaseException, attempt: int) -> float:
        """How long to wait before the next attempt after ``exc`` ended attempt ``attempt``."""
        if isinstance(exc, APIStatusError):
            asked = server_wait(exc.headers)
            if asked is not None:
                return asked
        return backoff(attempt, rng=self.rng, initial=self.initial, cap=self.cap)

    def wait_too_long(self, exc: BaseException) -> float | None:
        """The server's asked-for wait, if it is longer than ``max_retry_wait``; else None."""
        if isinstance(exc, APIStatusError):
            asked = server_wait(exc.headers)
            if asked is not None and asked > self.max_retry_wait:
                return asked
        return None

    def should_retry(self, exc: BaseException, *, billed_retries: int = 0) -> bool:
        """Retry after ``exc``? ``billed_retries``: billed failures this image already retried."""
        if classify(exc) is not Decision.RETRY or self.wait_too_long(exc) is not None:
            return False
        return not billed(exc) or billed_retries < self.max_billed_retries

    def retrying(
        self, *, before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None
    ) -> AsyncRetrying:
        """A fresh tenacity controller for one image's attempts."""
        policy = self
        billed_retries = 0  # of this image: tenacity asks once per failed attempt

        class _Retry(retry_base):
            def __call__(self, retry_state: RetryCallState) -> bool:
                nonlocal billed_retries
                outcome = retry_state.outcome
                if outcome is None or not outcome.failed:
                    return False
                exc = outcome.exception()
                if exc is None or not policy.should_retry(exc, billed_retries=billed_retries):
                    return False
                billed_retries += billed(exc)
                return True

        return self._controller(self.max_attempts, _Retry(), before_sleep)

    def download_retrying(
        self, *, before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None
    ) -> AsyncRetrying:
        """A fresh tenacity controller for the GETs of one image URL (no new POST)."""

        class _Retry(retry_base):
            def __call__(self, retry_state: RetryCallState) -> bool:
                outcome = retry_state.outcome
                exc = outcome.exception() if outcome is not None and outcome.failed else None
                return exc is not None and download_retryable(exc)

        return self._controller(self.download_attempts, _Retry(), before_sleep)

    def _controller(
        self,
        attempts: int,
        retry: retry_base,
        before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None,
    ) -> AsyncRetrying:
        policy = self

        class _Wait(wait_base):
            def __call__(self, retry_state: RetryCallState) -> float:
                outcome = retry_state.outcome
                exc = outcome.exception() if outcome is not None else None
                if exc is None:
                    return 0.0
                return policy.wait_for(exc, retry_state.attempt_number)

        kwargs: dict[str, object] = {}
        if self.sleep is not None:
            kwargs["sleep"] = self.sleep
        return AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=_Wait(),
            retry=retry,
            reraise=True,
            before_sleep=before_sleep,
            **kwargs,  # type: ignore[arg-type]
        )
