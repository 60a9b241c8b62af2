"""Run the mock on a loopback port: :class:`MockServer` for tests, :func:`serve` for the CLI."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from .app import create_app, get_state
from .options import MockOptions
from .stats import MockStats

__all__ = ["DEFAULT_HOST", "SHUTDOWN_TIMEOUT", "MockServer", "serve"]

DEFAULT_HOST = "127.0.0.1"
SHUTDOWN_TIMEOUT = 5.0  # seconds handlers get to finish when the server stops


class MockServer:
    """The mock app served on ``host:port`` (port 0 picks a free one), as an async context manager.

    ::

        async with MockServer(MockOptions(latency=0.1)) as server:
            client = AsyncOpenAI(base_url=server.base_url, api_key="test")
            ...
            assert server.stats.peak_in_flight <= 4

    With an ``ssl_context`` (a server context holding a certificate and its
    key) it serves HTTPS, and its URLs start with ``https://``.
    """

    def __init__(
        self,
        options: MockOptions | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.options = options or MockOptions()
        self.host = host
        self.ssl_context = ssl_context
        self.app = create_app(self.options, clock=clock)
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def stats(self) -> MockStats:
        """What the server received and answered (see :class:`MockStats`)."""
        return get_state(self.app).stats

    @property
    def port(self) -> int:
        """The bound port; only known once started."""
        if self._port is None:
            raise RuntimeError("the mock server is not running")
        return self._port

    @property
    def url(self) -> str:
        """The root URL, such as ``http://127.0.0.1:8080`` (``https://`` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What a client uses as its OpenAI base URL: ``url + "/v1"``."""
        return self.url + "/v1"

    async def start(self) -> None:
        """Bind and start serving."""
        if self._runner is not None:
            raise RuntimeError("the mock server is already running")
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self.host, self._requested_port, ssl_context=self.ssl_context
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving and release everything; safe to call twice."""
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(
    options: MockOptions | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the mock until cancelled; ``on_ready`` gets its root URL once it listens.

    The OpenAI base URL for clients is that URL plus ``/v1``.
    """
    async with MockServer(options, host=host, port=port) as server:
        if on_ready is not None:
            on_ready(server.url)
        await asyncio.Event().wait()
