"""What a successful generation sends: the image (cached), the faults that change
it (``corrupt``, ``bomb``, ``bad_base64``, trailing bytes), and ``b64_json`` or
a ``url`` under :data:`FILES_PATH`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import time
import zlib
from typing import Any

from aiohttp import web

from ..models import ImageRequest
from .edits import EditForm, tinted
from .faults import Outcome
from .images import ImageSpec, bomb_png, parse_size
from .responses import hostile_text, usage
from .state import MockState

__all__ = [
    "BAD_BASE64",
    "FILES_PATH",
    "gzip_padding",
    "success_body",
    "success_image",
    "token_of",
    "trailing_junk",
]

FILES_PATH = "/_mock/files"
BAD_BASE64 = "!!this is not base64!!"


def token_of(request: web.Request) -> str:
    """The bearer key the request carried, for a hostile server to echo."""
    return request.headers.get("Authorization", "").partition(" ")[2].strip()


@functools.lru_cache(maxsize=4)
def gzip_padding(size: int) -> bytes:
    """One gzip member of ``size`` spaces, compressed 1 MiB at a time (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    block = b" " * (1 << 20)
    out = []
    for start in range(0, size, len(block)):
        out.append(packer.compress(block[: size - start]))
    out.append(packer.flush())
    return b"".join(out)


async def success_body(
    request: web.Request,
    state: MockState,
    req: ImageRequest,
    outcome: Outcome,
    *,
    keep_image: bool = True,
    edit: EditForm | None = None,
) -> bytes:
    """The JSON body of a successful generation; ``keep_image=False`` leaves the image out of
    the cache (a batch's output file). For an ``edit`` the image is its first input, tinted,
    at the input's size unless a size was asked for."""
    options = state.options
    data, spec = await success_image(state, req, outcome, keep_image=keep_image, edit=edit)
    width, height = spec.width, spec.height
    item: dict[str, Any]
    if outcome.name == "bad_base64":
        item = {"b64_json": BAD_BASE64}
    elif req.response_format == "url" or outcome.name == "url":
        name = f"{_token(data)}.{spec.format}"
        state.files.put(name, data)
        hops = f"?hops={options.url_redirects}" if options.url_redirects else ""
        item = {"url": f"{request.scheme}://{request.host}{FILES_PATH}/{name}{hops}"}
    else:
        item = {"b64_json": base64.b64encode(data).decode("ascii")}
    if options.revised_prompt:
        item["revised_prompt"] = f"{req.prompt} (revised)"
    if options.hostile:
        item["revised_prompt"] = hostile_text(f"{req.prompt} (revised)", token_of(request))
    quality = req.quality if req.quality not in (None, "auto") else "medium"
    body = {
        "created": int(time.time()),
        "data": [item] * req.count,  # n > 1 passes validation only in the openai dialect
        "background": "transparent" if spec.transparent else "opaque",
        "output_format": spec.format,
        "quality": quality,
        "size": spec.size,
        "usage": usage(
            req.prompt, width=width, height=height, quality=str(quality), model=req.model
        ),
    }
    if outcome.name == "bad_shape":  # JSON, but "created" is text: not an images response
        created = "yesterday"
        body["created"] = hostile_text(created, token_of(request)) if options.hostile else created
    return json.dumps(body).encode("utf-8")


async def success_image(
    state: MockState,
    req: ImageRequest,
    outcome: Outcome,
    *,
    keep_image: bool = True,
    edit: EditForm | None = None,
) -> tuple[bytes, ImageSpec]:
    """The image of a successful generation (or edit), as the faults change it, and its spec.

    For an ``edit`` the image is its first input, tinted, at the input's size
    unless a size was asked for."""
    options = state.options
    width, height = parse_size(req.size)
    if edit is not None and req.size in (None, "auto"):
        width, height = edit.images[0].size
    if options.image_px is not None:  # a small square stand-in, whatever size was asked for
        width = height = options.image_px
    payload = round(options.payload_mb * 1_000_000) if options.payload_mb else None
    spec = ImageSpec(
        prompt=req.prompt,
        width=width,
        height=height,
        format=req.format,
        transparent=req.background == "transparent",
        quality=req.output_compression,
        payload_bytes=payload,
    )
    if edit is not None:
        data = await asyncio.to_thread(tinted, edit, spec)
    else:
        data = await state.images.get(spec, keep=keep_image)
    if options.trailing_bytes:  # decoders stop at the image's end and ignore these
        data += trailing_junk(options.trailing_bytes)
    if outcome.name == "corrupt":
        data = data[: max(16, len(data) // 2)]
    elif outcome.name == "bomb":  # a sound PNG whose header claims 40,000 x 40,000 pixels
        data = bomb_png()
    return data, spec


def trailing_junk(count: int) -> bytes:
    """``count`` bytes to put after an image's end: printable, with no marker in them."""
    pattern = b"pmock trailing bytes; "
    return (pattern * (count // len(pattern) + 1))[:count]


def _token(data: bytes) -> str:
    """A file name for ``data``: content-addressed, so the same image shares one entry."""
    return hashlib.sha256(data).hexdigest()[:32]
