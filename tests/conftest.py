"""Shared fixtures: real mock servers on loopback, and a clock tests move by hand."""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeSleep, isolate_env

from pmock_batch.mock import MockOptions, MockServer
from pmock_batch.retry import RetryPolicy


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeMock = Callable[..., Awaitable[MockServer]]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key, base URL, proxy or CA bundle set on the machine (a CI runner's) reaches a test,
    and every test runs in its own scratch directory.

    The one environment isolation for the whole suite (module-scoped fixtures
    call :func:`helpers.isolate_env` themselves): a test, or a module's
    fixture, that needs a key sets ``PMOCK_API_KEY`` itself.
    """
    isolate_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def _loopback(host: object) -> bool:
    if host is None or host in ("localhost", b"localhost"):
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test resolves a name other than loopback: a run that would reach a real API host
    (a missing --base-url) fails here, before any packet leaves the machine."""
    resolve = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"tests reach loopback only, not {host!r}")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture
def cli_sleep(monkeypatch: pytest.MonkeyPatch) -> FakeSleep:
    """The CLI's retry policy gets an injected sleep: no test waits through real backoff.
    The waits it was asked for are in ``cli_sleep.waits``."""
    sleep = FakeSleep()
    monkeypatch.setattr(
        "pmock_batch.preflight.RetryPolicy", functools.partial(RetryPolicy, sleep=sleep)
    )
    return sleep


@pytest.fixture
async def mock_server() -> AsyncIterator[MockServer]:
    """A started mock with default options."""
    async with MockServer(MockOptions()) as server:
        yield server


@pytest.fixture
async def make_mock() -> AsyncIterator[MakeMock]:
    """``server = await make_mock(MockOptions(...), clock=...)``; every server stops at teardown."""
    servers: list[MockServer] = []

    async def make(options: MockOptions | None = None, **kwargs: Any) -> MockServer:
        server = MockServer(options or MockOptions(), **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock for the mock's requests-per-minute window."""
    return FakeClock()
