"""What a failed attempt means: one pure function, :func:`describe`, and its :class:`Failure`.

Every part of a run that reacts to a failure reads the :class:`Failure`, never
the exception's status: the retry glue (retry or not, how long to wait), the
manifest's ``error`` object, the abort message, the pacer's hold after a 429,
and the log line. The exception's class already pins its kind and decision
(see :mod:`pmock_batch.errors`); :func:`describe` adds the few rules that need
more than the class:

- ``x-should-retry: true|false`` overrides a status's decision (never an abort);
- a ``Retry-After`` longer than the policy's ``max_retry_wait`` fails the job
  instead of holding it (the only call to :func:`server_wait`);
- a full disk, a quota or a permission error on the output folder aborts the run;
- an exception from outside the tree is a bug: kind ``internal``.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Protocol, cast

from PIL import Image

from .config import BASE_URL_ENV, DEFAULT_MAX_RETRY_WAIT
from .errors import (
    APIError,
    APIStatusError,
    Decision,
    PmockBatchError,
    ProxyRefusedError,
    ci_headers,
)
from .models import ErrorRecord

__all__ = ["ABORT_ERRNOS", "Failure", "Where", "abort_message", "describe", "server_wait"]

# Disk full, quota, permissions, read-only: every later write would fail the same way.
_CACHE = "_pmock_failure"
ABORT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


class _Policy(Protocol):
    @property
    def max_retry_wait(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, described once."""

    kind: str  # the manifest's error.kind
    decision: Decision
    message: str  # one line, safe to show: the server's text is redacted and escaped already
    status: int | None = None
    code: str | None = None
    param: str | None = None
    wait: float | None = None  # seconds the server asked to wait (retry-after-ms, Retry-After)
    billed: bool = False  # the server had answered 2xx: this attempt was paid for
    ambiguous: bool = (
        False  # not known to be billed, but it may have been (a timeout, a cut stream)
    )
    error: BaseException | None = None  # what was raised, for the abort message's details

    @property
    def reason(self) -> str:
        """The message with its status, for a log line: ``HTTP 503: overloaded``."""
        return f"HTTP {self.status}: {self.message}" if self.status else self.message

    def record(self) -> ErrorRecord:
        """The manifest's ``error`` object."""
        return ErrorRecord(
            kind=self.kind,
            status=self.status,
            code=self.code,
            message=self.message,
            param=self.param,
        )


def server_wait(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, then ``Retry-After``.

    ``Retry-After`` may be seconds or an HTTP date. Returns None when there is
    no usable header. ``headers`` is case-insensitive (as aiohttp's are);
    ``now`` (epoch seconds) is injectable for tests.
    """
    headers = ci_headers(headers)
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
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


def describe(exc: BaseException, policy: _Policy | None = None) -> Failure:
    """What ``exc`` means for its job and for the run. Pure: it reads the exception alone.

    ``policy`` gives ``max_retry_wait`` (default 120 s).
    """
    max_wait = policy.max_retry_wait if policy is not None else DEFAULT_MAX_RETRY_WAIT
    # Described once per exception: the retry rule, the wait, the hook and the record all ask.
    cached = exc.__dict__.get(_CACHE)
    if isinstance(cached, tuple) and cached[0] == max_wait:
        return cast(Failure, cached[1])
    failure = _describe(exc, max_wait)
    exc.__dict__[_CACHE] = (max_wait, failure)
    return failure


def _describe(exc: BaseException, max_wait: float) -> Failure:
    if isinstance(exc, APIStatusError):
        return _status_failure(exc, max_wait)
    if isinstance(exc, PmockBatchError):
        billed = isinstance(exc, APIError) and exc.answered
        ambiguous = isinstance(exc, APIError) and exc.ambiguous and not billed
        return Failure(
            exc.kind, exc.decision, str(exc), billed=billed, ambiguous=ambiguous, error=exc
        )
    if isinstance(exc, Image.DecompressionBombError):  # normally mapped by the sink already
        return Failure("invalid_response", Decision.FAIL, f"decompression bomb: {exc}", error=exc)
    if isinstance(exc, OSError):
        decision = Decision.ABORT if exc.errno in ABORT_ERRNOS else Decision.FAIL
        return Failure("write", decision, f"could not write the image: {exc}", error=exc)
    if isinstance(exc, MemoryError):
        detail = f": {exc}" if str(exc) else ""
        return Failure("memory", Decision.FAIL, f"ran out of memory handling the image{detail}")
    return Failure("internal", Decision.FAIL, f"{type(exc).__name__}: {exc}", error=exc)


def _status_failure(exc: APIStatusError, max_wait: float) -> Failure:
    decision = exc.decision
    should = exc.headers.get("x-should-retry", "").strip().lower()
    if decision is not Decision.ABORT and should in ("true", "false"):
        decision = Decision.RETRY if should == "true" else Decision.FAIL
    wait = server_wait(exc.headers)
    message = str(exc)
    if decision is Decision.RETRY and wait is not None and wait > max_wait:
        decision = Decision.FAIL
        message += (
            f" (the server asked to wait {wait:g}s, more than --max-retry-wait {max_wait:g}s)"
        )
    return Failure(
        exc.kind,
        decision,
        message,
        status=exc.status,
        code=exc.code,
        param=exc.param,
        wait=wait,
        error=exc,
    )


@dataclass(frozen=True, slots=True)
class Where:
    """The facts of a run an abort message names."""

    endpoint: str
    out_dir: str
    api_key_env: str


def abort_message(failure: Failure, where: Where) -> str:
    """One clear sentence: what went wrong for every job, and what to check."""
    text = failure.message
    if failure.kind == "write":
        error = failure.error
        detail = error.strerror if isinstance(error, OSError) and error.strerror else text
        return (
            f"cannot write to the output directory {where.out_dir}: {detail}; "
            "free some disk space or fix its permissions"
        )
    if failure.kind == "proxy":
        if failure.status == 407 or (
            isinstance(failure.error, ProxyRefusedError) and failure.error.status == 407
        ):
            return f"{failure.reason}; check the user and password in --proxy or HTTPS_PROXY"
        return f"{text}; check that the proxy allows this host"
    if failure.kind == "auth":
        return f"the server refused the API key ({failure.reason}); check {where.api_key_env}"
    if failure.kind == "not_found":
        return (
            f"{where.endpoint} was not found ({failure.reason}); check --base-url or {BASE_URL_ENV}"
        )
    if failure.kind == "quota":
        return f"the account has no quota left ({failure.reason}); check its plan and billing"
    if failure.kind == "certificate":
        return (
            f"{text}; pass --ca-bundle FILE (or set SSL_CERT_FILE) with the CA that signed it, "
            "such as your proxy's or gateway's"
        )
    return text
