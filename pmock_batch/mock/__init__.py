"""An OpenAI-compatible mock of ``POST /images/generations`` and of the Batch API, with
fault injection.

It validates requests with the client's own :class:`~pmock_batch.models.ImageRequest`,
answers with real, deterministic images, counts what it received, and can be
told to fail: by script per prompt, by seeded random rates, by a
requests-per-minute limit, a required API key or moderation words.

::

    from pmock_batch.mock import MockOptions, MockServer

    async with MockServer(MockOptions(script={"a fox": ["500", "ok"]})) as server:
        ...  # point a client at server.base_url
        assert server.stats.attempts["a fox"] == 2

Modules: :mod:`.options` (what it does), :mod:`.faults` (outcomes, scripts,
rates), :mod:`.ratelimit`, :mod:`.images` (synthesis and cache),
:mod:`.validation`, :mod:`.responses` (OpenAI body shapes), :mod:`.stats`,
:mod:`.app` (routes and handlers), :mod:`.server` (running it), :mod:`.command` (its
command-line flags, for ``mock-server`` and ``--mock``); for the Batch API,
:mod:`.files` (the file store), :mod:`.batches` (batches, input checks, the
status clock, rows) and :mod:`.batch_routes` (the ``/v1/files`` and
``/v1/batches`` routes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import GENERATION_PATHS, create_app, get_state, get_stats
    from .faults import (
        NAMED_OUTCOMES,
        Outcome,
        load_script,
        parse_fault_rates,
        parse_outcome,
        parse_script,
    )
    from .images import ImageSpec, render_image
    from .options import MockOptions
    from .ratelimit import RequestLimiter, format_duration
    from .server import MockServer, serve
    from .stats import MockStats, ReceivedRequest

# Each public name -> the submodule that defines it. The names are imported on first
# use (PEP 562), not with the package: every ``pmock-batch`` command imports
# :mod:`.command` for the mock's flags, and should not pay for the server, its
# routes and aiohttp.web unless it runs the mock.
_LAZY = {
    "GENERATION_PATHS": "app",
    "create_app": "app",
    "get_state": "app",
    "get_stats": "app",
    "NAMED_OUTCOMES": "faults",
    "Outcome": "faults",
    "load_script": "faults",
    "parse_fault_rates": "faults",
    "parse_outcome": "faults",
    "parse_script": "faults",
    "ImageSpec": "images",
    "render_image": "images",
    "MockOptions": "options",
    "RequestLimiter": "ratelimit",
    "format_duration": "ratelimit",
    "MockServer": "server",
    "serve": "server",
    "MockStats": "stats",
    "ReceivedRequest": "stats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


__all__ = [
    "GENERATION_PATHS",
    "NAMED_OUTCOMES",
    "ImageSpec",
    "MockOptions",
    "MockServer",
    "MockStats",
    "Outcome",
    "ReceivedRequest",
    "RequestLimiter",
    "create_app",
    "format_duration",
    "get_state",
    "get_stats",
    "load_script",
    "parse_fault_rates",
    "parse_outcome",
    "parse_script",
    "render_image",
    "serve",
]
