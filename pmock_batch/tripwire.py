"""Stop early when every job would fail the same way, before anything has succeeded.

Two failures are not one job's problem but the whole run's, when they come
first: a server that cannot be reached (a typo'd port, a wrong host, a TLS
failure) and a rejection that every request shares (a field the server does
not accept, on every line). Without a stop, a 10,000-job cron run grinds
through them for hours. :class:`Tripwire` watches the first attempts and says
when to abort; it is pure (no I/O, no clock) and disarms for good once any
request succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import BASE_URL_ENV
from .errors import APIStatusError, CannotConnectError
from .failures import Failure

__all__ = ["EARLY_ABORT_AFTER", "Tripwire"]

EARLY_ABORT_AFTER = 3  # failed connections, or identical rejections of distinct jobs


@dataclass(slots=True)
class Tripwire:
    """Watches a run's first answers; returns an abort reason when it trips."""

    after: int = EARLY_ABORT_AFTER
    _answered: bool = False  # the server answered something: it can be reached
    _succeeded: bool = False  # a request succeeded: the jobs are fine
    _connect_failures: int = 0
    _rejections: dict[str, tuple[int, str | None, str | None]] = field(default_factory=dict)

    def answered(self) -> None:
        """The server sent an HTTP answer, whatever its status."""
        self._answered = True

    def succeeded(self) -> None:
        """A request succeeded: nothing is wrong with every job."""
        self._answered = self._succeeded = True

    def connect_failed(self, exc: CannotConnectError) -> str | None:
        """An attempt could not connect. Returns the abort reason once it trips."""
        if self._answered:
            return None
        self._connect_failures += 1
        if self._connect_failures < self.after:
            return None
        check = (
            "--proxy or HTTPS_PROXY/HTTP_PROXY"
            if exc.via_proxy
            else f"--base-url or {BASE_URL_ENV}"
        )
        proxy = "the proxy " if exc.via_proxy else ""
        return (
            f"cannot connect to {proxy}{exc.where} ({exc.reason}): {self._connect_failures} "
            f"attempts failed and none reached the server; check {check}"
        )

    def rejected(self, job_id: str, failure: Failure) -> str | None:
        """A job failed. Returns the abort reason once it trips.

        Trips when the first ``after`` distinct jobs that were rejected with a
        4xx were all rejected the same way (status, code and param), before any
        success. Moderation is a verdict on one prompt, so it never counts.
        """
        status = failure.status
        if self._succeeded or status is None or not 400 <= status < 500:
            return None
        if failure.kind not in ("bad_request", "not_found"):  # refused at once, as asked
            return None  # (moderation judges one prompt; 429s and 409s ran out of retries)
        if len(self._rejections) >= self.after or job_id in self._rejections:
            return None
        self._rejections[job_id] = (status, failure.code, failure.param)
        if len(self._rejections) < self.after or len(set(self._rejections.values())) != 1:
            return None
        param = f" (param {failure.param})" if failure.param else ""
        error = failure.error
        message = error.message if isinstance(error, APIStatusError) else failure.message
        return (
            f"every request was rejected: {message}{param}; "
            "check the job file or the capability table"
        )
