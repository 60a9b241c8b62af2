"""An asyncio event loop on virtual time, for tests of pacing and rate limits.

:class:`VirtualLoop` never waits for a timer: when nothing is ready, its
clock jumps to the next one, so a minute of pacing takes milliseconds and
every run gives the same answer. Work sent to the default executor
(``asyncio.to_thread``, aiofiles) runs inline, so no thread finishes at a
moment the clock cannot see.

Real sockets work too: a mock server and a client on loopback, both on this
loop. Linux delivers loopback TCP data within the sending call, so when the
selector finds nothing ready, nothing is in flight either, and the clock can
jump. (``tests/test_shared_limit.py`` gave the same answer run after run, also
with every core busy.)
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["START", "VirtualLoop", "run_virtual"]

T = TypeVar("T")

START = 1000.0  # the virtual clock's first reading


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that never blocks on a timer: a wait moves the virtual clock instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if not events:
            if timeout is None:
                raise RuntimeError("deadlock: every task waits and no timer is set")
            self._loop.now += timeout
        return events


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: ``asyncio.sleep`` returns at once, the clock jumps."""

    def __init__(self) -> None:
        self.now = START
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Run ``func`` at once, on this thread: its result is ready before the clock moves."""
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(contextvars.copy_context().run(func, *args))
        except BaseException as exc:  # handed to the awaiting task, as an executor would
            future.set_exception(exc)
        return future


def run_virtual(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to the end on a fresh :class:`VirtualLoop`."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()
