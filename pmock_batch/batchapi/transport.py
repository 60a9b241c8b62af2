"""The Batch API over HTTP: files and batches, through the run's one aiohttp session.

Every call goes through the client's session, headers, proxy and the one
boundary where aiohttp's exceptions are mapped (:func:`pmock_batch.client._mapped`);
an error answer becomes the status exception :func:`~pmock_batch.answers.status_from_body`
picks, as for a direct request. :meth:`BatchClient.content` streams a file's
content in chunks, with a read timeout but no total one: an output file may
take hours to download.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from ..answers import status_from_body
from ..client import ImagesClient, _mapped
from ..errors import InvalidResponseError, NotFoundError
from ..images import ImageSink
from ..inputs import InputFile as Source

__all__ = ["IMAGE_PURPOSE", "BatchClient", "seconds"]

IMAGE_PURPOSE = "vision"  # an edit's input image, named by file id in a batch's lines

_CHUNK = 1 << 20  # bytes handed over per read of a file's content
_MAX_JSON = 8 * 1024 * 1024  # a file or batch object larger than this is refused


class BatchClient:
    """``/files`` and ``/batches`` under the run's base URL."""

    def __init__(self, client: ImagesClient, base_url: str, *, timeout: float) -> None:
        self._client = client
        self._base = self.base = base_url.rstrip("/")
        self._timeout = timeout
        self.secrets = client.api_call(self._base)[2]  # redacted from server text

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self._base + path
        headers, proxy, secrets = self._client.api_call(url)
        with _mapped(f"{method} {path.split('?')[0]}", self._timeout, url):
            async with self._client.session.request(
                method, url, headers=headers, proxy=proxy, **kwargs
            ) as resp:
                raw = await resp.content.read(_MAX_JSON + 1)
                status, got = resp.status, resp.headers
        if status >= 300:
            raise status_from_body(status, raw, got, secrets)
        if len(raw) > _MAX_JSON:
            raise InvalidResponseError(f"{method} {path}: the answer is too large")
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise InvalidResponseError(f"{method} {path}: the answer is not JSON") from None

    async def upload(self, name: str, content: bytes) -> dict[str, Any]:
        """``POST /files`` with ``purpose=batch``: returns the file object."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=name, content_type="application/jsonl")
        return _object(await self._call("POST", "/files", data=form))

    async def upload_image(self, source: Source, name: str) -> dict[str, Any]:
        """``POST /files`` with ``purpose=vision``: an edit's input image, streamed from its
        file with its content type, named ``name``. Returns the file object."""
        with source.open() as handle:  # InputFileError if it changed since it was hashed
            form = aiohttp.FormData()
            form.add_field("purpose", IMAGE_PURPOSE)
            form.add_field("file", handle, filename=name, content_type=source.content_type)
            return _object(await self._call("POST", "/files", data=form))

    async def create(
        self, file_id: str, endpoint: str, metadata: Mapping[str, str]
    ) -> dict[str, Any]:
        body = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": dict(metadata),
        }
        return _object(await self._call("POST", "/batches", json=body))

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return _object(await self._call("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return _object(await self._call("POST", f"/batches/{batch_id}/cancel"))

    async def recent(self, since: float, *, limit: int = 100) -> AsyncIterator[dict[str, Any]]:
        """``GET /batches``, newest first, paging back until batches older than ``since``."""
        after: str | None = None
        while True:
            query = f"?limit={limit}" + (f"&after={after}" if after else "")
            page = _object(await self._call("GET", "/batches" + query))
            data = [b for b in page.get("data") or [] if isinstance(b, dict)]
            for batch in data:
                yield batch
            oldest = min((seconds(b.get("created_at")) for b in data), default=0.0)
            if not data or not page.get("has_more") or oldest < since:
                return
            after = str(page.get("last_id") or data[-1].get("id"))

    async def has_file(self, file_id: str) -> bool:
        """``GET /files/{id}``: whether the server still holds the file."""
        try:
            await self._call("GET", f"/files/{file_id}")
        except NotFoundError:
            return False
        return True

    async def delete_file(self, file_id: str) -> bool:
        """``DELETE /files/{id}``. False if it was gone already."""
        try:
            await self._call("DELETE", f"/files/{file_id}")
        except NotFoundError:
            return False
        return True

    async def batch_files(self, purpose: str = "batch") -> list[dict[str, Any]]:
        """``GET /files?purpose=batch`` (or ``vision``): the files uploaded for batches."""
        page = _object(await self._call("GET", f"/files?purpose={purpose}"))
        return [f for f in page.get("data") or [] if isinstance(f, dict)]

    async def download(self, url: str, sink: ImageSink) -> None:
        """An output line's image URL (``response_format: url``), guarded as a direct run's."""
        await self._client.download(url, sink)

    @asynccontextmanager
    async def content(self, file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """``GET /files/{id}/content``, streamed: yields an iterator of chunks."""
        path = f"/files/{file_id}/content"
        url = self._base + path
        headers, proxy, secrets = self._client.api_call(url)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self._timeout)
        with _mapped(f"GET {path}", self._timeout, url):
            async with self._client.session.get(
                url, headers=headers, proxy=proxy, timeout=timeout
            ) as resp:
                if resp.status >= 300:
                    raw = await resp.content.read(1 << 20)
                    raise status_from_body(resp.status, raw, resp.headers, secrets)
                yield resp.content.iter_chunked(_CHUNK)


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidResponseError("the server's answer is not a JSON object")
    return data


def seconds(value: Any) -> float:
    """A server's Unix time (``created_at``) as a float; 0 for anything else."""
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0
