"""The aiohttp application of the mock: routes, handlers and fault injection.

Routes::

    POST /v1/images/generations                 generate (OpenAI's path)
    POST /api/ai/openai/v1/images/generations   generate (pmock's path)
    POST /v1/images/edits                       edit, multipart (see mock.edits)
    POST /api/ai/openai/v1/images/edits         edit (pmock's path)
    GET  /_mock/files/{name}                    an image made for response_format "url"
    /v1/files..., /v1/batches...                the Batch API (see mock.batch_routes)
    GET  /_mock/stats                           the stats as JSON
    POST /_mock/reset                           zero the stats and the rate limit

A generation request is checked in this order; the first that applies answers:
the API key (401), the requests-per-minute limit (429), the body (400), the
moderation words (400 ``moderation_blocked``), then the scripted or randomly
drawn outcome (see :mod:`pmock_batch.mock.faults`). The latency is added before
the answer is sent, whatever it is. A request with ``stream: true`` is answered
with server-sent events (:mod:`pmock_batch.mock.streams`).
"""

from __future__ import annotations

import gzip
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..models import ImageRequest
from .batch_routes import add_batch_routes, settle_batches
from .edits import EDIT_PATHS, EditForm, check_edit, read_edit
from .faults import Outcome, parse_outcome, pick_outcome
from .images import CONTENT_TYPES
from .options import MockOptions
from .responses import (
    INVALID_KEY_MESSAGE,
    error_body,
    hostile_error,
    moderation_body,
    outcome_error,
    status_error,
)
from .state import STATE, MockState, authorized
from .stats import MockStats, ReceivedRequest
from .streams import stream_answer
from .success import FILES_PATH, gzip_padding, success_body, token_of
from .validation import Rejection, parse_request

__all__ = ["GENERATION_PATHS", "STATE", "create_app", "get_state", "get_stats"]

logger = logging.getLogger("pmock_batch.mock")

GENERATION_PATHS = ("/v1/images/generations", "/api/ai/openai/v1/images/generations")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to answer one generation request."""

    outcome: Outcome
    request: ImageRequest | None = None  # the validated request, for 200-like outcomes
    error: dict[str, Any] | None = None  # the error body, for error outcomes


def create_app(
    options: MockOptions | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """A new mock application. ``clock`` (seconds) drives the requests-per-minute limit and
    the batches' statuses."""
    app = web.Application(middlewares=[_json_errors])
    app[STATE] = MockState(options or MockOptions(), clock=clock)
    for path in GENERATION_PATHS:
        app.router.add_post(path, _generate)
    for path in EDIT_PATHS:
        app.router.add_post(path, _edit)
    app.router.add_get(FILES_PATH + "/{name}", _file)
    add_batch_routes(app)
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    app.on_shutdown.append(_wake_sleepers)
    app.on_cleanup.append(_finish_renders)
    return app


def get_state(app: web.Application) -> MockState:
    """The state of an app made by :func:`create_app`."""
    return app[STATE]


def get_stats(app: web.Application) -> MockStats:
    """The stats of an app made by :func:`create_app`."""
    return app[STATE].stats


async def _wake_sleepers(app: web.Application) -> None:
    app[STATE].closing.set()


async def _finish_renders(app: web.Application) -> None:
    await app[STATE].images.aclose()


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render aiohttp's own errors (404, 405, 413...) in OpenAI's shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = error_body(exc.reason, code=None)
        return web.json_response(body, status=exc.status, headers=_allow_header(exc))


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


# -- generation ---------------------------------------------------------------------------


async def _generate(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    with state.stats.track():
        entry, is_json = await _receive(request)
        attempt = state.stats.receive(entry)
        headers = {"x-request-id": "req_" + secrets.token_hex(16)}
        plan = _decide(state, entry, attempt, headers, is_json=is_json)
        state.stats.answer(entry, plan.outcome.name)
        if plan.outcome.name != "ok":
            logger.debug("answering %s with %s", request.path, plan.outcome.name)
        await state.sleep(state.latency(entry.prompt or "", attempt))
        return await _act(request, state, plan, headers)


async def _edit(request: web.Request) -> web.StreamResponse:
    """An edit: as a generation, but multipart, checked by :func:`check_edit`."""
    state = request.app[STATE]
    with state.stats.track():
        form = await read_edit(request)
        entry = ReceivedRequest(
            request.path,
            form.body(),
            request.headers.get("Authorization"),
            headers=dict(request.headers),
            parts=form.parts(),
        )
        attempt = state.stats.receive(entry)
        headers = {"x-request-id": "req_" + secrets.token_hex(16)}
        plan = _decide(state, entry, attempt, headers, is_json=True, form=form)
        state.stats.answer(entry, plan.outcome.name)
        await state.sleep(state.latency(entry.prompt or "", attempt))
        return await _act(request, state, plan, headers, form=form)


async def _receive(request: web.Request) -> tuple[ReceivedRequest, bool]:
    """Read and parse the body; say whether it was JSON (if not, it is recorded as None)."""
    raw = await request.read()
    body: Any = None
    is_json = True
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        is_json = False
    entry = ReceivedRequest(
        request.path, body, request.headers.get("Authorization"), headers=dict(request.headers)
    )
    return entry, is_json


def _decide(
    state: MockState,
    entry: ReceivedRequest,
    attempt: int,
    headers: dict[str, str],
    *,
    is_json: bool,
    form: EditForm | None = None,
) -> Plan:
    """Choose the answer; ``headers`` gains the rate-limit headers."""
    options = state.options
    limiter = state.limiter
    if options.require_key is not None and not authorized(entry.authorization, options.require_key):
        if limiter is not None:
            headers.update(limiter.peek().headers())
        body = error_body(INVALID_KEY_MESSAGE, code="invalid_api_key")
        return Plan(Outcome("401", status=401), error=body)
    if limiter is not None:
        admission = limiter.admit()
        headers.update(admission.headers())
        if not admission.allowed:
            wait = admission.retry_after
            return Plan(Outcome("429", status=429, retry_after=wait), error=status_error(429))
    if not is_json:
        message = "We could not parse the JSON body of your request: it is not valid JSON."
        return Plan(Outcome("400", status=400), error=error_body(message, code="invalid_json"))
    if form is not None:
        parsed = check_edit(form, dialect=options.dialect)
    else:
        parsed = parse_request(entry.body, dialect=options.dialect)
    if isinstance(parsed, Rejection):
        return Plan(Outcome("400", status=400), error=parsed.body())
    lowered = parsed.prompt.lower()
    if any(word in lowered for word in options.moderation_words):
        return Plan(parse_outcome("moderation"), error=moderation_body())
    rng = state.rng("fault", parsed.prompt, attempt)
    outcome = pick_outcome(
        prompt=parsed.prompt,
        attempt=attempt,
        script=options.script,
        fault_rates=options.fault_rates,
        rng=rng,
    )
    return Plan(outcome, request=parsed, error=outcome_error(outcome))


async def _act(
    request: web.Request,
    state: MockState,
    plan: Plan,
    headers: dict[str, str],
    *,
    form: EditForm | None = None,
) -> web.StreamResponse:
    outcome = plan.outcome
    streamed = plan.request is not None and plan.request.stream is True
    if outcome.name == "hang" and not streamed:  # a stream hangs after its partials
        await state.sleep(state.options.hang_seconds)
        return _drop(request)
    if outcome.name == "drop" or (outcome.name == "stream_cut" and not streamed):
        return _drop(request)
    if streamed and plan.request is not None and outcome.name == "stream_error":
        return await stream_answer(request, state, plan.request, outcome, headers, edit=form)
    if plan.error is not None or plan.request is None or outcome.name == "stream_error":
        status = outcome.status or 400
        retry_after = outcome.retry_after
        if retry_after is None and outcome.name == "429":
            retry_after = state.options.retry_after
        if retry_after is not None:
            headers["Retry-After"] = _seconds(retry_after)
            headers["retry-after-ms"] = str(round(retry_after * 1000))
        body = plan.error or status_error(status)
        if state.options.hostile:
            body = hostile_error(body, token_of(request))
        response = web.json_response(body, status=status, headers=headers)
        return await _send(request, response)
    if streamed:
        return await stream_answer(request, state, plan.request, outcome, headers, edit=form)
    payload = await success_body(request, state, plan.request, outcome, edit=form)
    if outcome.name == "truncate":
        return await _truncated(request, payload, headers)
    headers["Content-Type"] = "application/json"
    padding = state.options.padding_bytes
    if outcome.name == "padded_json":
        payload = b" " * padding + payload
    elif outcome.name == "gzip_bomb":  # two gzip members: the cached padding, then the JSON
        payload = gzip_padding(padding) + gzip.compress(payload)
        headers["Content-Encoding"] = "gzip"
    return await _send(request, web.Response(body=payload, headers=headers))


def _seconds(value: float) -> str:
    """``1.0`` -> ``"1"``, ``2.5`` -> ``"2.5"``: a Retry-After value."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


async def _send(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send the whole response now, so the request counts as in flight until it is out."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client went away before the response was sent")
    return response


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer; aiohttp then finds nothing to write to."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


async def _truncated(
    request: web.Request,
    payload: bytes,
    headers: dict[str, str],
    content_type: str = "application/json",
) -> web.StreamResponse:
    """A 200 that promises ``len(payload)`` bytes but sends half, then closes."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = content_type
    response.content_length = len(payload)
    try:
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
    except ConnectionResetError:
        logger.debug("client went away during a truncated response")
    if request.transport is not None:
        request.transport.close()
    return response


# -- control ------------------------------------------------------------------------------


async def _file(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    name = request.match_info["name"]
    hops = request.query.get("hops", "")
    if hops.isdigit() and int(hops) > 0:  # url_redirects: one hop nearer the file
        left = int(hops) - 1
        raise web.HTTPFound(request.rel_url.with_query({"hops": str(left)} if left else {}))
    data = state.files.get(name)
    if data is None:
        body = error_body(f"No such file: {name!r} (it may have been evicted).", code="not_found")
        return web.json_response(body, status=404)
    state.stats.download_attempts[name] += 1
    attempt = state.stats.download_attempts[name]
    script = state.options.download_script
    outcome = parse_outcome(script[attempt - 1]) if attempt <= len(script) else parse_outcome("ok")
    state.stats.download_headers.append(dict(request.headers))
    content_type = CONTENT_TYPES.get(name.rpartition(".")[2], "application/octet-stream")
    if outcome.name == "drop":
        return _drop(request)
    if outcome.name == "truncate":
        return await _truncated(request, data, {}, content_type)
    if outcome.status is not None:
        return web.json_response(status_error(outcome.status), status=outcome.status)
    state.stats.downloads += 1
    return web.Response(body=data, content_type=content_type)


async def _stats(request: web.Request) -> web.StreamResponse:
    settle_batches(request.app[STATE])  # batches that have ended count their successes
    return web.json_response(request.app[STATE].stats.to_json())


async def _reset(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.reset()
    return web.json_response(state.stats.to_json())
