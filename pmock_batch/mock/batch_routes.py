"""The HTTP side of the mock's Batch API: the Files and Batches routes, as OpenAI serves them.

Routes::

    POST   /v1/files                  upload (multipart: file, purpose)
    GET    /v1/files                  list, newest first (purpose, after, limit, order)
    GET    /v1/files/{id}             the file object
    GET    /v1/files/{id}/content     the bytes; a batch's output is rendered as it streams
    DELETE /v1/files/{id}             delete
    POST   /v1/batches                create (input_file_id, endpoint, completion_window, metadata)
    GET    /v1/batches                list, newest first (after, limit)
    GET    /v1/batches/{id}           the batch object, its status by the mock's clock
    POST   /v1/batches/{id}/cancel    cancel

Every route answers 401 without the key ``require_key`` names, as generations
do. The batches and their clock are in :mod:`pmock_batch.mock.batches`, the
files in :mod:`pmock_batch.mock.files`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web

from .batch_input import BATCH_ENDPOINTS, check_metadata
from .batches import COMPLETION_WINDOW, OUTPUT_TAIL, Batch
from .files import BATCH_FILE_SUFFIX, FILE_PURPOSES, MAX_BATCH_FILE_BYTES, StoredFile
from .responses import INVALID_KEY_MESSAGE, error_body
from .state import STATE, MockState, authorized
from .success import success_body

__all__ = ["add_batch_routes", "settle_batches"]

logger = logging.getLogger("pmock_batch.mock")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_BATCH_LIMIT = 20  # GET /v1/batches
MAX_BATCH_LIMIT = 100
DEFAULT_FILE_LIMIT = 10_000  # GET /v1/files
MAX_FILE_LIMIT = 10_000
READ_CHUNK = 1 << 20  # bytes read at a time from an upload
BATCH_FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata")
IGNORED_BATCH_FIELDS = ("output_expires_after",)  # accepted, without effect


def add_batch_routes(app: web.Application) -> None:
    """Serve the Files and Batches routes on ``app`` (made by ``create_app``)."""
    add = app.router.add_route
    add("POST", "/v1/files", _guarded(_upload))
    add("GET", "/v1/files", _guarded(_list_files))
    add("GET", "/v1/files/{file_id}", _guarded(_retrieve_file))
    add("GET", "/v1/files/{file_id}/content", _guarded(_content))
    add("DELETE", "/v1/files/{file_id}", _guarded(_delete_file))
    add("POST", "/v1/batches", _guarded(_create_batch))
    add("GET", "/v1/batches", _guarded(_list_batches))
    add("GET", "/v1/batches/{batch_id}", _guarded(_retrieve_batch))
    add("POST", "/v1/batches/{batch_id}/cancel", _guarded(_cancel_batch))


def _guarded(handler: Handler) -> Handler:
    """Check the key, and let batches that have ended write their files, before ``handler``."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        key = state.options.require_key
        if key is not None and not authorized(request.headers.get("Authorization"), key):
            body = error_body(INVALID_KEY_MESSAGE, code="invalid_api_key")
            return web.json_response(body, status=401)
        settle_batches(state)
        return await handler(request)

    return guarded


def settle_batches(state: MockState) -> None:
    """Let every batch that has ended write its files, and count its rows' successes."""
    payload = round(state.options.payload_mb * 1_000_000) if state.options.payload_mb else None
    for batch in state.batches.settle(payload_bytes=payload):
        succeeded, _, _ = batch.ran(state.clock())
        for row in succeeded:
            state.stats.successes[row.request.prompt] += 1


def _bad(
    message: str, *, param: str | None = None, code: str | None = None, status: int = 400
) -> web.Response:
    return web.json_response(error_body(message, param=param, code=code), status=status)


def _not_found(kind: str, ident: str) -> web.Response:
    return _bad(f"No {kind} found with id {ident!r}.", status=404)


def _list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _limit(request: web.Request, default: int, top: int) -> int | web.Response:
    text = request.query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= top:
        message = f"Invalid value for 'limit': {text!r}; expected a whole number from 1 to {top}."
        return _bad(message, param="limit", code="invalid_value")
    return int(text)


# -- files ----------------------------------------------------------------------------------


async def _upload(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if not request.content_type.startswith("multipart/"):
        return _bad("The request must be multipart/form-data, with a file and a purpose.")
    purpose: str | None = None
    filename: str | None = None
    data: bytes | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = part.filename or "file"
            read = await _read_capped(part, MAX_BATCH_FILE_BYTES)
            if read is None:
                limit = MAX_BATCH_FILE_BYTES // 1_000_000
                message = f"The file is larger than the {limit} MB a batch input file may be."
                return _bad(message, param="file", code="file_too_large")
            data = read
        else:
            await part.release()
    if data is None or filename is None:
        return _bad(
            "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    if purpose is None:
        return _bad(
            "Missing required parameter: 'purpose'.",
            param="purpose",
            code="missing_required_parameter",
        )
    if purpose not in FILE_PURPOSES:
        known = ", ".join(repr(p) for p in FILE_PURPOSES)
        message = f"Invalid value: {purpose!r}. Supported values are: {known}."
        return _bad(message, param="purpose", code="invalid_value")
    if purpose == "batch" and not filename.endswith(BATCH_FILE_SUFFIX):
        message = f"Invalid file format for Batch API. Must be {BATCH_FILE_SUFFIX}"
        return _bad(message, param="file", code="invalid_file_format")
    stored = state.stored_files.upload(
        filename=filename, purpose=purpose, data=data, created_at=_unix(state)
    )
    state.stats.files_uploaded.append(
        {"id": stored.id, "filename": filename, "purpose": purpose, "bytes": stored.size}
    )
    return web.json_response(stored.to_json())


async def _read_capped(part: BodyPartReader, limit: int) -> bytes | None:
    """The part's bytes, or None (the rest drained) when it holds more than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            await part.release()
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _unix(state: MockState) -> int:
    return int(state.batches.epoch + state.clock())


async def _list_files(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    limit = _limit(request, DEFAULT_FILE_LIMIT, MAX_FILE_LIMIT)
    if isinstance(limit, web.Response):
        return limit
    files = state.stored_files.newest_first(purpose=request.query.get("purpose"))
    if request.query.get("order") == "asc":
        files.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [f.id for f in files]
        files = files[ids.index(after) + 1 :] if after in ids else []
    data = [f.to_json() for f in files[:limit]]
    return web.json_response(_list_body(data, len(files) > limit))


def _file_or_404(request: web.Request) -> StoredFile | web.Response:
    file_id = request.match_info["file_id"]
    stored = request.app[STATE].stored_files.get(file_id)
    return stored if stored is not None else _not_found("file", file_id)


async def _retrieve_file(request: web.Request) -> web.StreamResponse:
    stored = _file_or_404(request)
    return stored if isinstance(stored, web.Response) else web.json_response(stored.to_json())


async def _delete_file(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    stored = _file_or_404(request)
    if isinstance(stored, web.Response):
        return stored
    state.stored_files.delete(stored.id)
    state.stats.files_deleted.append(stored.id)
    return web.json_response({"id": stored.id, "object": "file", "deleted": True})


async def _content(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    stored = _file_or_404(request)
    if isinstance(stored, web.Response):
        return stored
    state.stats.file_downloads[stored.id] += 1
    if stored.data is not None:
        return web.Response(body=stored.data, content_type="application/octet-stream")
    batch = state.batches.get(stored.batch_id or "")
    if batch is None:  # pragma: no cover - batches are never forgotten
        return _not_found("file", stored.id)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        if stored.kind == "output":
            await _write_output(request, state, batch, response)
        else:
            for line in batch.error_lines(state.clock()):
                await response.write(line)
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client went away while %s streamed", stored.id)
    return response


async def _write_output(
    request: web.Request, state: MockState, batch: Batch, response: web.StreamResponse
) -> None:
    """Each successful row's line, its image rendered as it goes (a cached one is reused, but
    what is rendered here is not kept: the mock's memory stays flat whatever the file's size)."""
    succeeded, _, _ = batch.ran(state.clock())
    for row in succeeded:
        body = await success_body(
            request, state, row.request, row.outcome, keep_image=False, edit=row.edit
        )
        await response.write(batch.output_head(row))
        await response.write(body)
        await response.write(OUTPUT_TAIL)


# -- batches --------------------------------------------------------------------------------


async def _create_batch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return _bad("The body must be a JSON object.", code="invalid_json")
    for key in body:
        if key not in BATCH_FIELDS and key not in IGNORED_BATCH_FIELDS:
            return _bad(f"Unknown parameter: {key!r}.", param=str(key), code="unknown_parameter")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if key not in body:
            message = f"Missing required parameter: {key!r}."
            return _bad(message, param=key, code="missing_required_parameter")
    endpoint = body["endpoint"]
    if endpoint not in BATCH_ENDPOINTS:
        known = ", ".join(repr(e) for e in BATCH_ENDPOINTS)
        message = f"Invalid value: {endpoint!r}. Supported values are: {known}."
        return _bad(message, param="endpoint", code="invalid_value")
    if body["completion_window"] != COMPLETION_WINDOW:
        message = f"Invalid value: {body['completion_window']!r}. Supported values are: '24h'."
        return _bad(message, param="completion_window", code="invalid_value")
    try:
        metadata = check_metadata(body.get("metadata"))
    except ValueError as exc:
        return _bad(str(exc), param="metadata", code="invalid_value")
    file_id = body["input_file_id"]
    stored = state.stored_files.get(file_id) if isinstance(file_id, str) else None
    if stored is None or stored.data is None:
        message = f"Invalid 'input_file_id': {file_id!r}: no such uploaded file."
        return _bad(message, param="input_file_id", code="invalid_value")
    if stored.purpose != "batch":
        message = f"The input file {file_id!r} must be uploaded with purpose 'batch'."
        return _bad(message, param="input_file_id", code="invalid_value")
    batch = state.batches.create(
        stored,
        endpoint=endpoint,
        metadata=metadata,
        options=state.options,
        attempt=state.stats.row,
        rng=lambda prompt, attempt: state.rng("fault", prompt, attempt),
    )
    state.stats.batches_created.append(
        {
            "id": batch.id,
            "input_file_id": stored.id,
            "endpoint": endpoint,
            "metadata": metadata,
            "custom_ids": [row.custom_id for row in batch.rows],
        }
    )
    settle_batches(state)  # with no batch_seconds it has ended already
    return web.json_response(batch.to_json(state.clock()))


def _batch_or_404(request: web.Request) -> Batch | web.Response:
    batch_id = request.match_info["batch_id"]
    batch = request.app[STATE].batches.get(batch_id)
    return batch if batch is not None else _not_found("batch", batch_id)


async def _retrieve_batch(request: web.Request) -> web.StreamResponse:
    batch = _batch_or_404(request)
    if isinstance(batch, web.Response):
        return batch
    return web.json_response(batch.to_json(request.app[STATE].clock()))


async def _list_batches(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    limit = _limit(request, DEFAULT_BATCH_LIMIT, MAX_BATCH_LIMIT)
    if isinstance(limit, web.Response):
        return limit
    batches, has_more = state.batches.page(after=request.query.get("after"), limit=limit)
    now = state.clock()
    return web.json_response(_list_body([b.to_json(now) for b in batches], has_more))


async def _cancel_batch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    batch = _batch_or_404(request)
    if isinstance(batch, web.Response):
        return batch
    first = batch.cancelled is None
    refused = state.batches.cancel(batch)
    if refused is not None:
        return _bad(refused, code="invalid_state")
    if first:
        state.stats.batch_cancels.append(batch.id)
    settle_batches(state)  # with no cancel delay it has ended already
    return web.json_response(batch.to_json(state.clock()))
