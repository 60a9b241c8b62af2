"""Shared fixtures: real mock servers on loopback, and a clock tests move by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pmock_batch.mock import MockOptions, MockServer


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeMock = Callable[..., Awaitable[MockServer]]

# Variables that would route the client's loopback traffic elsewhere, or change what it trusts.
NETWORK_ENV = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


@pytest.fixture(autouse=True)
def _no_ambient_network_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy or CA bundle set on the machine (a CI runner's) never reaches a test."""
    for name in NETWORK_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


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
