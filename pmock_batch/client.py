"""The HTTP client: one aiohttp session for the run.

This is the only module that imports aiohttp on the client side, and the only
place its exceptions (and asyncio timeouts) are translated into
:mod:`pmock_batch.errors`, by :func:`_mapped`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from pydantic import ValidationError

from . import __version__
from .config import RunConfig
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    CannotConnectError,
    DownloadError,
    InvalidResponseError,
    ProxyRefusedError,
    ResponseTooLargeError,
    UntrustedCertificateError,
    UsageError,
)
from .models import ImagesResponse
from .network import ProxyRoutes, ssl_context

__all__ = ["BodySink", "ImagesClient", "Reply", "redact"]

# Bodies larger than this are parsed in a worker thread, so that a 20 MB
# base64 string never stalls the event loop.
_THREAD_PARSE_BYTES = 256 * 1024
_MAX_ERROR_CHARS = 2000
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024  # an image URL larger than this is refused
_STREAM_CHUNK = 256 * 1024  # the most a streamed read hands over at once
_MAX_ERROR_BODY = 1 << 20  # an error body is read up to this size
_MIN_REDACTED = 6  # header values shorter than this are not secrets worth redacting from text


class BodySink(Protocol):
    """Where a streamed image goes (see :class:`pmock_batch.output.ImageSink`)."""

    async def feed_json(self, chunk: bytes) -> None: ...

    async def end_json(self) -> bytes: ...

    async def feed_raw(self, data: bytes) -> None: ...


def redact(text: str, secret: str | None) -> str:
    """Remove a secret (and its common echoes) from text before it is shown or stored."""
    if not secret:
        return text
    text = text.replace(secret, "[redacted]")
    if len(secret) > 12:
        # Servers echo a key's ends: "sk-abc123**********wxyz" or "sk-abc12...wxyz".
        text = re.sub(re.escape(secret[:8]) + r"\S*", "[redacted]", text)
        text = re.sub(r"[*.\u2026]{3,}" + re.escape(secret[-4:]), "[redacted]", text)
    return text


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """Read a body up to ``cap`` bytes, however it is split into packets."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
        chunks.append(chunk[: cap - size])
        size += len(chunk)
        if size >= cap:
            break
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer: the parsed body, its status and headers."""

    body: ImagesResponse
    status: int
    headers: Mapping[str, str]


def _parse_images(raw: bytes) -> ImagesResponse:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidResponseError(f"the server's 200 answer is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not data.get("data"):
        raise InvalidResponseError("the server's 200 answer has no image in 'data'")
    try:
        return ImagesResponse.model_validate(data)
    except ValidationError as exc:
        raise InvalidResponseError(
            f"the server's 200 answer has an unexpected shape: {exc}"
        ) from exc


def _status_error(
    status: int, raw: bytes, headers: Mapping[str, str], secrets: tuple[str, ...]
) -> APIStatusError:
    """Build an APIStatusError from OpenAI's error shape, or from whatever text came back."""
    message, code, type_, param = "", None, None, None
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or "")
        code = str(err["code"]) if err.get("code") is not None else None
        type_ = str(err["type"]) if err.get("type") is not None else None
        param = str(err["param"]) if err.get("param") is not None else None
    elif isinstance(err, str):
        message = err
    if not message:
        message = raw[:_MAX_ERROR_CHARS].decode("utf-8", "replace").strip() or f"HTTP {status}"
    message = message[:_MAX_ERROR_CHARS]
    for secret in secrets:
        message = redact(message, secret)
    return APIStatusError(
        message,
        status=status,
        code=code,
        type=type_,
        param=param,
        headers=headers,
    )


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    """The operating system's word for a failed connection: "Connection refused", not
    asyncio's "Connect call failed (...)"."""
    err = exc.os_error
    reason = os.strerror(err.errno) if err.errno and err.errno > 0 else ""
    return reason or err.strerror or str(err) or type(err).__name__


@contextmanager
def _mapped(what: str, timeout: float, url: str) -> Iterator[None]:
    """Translate aiohttp and asyncio failures into the project's exception tree."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # never reached the server: not billed
        parts = urlsplit(url)
        raise CannotConnectError(
            f"{what}: could not connect in time",
            host=parts.hostname or url,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            reason="connect timeout",
        ) from exc
    except TimeoutError as exc:  # includes aiohttp's read timeouts; the work may be billed
        raise APITimeoutError(f"{what}: no complete answer within {timeout:g}s") from exc
    except aiohttp.ClientPayloadError as exc:
        raise APIConnectionError(f"{what}: the answer was cut off mid-transfer") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise APIConnectionError(f"{what}: the server closed the connection") from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        cert = exc.certificate_error
        reason = getattr(cert, "verify_message", None) or cert
        raise UntrustedCertificateError(
            f"{what}: the TLS certificate of {exc.host}:{exc.port} is not trusted: {reason}"
        ) from exc
    except aiohttp.ClientConnectorSSLError as exc:
        raise APIConnectionError(
            f"{what}: the TLS handshake with {exc.host}:{exc.port} failed: {exc.os_error}"
        ) from exc
    except aiohttp.ClientProxyConnectionError as exc:  # the proxy's address; never its password
        raise CannotConnectError(
            f"{what}: cannot connect to the proxy {exc.host}:{exc.port} ({_os_reason(exc)})",
            host=exc.host,
            port=exc.port,
            reason=_os_reason(exc),
            via_proxy=True,
        ) from exc
    except aiohttp.ClientHttpProxyError as exc:
        raise ProxyRefusedError(
            f"{what}: the proxy refused the tunnel: HTTP {exc.status} {exc.message}",
            status=exc.status,
        ) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS: nothing reached the server
        reason = _os_reason(exc)
        raise CannotConnectError(
            f"{what}: cannot connect to {exc.host}:{exc.port} ({reason})",
            host=exc.host,
            port=exc.port,
            reason=reason,
        ) from exc
    except aiohttp.ClientError as exc:
        raise APIConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except ConnectionError as exc:
        raise APIConnectionError(f"{what}: {exc}") from exc


class ImagesClient:
    """Posts generation requests and downloads images, over one keep-alive session.

    Every request, API call or image download, goes through the proxy that
    :class:`~pmock_batch.network.ProxyRoutes` picks for its URL, and trusts the
    CAs of :func:`~pmock_batch.network.ssl_context`. The environment is read
    once, when the session opens, and only if ``config.trust_env``; aiohttp's
    own ``trust_env`` stays off, so ``~/.netrc`` is never read.
    """

    def __init__(self, config: RunConfig, *, max_download_bytes: int = MAX_DOWNLOAD_BYTES) -> None:
        self._config = config
        self._max_download = max_download_bytes
        self._session: aiohttp.ClientSession | None = None
        self._proxies = ProxyRoutes()
        # Sent with API calls only, never with image downloads, and never logged.
        self._api_headers = dict(config.headers)
        if config.api_key:
            self._api_headers["Authorization"] = f"Bearer {config.api_key}"
        # Redacted from error messages, should the server echo them.
        values = [v for _, v in config.headers if len(v) >= _MIN_REDACTED]
        self._secrets = tuple([config.api_key, *values] if config.api_key else values)

    async def __aenter__(self) -> ImagesClient:
        cfg = self._config
        environ = os.environ if cfg.trust_env else {}
        try:
            self._proxies = ProxyRoutes.resolve(cfg.proxy, environ)
            context = ssl_context(cfg.ca_bundle, environ)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        headers = {"User-Agent": f"pmock-batch/{__version__}", "Accept": "application/json"}
        connector = aiohttp.TCPConnector(
            limit=cfg.concurrency, limit_per_host=cfg.concurrency, ssl=context
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=cfg.timeout, sock_connect=cfg.connect_timeout),
            raise_for_status=False,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ImagesClient is not open; use 'async with'")
        return self._session

    async def generate(self, body: Mapping[str, Any], sink: BodySink | None = None) -> Reply:
        """POST one request body; return the parsed 200, or raise a mapped error.

        With a ``sink``, a 200's body streams through it chunk by chunk: the
        sink takes the ``b64_json`` value and hands back the small remainder,
        which is parsed here (its ``b64_json`` is then ``""``). Without one,
        the whole body is read and parsed.
        """
        cfg = self._config
        with _mapped("POST /images/generations", cfg.timeout, cfg.endpoint):
            async with self.session.post(
                cfg.endpoint,
                json=body,
                headers=self._api_headers,
                proxy=self._proxies.for_url(cfg.endpoint),
            ) as resp:
                status, headers = resp.status, dict(resp.headers)
                if status >= 300:
                    raw = await _read_capped(resp, _MAX_ERROR_BODY)
                elif sink is None:
                    raw = await resp.read()
                else:
                    async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
                        await sink.feed_json(chunk)
                    raw = await sink.end_json()
        if status >= 300:
            raise _status_error(status, raw, headers, self._secrets)
        if len(raw) > _THREAD_PARSE_BYTES:
            parsed = await asyncio.to_thread(_parse_images, raw)
        else:
            parsed = _parse_images(raw)
        return Reply(body=parsed, status=status, headers=headers)

    async def download(self, url: str, sink: BodySink) -> None:
        """Stream an image the server returned as a URL (http or https only) into ``sink``."""
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as exc:
            raise InvalidResponseError(f"the image URL is malformed: {exc}") from exc
        if scheme not in ("http", "https"):
            raise InvalidResponseError(f"refusing to download an image URL with scheme {scheme!r}")
        with _mapped("GET image URL", self._config.timeout, url):
            # The key and --header are for the API, not for wherever the image is hosted.
            async with self.session.get(url, proxy=self._proxies.for_url(url)) as resp:
                if resp.status >= 300:
                    raise DownloadError(
                        f"downloading the image URL answered {resp.status}", status=resp.status
                    )
                if (resp.content_length or 0) > self._max_download:
                    raise self._too_large(resp.content_length or 0)
                size = 0
                async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
                    size += len(chunk)
                    if size > self._max_download:
                        raise self._too_large(size)
                    await sink.feed_raw(chunk)

    def _too_large(self, size: int) -> ResponseTooLargeError:
        return ResponseTooLargeError(
            f"the image URL sends more than {self._max_download:,} bytes ({size:,} seen); refused"
        )
