"""The one exception tree of pmock-batch.

::

    PmockBatchError                    kind        decision
    ├── UsageError                     bad flags or environment: exit 2, nothing sent
    │   └── MergeConflictError         `merge`: one job, two different ok results: exit 2
    ├── LockedError                    another run holds the output directory: exit 4
    ├── OutputPathError                write       fail      outside OUT, or through a link
    ├── InputFileError                 input       fail      an edit's file changed after its check
    └── APIError                       anything that went wrong talking to the server
        ├── APIStatusError             the server answered a non-2xx status:
        │   ├── BadRequestError        bad_request fail      any other 4xx
        │   ├── ModerationError        moderation  fail      a content-policy rejection
        │   ├── AuthenticationError    auth        abort     401, 403
        │   ├── ProxyAuthenticationError proxy     abort     407
        │   ├── NotFoundError          not_found   abort     404: a wrong base URL
        │   │   └── ModelNotFoundError not_found   fail      404 model_not_found: one job's model
        │   ├── ConflictError          conflict    retry     408, 409
        │   ├── RateLimitError         rate_limit  retry     429
        │   │   └── QuotaError         quota       abort     429 insufficient_quota
        │   └── ServerError            server      retry     5xx
        ├── APIConnectionError         connection  retry     refused, reset, dropped, cut off
        │   ├── CannotConnectError     connection  retry     never reached the server
        │   ├── APITimeoutError        timeout     retry     timed out (it may have been billed)
        │   ├── IncompleteStreamError  stream      retry     a stream ended before its image
        │   ├── UntrustedCertificateError certificate abort  the TLS certificate is not trusted
        │   └── ProxyRefusedError      proxy       abort (403, 407) or retry: CONNECT refused
        ├── InvalidResponseError       invalid_response retry a 2xx whose body or image is unusable
        │   └── DownloadError          invalid_response retry its image URL answered non-2xx
        └── ResponseTooLargeError      invalid_response fail  an image over the size cap

Each class pins its ``kind`` (the manifest's ``error.kind``) and its
``decision``: what it means for the run. The status becomes a class exactly
once, in :func:`status_error`, where the client builds the exception; after
that, code reads the class, never the status. :func:`pmock_batch.failures.describe`
turns any exception into a :class:`~pmock_batch.failures.Failure`; the few
rules that are not the class's alone (``x-should-retry``, a wait longer than
allowed, disk-full ``OSError``) live there.

Foreign exceptions (aiohttp, asyncio timeouts, JSON and base64 errors) are
translated into this tree in exactly one place, :mod:`pmock_batch.client`,
always with ``raise ... from exc`` so the cause is kept.

An :class:`APIError` with ``answered`` set came after the server had answered
2xx: that attempt was billed. One with ``ambiguous`` set (a timeout; a stream
cut after its partial images) may have been: the server was at work.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CannotConnectError",
    "ConflictError",
    "Decision",
    "DownloadError",
    "IncompleteStreamError",
    "InputFileError",
    "InvalidResponseError",
    "LockedError",
    "MergeConflictError",
    "ModelNotFoundError",
    "ModerationError",
    "NotFoundError",
    "OutputPathError",
    "PmockBatchError",
    "Problem",
    "ProxyAuthenticationError",
    "ProxyRefusedError",
    "QuotaError",
    "RateLimitError",
    "ResponseTooLargeError",
    "ServerError",
    "UntrustedCertificateError",
    "UsageError",
    "ci_headers",
    "status_error",
]

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def ci_headers(headers: Mapping[str, str]) -> Headers:
    """``headers`` as a case-insensitive mapping: as is when it already is one (aiohttp's)."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers
    return CIMultiDict(headers)


class Decision(enum.Enum):
    """What a failed attempt means for the run."""

    RETRY = "retry"  # try this attempt again after a wait
    FAIL = "fail"  # record the job as failed; the other jobs carry on
    ABORT = "abort"  # every other job would fail the same way: stop the run


class PmockBatchError(Exception):
    """Base class of every error pmock-batch raises on purpose."""

    kind: ClassVar[str] = "internal"
    decision: Decision = Decision.FAIL


class UsageError(PmockBatchError):
    """A bad flag, a missing key, or an environment the run cannot start in."""


class MergeConflictError(UsageError):
    """``merge`` found one job with two different ok fingerprints; nothing was merged."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One readable problem with one line of a job file."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class LockedError(PmockBatchError):
    """Another run holds the lock on the output directory."""


class OutputPathError(PmockBatchError):
    """An output path would leave OUT, or go through (or replace) a symbolic link below it."""

    kind = "write"


class InputFileError(PmockBatchError):
    """An edit's input file is gone, replaced or changed since it was checked and hashed."""

    kind = "input"


class APIError(PmockBatchError):
    """Something went wrong talking to the image server."""

    kind = "api"
    answered: bool = False  # the server had answered 2xx (and billed) before this went wrong
    ambiguous: bool = False  # the server may have done (and billed) the work: a retry may pay twice


class APIStatusError(APIError):
    """The server answered with a non-2xx status, parsed from OpenAI's error shape.

    Build one with :func:`status_error`, which picks the subclass for the status.
    ``headers`` stay a case-insensitive mapping, as aiohttp gives them.
    """

    kind = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.param = param
        self.headers: Headers = ci_headers(headers or {})


class BadRequestError(APIStatusError):
    """A 4xx that refuses this request: a validation error, an unknown parameter."""


class ModerationError(APIStatusError):
    """A content-policy rejection (``moderation_blocked`` and kin): a verdict on one prompt."""

    kind = "moderation"


class AuthenticationError(APIStatusError):
    """401 or 403: the key is wrong or missing, for every job alike."""

    kind = "auth"
    decision = Decision.ABORT


class ProxyAuthenticationError(APIStatusError):
    """407 on a plain-HTTP request: the proxy wants other credentials."""

    kind = "proxy"
    decision = Decision.ABORT


class NotFoundError(APIStatusError):
    """404: the endpoint is not there, so the base URL is wrong for every job."""

    kind = "not_found"
    decision = Decision.ABORT


class ModelNotFoundError(NotFoundError):
    """404 ``model_not_found``: one job's model is wrong; the endpoint is fine."""

    decision = Decision.FAIL


class ConflictError(APIStatusError):
    """408 or 409: worth another try, as OpenAI's SDKs do."""

    kind = "conflict"
    decision = Decision.RETRY


class RateLimitError(APIStatusError):
    """429: too many requests; wait and try again."""

    kind = "rate_limit"
    decision = Decision.RETRY


class QuotaError(RateLimitError):
    """429 ``insufficient_quota``: no quota left, for every job alike."""

    kind = "quota"
    decision = Decision.ABORT


class ServerError(APIStatusError):
    """A 5xx: the server failed; worth another try."""

    kind = "server"
    decision = Decision.RETRY


def _is_moderation(code: str | None, type_: str | None) -> bool:
    text = f"{code or ''} {type_ or ''}".lower()
    return "moderation" in text or "content_policy" in text or "safety" in text


def _status_class(status: int, code: str | None, type_: str | None) -> type[APIStatusError]:
    if status >= 500:
        return ServerError
    if status in (401, 403):
        return AuthenticationError
    if status == 407:
        return ProxyAuthenticationError
    if status == 404:
        return ModelNotFoundError if code == "model_not_found" else NotFoundError
    if status in (408, 409):
        return ConflictError
    if status == 429:
        return QuotaError if code == "insufficient_quota" else RateLimitError
    if _is_moderation(code, type_):
        return ModerationError
    if 400 <= status < 500:
        return BadRequestError
    return APIStatusError  # a 1xx or 3xx the client did not follow: no answer it can use


def status_error(
    message: str,
    *,
    status: int,
    code: str | None = None,
    type: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> APIStatusError:
    """The :class:`APIStatusError` subclass for ``status`` (and ``code``): the one status switch."""
    cls = _status_class(status, code, type)
    return cls(message, status=status, code=code, type=type, param=param, headers=headers)


class APIConnectionError(APIError):
    """No usable answer: connection refused, reset or dropped, or a body cut off."""

    kind = "connection"
    decision = Decision.RETRY


class CannotConnectError(APIConnectionError):
    """No connection could be opened: refused, a DNS failure, a TLS failure, a connect timeout.

    Nothing reached the server, so nothing was billed. ``host`` and ``port``
    say where it tried; ``reason`` is the operating system's word for it.
    """

    def __init__(
        self, message: str, *, host: str, port: int | None, reason: str, via_proxy: bool = False
    ) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.reason = reason
        self.via_proxy = via_proxy  # host and port are the proxy's

    @property
    def where(self) -> str:
        """``host:port``, as tried."""
        return f"{self.host}:{self.port}" if self.port is not None else self.host


class APITimeoutError(APIConnectionError):
    """The request timed out. The server may have done (and billed) the work."""

    kind = "timeout"
    ambiguous = True


class IncompleteStreamError(APIConnectionError):
    """A streamed answer ended before its ``completed`` event: an ``error`` event, or a
    body that simply ended. (A cut or a timeout keeps its own class.) Retried; ambiguous
    when partial images had arrived, since the server was then generating."""

    kind = "stream"


class UntrustedCertificateError(APIConnectionError):
    """The server's TLS certificate failed verification. Retrying would not help.

    A TLS-inspecting proxy or a private gateway whose CA is not trusted: every
    request would fail the same way, so :func:`pmock_batch.retry.classify`
    aborts the run.
    """

    kind = "certificate"
    decision = Decision.ABORT


class ProxyRefusedError(APIConnectionError):
    """The proxy answered the CONNECT for an HTTPS URL with an error status.

    407 (bad or missing credentials) and 403 (a host the proxy forbids) abort
    the run; 502, 503 or 504 (the proxy could not reach the server) are retried.
    A plain-HTTP request's 407 comes back as an :class:`APIStatusError`.
    """

    kind = "proxy"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
        if status in (403, 407):  # the proxy refuses our credentials or the host: so it will again
            self.decision = Decision.ABORT


class InvalidResponseError(APIError):
    """A 2xx answer whose body is not JSON, has no image, or whose image is unusable."""

    kind = "invalid_response"
    decision = Decision.RETRY
    answered = True  # always: it is about a 2xx's body


class DownloadError(InvalidResponseError):
    """Downloading the image URL of a 2xx answered with a non-2xx status (retried alone)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ResponseTooLargeError(APIError):
    """An image download is larger than the cap. Retrying would not help."""

    kind = "invalid_response"
    decision = Decision.FAIL
