"""Tenacity glue over :func:`pmock_batch.failures.describe`, with an injectable sleep.

:class:`RetryPolicy` turns a run's retry settings into tenacity controllers.
Whether to retry, and how long to wait, come from the attempt's
:class:`~pmock_batch.failures.Failure`: its decision and the wait the server
asked for, else :func:`backoff` (exponential, full jitter). A billed failure
(the server had answered 2xx) is retried at most ``max_billed_retries`` times
per image, whatever ``max_attempts`` allows. A failed download of a 2xx's
image URL is retried alone, a GET and not a new POST
(:meth:`RetryPolicy.download_retrying`).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt
from tenacity.retry import retry_base
from tenacity.wait import wait_base

from .config import (
    DEFAULT_DOWNLOAD_ATTEMPTS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BILLED_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_DELAY,
)
from .errors import APIConnectionError, Decision, DownloadError
from .failures import Failure, describe

__all__ = ["OnRetry", "RetryPolicy", "backoff", "download_retryable"]

OnRetry = Callable[[Failure, int, float], None]  # (failure, attempt number, wait in seconds)


def download_retryable(exc: BaseException) -> bool:
    """A failed GET of an image URL worth trying again: cut, refused, timed out, or non-2xx."""
    return isinstance(exc, APIConnectionError | DownloadError)


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
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    initial: float = INITIAL_RETRY_DELAY
    cap: float = MAX_RETRY_DELAY
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Awaitable[None]] | None = None
    max_billed_retries: int = DEFAULT_MAX_BILLED_RETRIES
    download_attempts: int = DEFAULT_DOWNLOAD_ATTEMPTS

    def wait_for(self, failure: Failure, attempt: int) -> float:
        """How long to wait before the next attempt after ``failure`` ended attempt ``attempt``."""
        if failure.wait is not None:
            return failure.wait
        return backoff(attempt, rng=self.rng, initial=self.initial, cap=self.cap)

    def should_retry(self, failure: Failure, *, billed_retries: int = 0) -> bool:
        """Retry after ``failure``, with ``billed_retries`` billed ones retried already?"""
        if failure.decision is not Decision.RETRY:
            return False
        return not failure.billed or billed_retries < self.max_billed_retries

    def with_sleep(self, sleep: Callable[[float], Awaitable[None]]) -> RetryPolicy:
        """This policy with ``sleep`` as its wait, unless one was injected already."""
        return self if self.sleep is not None else replace(self, sleep=sleep)

    def retrying(self, *, on_retry: OnRetry | None = None) -> AsyncRetrying:
        """A fresh tenacity controller for one image's attempts.

        ``on_retry`` is told about each retry, before its wait, with the failure
        that caused it: described once, then read by the retry rule, the wait
        and the hook alike.
        """
        policy = self
        billed_retries = 0  # of this image: tenacity asks once per failed attempt

        class _Retry(retry_base):
            def __call__(self, retry_state: RetryCallState) -> bool:
                nonlocal billed_retries
                failure = _failure(retry_state, policy)
                if failure is None or not policy.should_retry(
                    failure, billed_retries=billed_retries
                ):
                    return False
                billed_retries += failure.billed
                return True

        def before_sleep(retry_state: RetryCallState) -> None:
            failure = _failure(retry_state, policy)
            if on_retry is not None and failure is not None:
                on_retry(failure, retry_state.attempt_number, retry_state.upcoming_sleep)

        return self._controller(self.max_attempts, _Retry(), before_sleep)

    def download_retrying(self, *, on_retry: OnRetry | None = None) -> AsyncRetrying:
        """A fresh tenacity controller for the GETs of one image URL (no new POST)."""
        policy = self

        class _Retry(retry_base):
            def __call__(self, retry_state: RetryCallState) -> bool:
                outcome = retry_state.outcome
                exc = outcome.exception() if outcome is not None and outcome.failed else None
                return exc is not None and download_retryable(exc)

        def before_sleep(retry_state: RetryCallState) -> None:
            failure = _failure(retry_state, policy)
            if on_retry is not None and failure is not None:
                on_retry(failure, retry_state.attempt_number, retry_state.upcoming_sleep)

        return self._controller(self.download_attempts, _Retry(), before_sleep)

    def _controller(
        self,
        attempts: int,
        retry: retry_base,
        before_sleep: Callable[[RetryCallState], None],
    ) -> AsyncRetrying:
        policy = self

        class _Wait(wait_base):
            def __call__(self, retry_state: RetryCallState) -> float:
                failure = _failure(retry_state, policy)
                return (
                    0.0 if failure is None else policy.wait_for(failure, retry_state.attempt_number)
                )

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


def _failure(retry_state: RetryCallState, policy: RetryPolicy) -> Failure | None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None and outcome.failed else None
    return describe(exc, policy) if exc is not None else None
