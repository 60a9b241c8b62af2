"""One HTTP exchange for one image: the POST, a URL's GETs, and a billed answer's bytes kept.

:func:`request_image` POSTs one body and streams the answer's image into a
sink (or downloads its URL, retrying the GET alone: a new POST would be billed
again). An error after a 2xx had started to arrive is marked ``answered``:
billed. :func:`keep_rejected` moves a billed but unusable answer's bytes to
``OUT/.rejected/``, as received, so nothing paid for is thrown away.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .answers import Reply
from .client import ImagesClient
from .errors import APIError, InvalidResponseError, PmockBatchError
from .events import EventReader
from .failures import Failure
from .images import ImageSink, decode_and_verify, rejected_path
from .inputs import EditInputs
from .models import RejectedFile
from .pool import Progress
from .retry import RetryPolicy
from .uploads import EditBody

__all__ = ["keep_rejected", "request_image"]

log = logging.getLogger("pmock_batch")


async def request_image(
    client: ImagesClient,
    policy: RetryPolicy,
    body: dict[str, Any],
    sink: ImageSink,
    *,
    url: bool,
    edit: EditInputs | None = None,
    events: EventReader | None = None,
) -> Reply:
    """One exchange: the image streams into ``sink`` (or is downloaded into it).

    With ``edit`` the body goes as multipart with those files, to ``/images/edits``.
    Only ``data[0]`` is read. Its ``url`` is followed only when the job asked
    for ``response_format: url``. With ``events`` (a job with ``stream: true``)
    the answer is read as server-sent events: the ``completed`` event's image
    goes to ``sink``. A stream that fails after partial images had arrived,
    before its image, is marked ``ambiguous``: the server was at work.
    """
    try:
        payload = body if edit is None else EditBody(body, edit)
        reply = await client.generate(payload, sink if events is None else events)
    except APIError as exc:
        exc.answered = exc.answered or sink.answered
        if events is not None and events.partials and not exc.answered:
            exc.ambiguous = True
        raise
    finally:
        if events is not None:
            events.discard()
    item = reply.body.data[0]
    try:
        if not sink.streamed:
            if item.url and url:
                await _download(client, policy, item.url, sink)
            elif item.b64_json:  # an unusual body the scanner left whole
                data = await asyncio.to_thread(decode_and_verify, item.b64_json)
                await sink.feed_raw(data)
            elif item.url:
                raise InvalidResponseError(
                    "the server's answer has a url, not the b64_json that was asked for"
                )
            else:
                raise InvalidResponseError("the server's answer has neither b64_json nor url")
    except APIError as exc:
        exc.answered = True  # the POST was answered 2xx
        raise
    return reply


async def _download(client: ImagesClient, policy: RetryPolicy, url: str, sink: ImageSink) -> None:
    """GET a 2xx's image URL, retrying the GET alone."""

    def on_retry(failure: Failure, attempt: int, wait: float) -> None:
        log.debug(
            "downloading the image failed (%s); retrying the GET in %.1fs",
            failure.reason,
            wait,
            extra={"event": "download_retry", "attempt": attempt},
        )

    async for get in policy.download_retrying(on_retry=on_retry):
        with get:
            sink.restart()
            await client.download(url, sink)


async def keep_rejected(
    job_id: str, sink: ImageSink, stem: str, failure: Failure, progress: Progress, attempt: int
) -> None:
    """Move a billed answer's unusable bytes to ``.rejected/``, as received; note it."""
    out = sink.out_dir
    size, sha256 = sink.size, sink.sha256
    try:
        relative = await asyncio.to_thread(rejected_path, out, stem, attempt)
        await sink.keep(out, relative)
    except (OSError, PmockBatchError) as err:  # the job's own error matters more
        log.warning(
            "%s: could not keep the rejected image: %s",
            job_id,
            err,
            extra={"event": "warning", "job_id": job_id},
        )
        return
    progress.rejected.append(
        RejectedFile(path=relative, bytes=size, sha256=sha256, reason=failure.reason)
    )
    log.warning(
        "%s: the server's 200 was billed but unusable (%s); its %d bytes are kept as %s",
        job_id,
        failure.reason,
        size,
        relative,
        extra={"event": "rejected", "job_id": job_id, "path": relative, "bytes": size},
    )
