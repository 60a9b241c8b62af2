"""The one exception tree of pmock-batch.

::

    PmockBatchError
    ├── UsageError                 bad flags or environment: exit 2, nothing sent
    ├── JobFileError               the job file has invalid lines: exit 2, nothing sent
    ├── LockedError                another run holds the output directory: exit 4
    ├── OutputPathError            a path outside OUT, or through a link below it (kind write)
    └── APIError                   anything that went wrong talking to the server
        ├── APIStatusError         the server answered with a non-2xx status
        ├── APIConnectionError     no usable answer: refused, reset, dropped, cut off
        │   ├── CannotConnectError never reached the server: refused, DNS, TLS, connect timeout
        │   ├── APITimeoutError    the request timed out (it may have been billed)
        │   ├── UntrustedCertificateError  the server's TLS certificate is not trusted
        │   └── ProxyRefusedError  the proxy refused to open a tunnel (CONNECT)
        ├── InvalidResponseError   a 2xx whose body or image is unusable (retried)
        │   └── DownloadError      a 2xx's image URL answered a non-2xx status
        └── ResponseTooLargeError  an image download over the size cap (not retried)

Disk-full and permission errors on the output directory stay ``OSError``;
:func:`pmock_batch.retry.classify` makes them abort the run.

Foreign exceptions (aiohttp, asyncio timeouts, JSON and base64 errors) are
translated into this tree in exactly one place, :mod:`pmock_batch.client`,
always with ``raise ... from exc`` so the cause is kept.

An :class:`APIError` with ``answered`` set came after the server had answered
2xx: that attempt was billed (see :func:`pmock_batch.retry.billed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "CannotConnectError",
    "DownloadError",
    "InvalidResponseError",
    "JobFileError",
    "LockedError",
    "OutputPathError",
    "PmockBatchError",
    "Problem",
    "ProxyRefusedError",
    "ResponseTooLargeError",
    "UntrustedCertificateError",
    "UsageError",
]


class PmockBatchError(Exception):
    """Base class of every error pmock-batch raises on purpose."""


class UsageError(PmockBatchError):
    """A bad flag, a missing key, or an environment the run cannot start in."""


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


class JobFileError(PmockBatchError):
    """The job file has invalid lines. ``problems`` holds the first ones found."""

    def __init__(self, problems: list[Problem], total: int) -> None:
        self.problems = problems
        self.total = total
        super().__init__(f"{total} invalid line(s) in the job file")


class LockedError(PmockBatchError):
    """Another run holds the lock on the output directory."""


class OutputPathError(PmockBatchError):
    """An output path would leave OUT, or go through (or replace) a symbolic link below it."""


class APIError(PmockBatchError):
    """Something went wrong talking to the image server."""

    kind: str = "api"
    answered: bool = False  # the server had answered 2xx (and billed) before this went wrong


class APIStatusError(APIError):
    """The server answered with a non-2xx status, parsed from OpenAI's error shape."""

    kind = "http"

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
        # Lower-cased names: HTTP header names are case-insensitive.
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in (headers or {}).items()}

    @property
    def is_moderation(self) -> bool:
        """True for content-policy rejections (``moderation_blocked`` and kin)."""
        text = f"{self.code or ''} {self.type or ''}".lower()
        return "moderation" in text or "content_policy" in text or "safety" in text


class APIConnectionError(APIError):
    """No usable answer: connection refused, reset or dropped, or a body cut off."""

    kind = "connection"


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


class UntrustedCertificateError(APIConnectionError):
    """The server's TLS certificate failed verification. Retrying would not help.

    A TLS-inspecting proxy or a private gateway whose CA is not trusted: every
    request would fail the same way, so :func:`pmock_batch.retry.classify`
    aborts the run.
    """

    kind = "certificate"


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


class InvalidResponseError(APIError):
    """A 2xx answer whose body is not JSON, has no image, or whose image is unusable."""

    kind = "invalid_response"
    answered = True  # always: it is about a 2xx's body


class DownloadError(InvalidResponseError):
    """Downloading the image URL of a 2xx answered with a non-2xx status (retried alone)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ResponseTooLargeError(APIError):
    """An image download is larger than the cap. Retrying would not help."""

    kind = "invalid_response"
