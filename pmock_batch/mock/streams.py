"""A streamed answer (``stream: true``): server-sent events, as OpenAI sends them.

:func:`stream_answer` sends ``partial_images`` previews (the image blurred,
less with each index) as ``<kind>.partial_image`` events with their 0-based
``partial_image_index``, then ``<kind>.completed`` with the image and its
``usage`` (each partial adds :data:`PARTIAL_TOKENS` output tokens, as OpenAI
bills them). ``kind`` is ``image_generation`` or ``image_edit``: the writer
serves any route that makes an image. ``partial_delay`` spaces the events.

Faults: ``stream_cut:K`` closes the connection after K partials, before the
image; ``stream_error`` sends the partials, then an ``error`` event, and ends;
``hang`` sends the partials, then nothing until ``hang_seconds`` pass, then
closes. (``drop`` never gets this far: no answer at all.)
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from typing import Any

from aiohttp import web
from PIL import Image, ImageFilter

from ..models import ImageRequest
from .edits import EditForm
from .faults import Outcome
from .images import ImageSpec
from .responses import usage
from .state import MockState
from .success import success_image

__all__ = ["PARTIAL_TOKENS", "event_bytes", "preview", "stream_answer"]

logger = logging.getLogger("pmock_batch.mock")

PARTIAL_TOKENS = 100  # output tokens billed per partial image
_PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def event_bytes(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event: its ``event:`` line, one ``data:`` line of JSON, a blank line."""
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def preview(data: bytes, fmt: str, index: int, count: int) -> bytes:
    """Partial ``index`` of ``count``: the image blurred, less with each index. In a thread."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        radius = max(1, min(img.size) // 16) * (count - index)
        blurred = img.filter(ImageFilter.GaussianBlur(radius))
    if fmt == "jpeg" and blurred.mode not in ("RGB", "L"):
        blurred = blurred.convert("RGB")
    out = io.BytesIO()
    blurred.save(out, format=_PIL_NAMES[fmt])
    return out.getvalue()


async def stream_answer(
    request: web.Request,
    state: MockState,
    req: ImageRequest,
    outcome: Outcome,
    headers: dict[str, str],
    *,
    edit: EditForm | None = None,
) -> web.StreamResponse:
    """Send ``req``'s answer as events; faults ``stream_cut:K`` and ``hang`` apply here.

    An ``edit`` streams its tinted input as ``image_edit.*`` events, as the real API names
    them; a generation streams ``image_generation.*``."""
    kind = "image_generation" if edit is None else "image_edit"
    data, spec = await success_image(state, req, outcome, edit=edit)
    count = req.partial_images or 0
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    delay = state.options.partial_delay
    common = _common(spec, req)
    try:
        await response.prepare(request)
        for index in range(count):
            if outcome.name == "stream_cut" and index >= (outcome.after or 0):
                return _cut(request, response)
            await state.sleep(delay)
            picture = await asyncio.to_thread(preview, data, spec.format, index, count)
            event = {
                "type": f"{kind}.partial_image",
                "b64_json": base64.b64encode(picture).decode("ascii"),
                "partial_image_index": index,
                **common,
            }
            await response.write(event_bytes(f"{kind}.partial_image", event))
        if outcome.name == "stream_cut":
            return _cut(request, response)
        if outcome.name == "stream_error":
            error = {
                "type": "error",
                "error": {"message": "The server had an error.", "code": None},
            }
            await response.write(event_bytes("error", error))
            await response.write_eof()
            return response
        if outcome.name == "hang":
            await state.sleep(state.options.hang_seconds)
            return _cut(request, response)
        await state.sleep(delay)
        billed = usage(
            req.prompt,
            width=spec.width,
            height=spec.height,
            quality=str(common["quality"]),
            model=req.model,
        )
        billed["output_tokens"] += PARTIAL_TOKENS * count
        billed["total_tokens"] += PARTIAL_TOKENS * count
        event = {
            "type": f"{kind}.completed",
            "b64_json": base64.b64encode(data).decode("ascii"),
            **common,
            "usage": billed,
        }
        await response.write(event_bytes(f"{kind}.completed", event))
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client went away during a stream")
    return response


def _common(spec: ImageSpec, req: ImageRequest) -> dict[str, Any]:
    quality = req.quality if req.quality not in (None, "auto") else "medium"
    return {
        "background": "transparent" if spec.transparent else "opaque",
        "created_at": int(time.time()),
        "output_format": spec.format,
        "quality": quality,
        "size": spec.size,
    }


def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Close the connection mid-stream: the chunked body never gets its last chunk."""
    if request.transport is not None:
        request.transport.close()
    return response
