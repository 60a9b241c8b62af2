"""The HTTP client: one aiohttp session for the run.

This is the only module that imports aiohttp on the client side, and the only
place its exceptions (and asyncio timeouts) are translated into
:mod:`pmock_batch.errors`, by :func:`_mapped`.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .addresses import AddressPolicy, address_kind, checked_url, host_kind, same_host
from .answers import Reply, b64_size, clean, parse_images, status_from_body, too_large
from .config import MAX_DOWNLOAD_REDIRECTS, MAX_RESPONSE_EXTRA_BYTES, RunConfig
from .errors import (
    APIConnectionError,
    APITimeoutError,
    CannotConnectError,
    DownloadError,
    InvalidResponseError,
    ProxyRefusedError,
    ResponseTooLargeError,
    UntrustedCertificateError,
    UsageError,
)
from .images import MAX_IMAGE_BYTES
from .models import MAX_PROMPT_CHARS
from .network import ProxyRoutes, ssl_context
from .text import redact
from .uploads import Body, posting
from .version import __version__

__all__ = ["BodySink", "ImagesClient", "Reply", "redact"]

# Bodies larger than this are parsed in a worker thread, so that a 20 MB
# base64 string never stalls the event loop.
_THREAD_PARSE_BYTES = 256 * 1024
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024  # an image URL larger than this is refused
_STREAM_CHUNK = 256 * 1024  # the most a streamed read hands over at once
_MAX_ERROR_BODY = 1 << 20  # an error body is read up to this size
_MIN_REDACTED = 6  # header values shorter than this are not secrets worth redacting from text
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# The host an image download is connecting to, and where it may connect: read by
# _GuardedResolver, so the addresses a name resolves to are checked before any connection.
_DOWNLOAD_GUARD: contextvars.ContextVar[tuple[str, AddressPolicy] | None] = contextvars.ContextVar(
    "pmock_batch_download_guard", default=None
)


class BodySink(Protocol):
    """Where a streamed image goes (see :class:`pmock_batch.images.ImageSink`)."""

    async def feed_json(self, chunk: bytes) -> None: ...

    async def end_json(self) -> bytes: ...

    async def feed_raw(self, data: bytes) -> None: ...

    @property
    def held(self) -> int:
        """Bytes of the body held in memory so far: all of it but the image."""
        ...


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
    except aiohttp.ClientConnectorSSLError as exc:  # nothing reached the server: an early abort
        reason = "TLS handshake failed"
        raise CannotConnectError(
            f"{what}: the TLS handshake with {exc.host}:{exc.port} failed: {exc.os_error}",
            host=exc.host,
            port=exc.port,
            reason=reason,
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
    except aiohttp.ClientError as exc:  # its text may quote the server (a URL, a header)
        raise APIConnectionError(f"{what}: {type(exc).__name__}: {clean(str(exc), ())}") from exc
    except ConnectionError as exc:
        raise APIConnectionError(f"{what}: {clean(str(exc), ())}") from exc


class _GuardedResolver(AbstractResolver):
    """Resolves names as aiohttp would, but refuses, for an image download's host,
    any address its :class:`~pmock_batch.addresses.AddressPolicy` does not allow.

    Checking the very addresses aiohttp connects to leaves no gap between a
    check and a second lookup (DNS rebinding). IP literals are never resolved:
    :meth:`ImagesClient.download` checks those itself, at every redirect.
    """

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        guard = _DOWNLOAD_GUARD.get()
        if guard is not None and same_host(host, guard[0]):
            for result in results:
                if not guard[1].allows(result["host"]):
                    raise InvalidResponseError(guard[1].refusal(guard[0], result["host"]))
        return results

    async def close(self) -> None:
        await self._inner.close()


class ImagesClient:
    """Posts generation requests and downloads images, over one keep-alive session.

    Every request, API call or image download, goes through the proxy that
    :class:`~pmock_batch.network.ProxyRoutes` picks for its URL, and trusts the
    CAs of :func:`~pmock_batch.network.ssl_context`. The environment is read
    once, when the session opens, and only if ``config.trust_env``; aiohttp's
    own ``trust_env`` stays off, so ``~/.netrc`` is never read.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        max_extra_bytes: int = MAX_RESPONSE_EXTRA_BYTES,
        download_policy: AddressPolicy | None = None,
    ) -> None:
        self._config = config
        self._max_download = max_download_bytes
        # A 200's body: at most max_extra bytes outside the image's base64, and
        # at most the base64 of the largest image plus those in all.
        self._max_extra = max_extra_bytes
        self._max_body = b64_size(max_image_bytes) + max_extra_bytes
        # Where image URLs may lead; None: worked out from the base URL at the first download.
        self._policy = download_policy
        self._session: aiohttp.ClientSession | None = None
        self._resolver: AbstractResolver | None = None
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
        self._resolver = _GuardedResolver(aiohttp.DefaultResolver())
        connector = aiohttp.TCPConnector(
            limit=cfg.concurrency,
            limit_per_host=cfg.concurrency,
            resolver=self._resolver,
            ssl=context,
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
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    def api_call(self, url: str) -> tuple[dict[str, str], str | None, tuple[str, ...]]:
        """For another API call to ``url`` (the Batch API's): headers, proxy, secrets to redact."""
        return dict(self._api_headers), self._proxies.for_url(url), self._secrets

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ImagesClient is not open; use 'async with'")
        return self._session

    async def generate(self, body: Body, sink: BodySink | None = None) -> Reply:
        """POST one request body (an :class:`EditBody` as multipart, to ``/images/edits``);
        return the parsed 200, or raise a mapped error.

        With a ``sink``, a 200's body streams through it chunk by chunk: the
        sink takes the ``b64_json`` value and hands back the small remainder,
        which is parsed here (its ``b64_json`` is then ``""``). Without one,
        the whole body is read and parsed. Either way the body is capped, as
        decompressed: see :meth:`_read_body`.
        """
        cfg = self._config
        with posting(body, cfg) as (url, what, payload), _mapped(what, cfg.timeout, url):
            async with self.session.post(
                url, **payload, headers=self._api_headers, proxy=self._proxies.for_url(url)
            ) as resp:
                status, headers = resp.status, resp.headers  # case-insensitive, as received
                if status >= 300:
                    raw = await _read_capped(resp, _MAX_ERROR_BODY)
                else:
                    raw = await self._read_body(resp, sink)
        if status >= 300:
            raise status_from_body(status, raw, headers, self._secrets)
        if len(raw) > _THREAD_PARSE_BYTES:
            parsed = await asyncio.to_thread(parse_images, raw)
        else:
            parsed = parse_images(raw)
        item = parsed.data[0]  # only data[0] is read: one image per request
        item.revised_prompt = clean(item.revised_prompt, self._secrets, MAX_PROMPT_CHARS)
        return Reply(body=parsed, status=status, headers=headers)

    async def _read_body(self, resp: aiohttp.ClientResponse, sink: BodySink | None) -> bytes:
        """A 200's body, through ``sink`` if there is one; capped, as decompressed.

        ``resp.content`` yields the body after any ``Content-Encoding`` is
        undone, so a gzip bomb is counted by what it expands to. The bytes held
        in memory (all but the image) may not pass ``max_extra_bytes``, nor the
        whole body the largest image's base64 plus those. Past a cap the body
        is dropped (leaving the ``async with`` closes the connection) and the
        answer is invalid: billed, so retried at most ``--max-billed-retries``.
        """
        if (resp.content_length or 0) > self._max_body:
            raise too_large("in all", self._max_body)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
            size += len(chunk)
            if size > self._max_body:
                raise too_large("in all", self._max_body)
            if sink is None:  # held whole: only the whole-body cap applies
                chunks.append(chunk)
            else:
                await sink.feed_json(chunk)
                if sink.held > self._max_extra:
                    raise too_large("outside its image", self._max_extra)
        return b"".join(chunks) if sink is None else await sink.end_json()

    async def _download_policy(self) -> AddressPolicy:
        """Public addresses, plus the kinds the base URL is on (worked out once)."""
        if self._policy is None:
            host = URL(self._config.base_url).raw_host or ""
            kind = host_kind(host)
            if kind is not None:
                kinds = {kind}
            else:  # a name: what it resolves to now; if it does not, public only
                try:
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        host, None, type=socket.SOCK_STREAM
                    )
                    kinds = {address_kind(str(info[4][0])) for info in infos}
                except (OSError, ValueError):
                    kinds = set()
            self._policy = AddressPolicy.for_base(kinds)
        return self._policy

    async def download(self, url: str, sink: BodySink) -> None:
        """Stream an image the server returned as a URL into ``sink``.

        http and https only, at most 3 redirects (each checked the same way),
        and only to addresses the :class:`AddressPolicy` allows: an IP literal
        is checked here, a name's addresses by :class:`_GuardedResolver` as
        they are resolved. The API key is never sent with a download.
        """
        policy = await self._download_policy()
        for _ in range(MAX_DOWNLOAD_REDIRECTS + 1):
            host = checked_url(url, policy)
            with _mapped("GET image URL", self._config.timeout, url):
                token = _DOWNLOAD_GUARD.set((host, policy))
                try:
                    # The key is for the API, not for wherever the image is hosted: not sent here.
                    async with self.session.get(
                        url, allow_redirects=False, proxy=self._proxies.for_url(url)
                    ) as resp:
                        if resp.status in _REDIRECTS:
                            url = _redirect_target(resp)
                            continue
                        await self._read_image(resp, sink)
                        return
                finally:
                    _DOWNLOAD_GUARD.reset(token)
        raise InvalidResponseError(
            f"the image URL redirects more than {MAX_DOWNLOAD_REDIRECTS} times; refused"
        )

    async def _read_image(self, resp: aiohttp.ClientResponse, sink: BodySink) -> None:
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


def _redirect_target(resp: aiohttp.ClientResponse) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise DownloadError(
            f"downloading the image URL answered {resp.status} with no Location",
            status=resp.status,
        )
    try:
        return str(resp.url.join(URL(location)))
    except ValueError:
        raise InvalidResponseError("the image URL redirects to a malformed URL") from None
