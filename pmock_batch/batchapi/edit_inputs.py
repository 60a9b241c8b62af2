"""An edit's input images on the server: each distinct file uploaded once, named by id.

Before the input file of an edit batch is built, every input image its rows
name goes up with ``POST /files`` (``purpose=vision``), each distinct file (by
SHA-256) once, streamed from the file with its content type, under a name of
its own (``pmock-<token>-<file name>``). Each id is written to
``OUT/batches.jsonl`` (``input_file``) before a line names it, and a re-run
names the recorded id instead of uploading again (once it has seen, with one
``GET /files/{id}`` a run, that the server still holds it; one gone is recorded
``deleted`` and uploaded anew). The images are kept on the server, whatever
``--keep-files`` says: re-runs and new jobs that use the same file name them
again (delete them with the Files API when done; their ids are in the log). An
upload is announced first (``input_uploading``: its file name and size), so one
a kill cut off before its id was written is found by the next run, which
deletes what arrived unrecorded: the file of that unique name and size, never
another run's upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..errors import APIError, Decision
from ..failures import describe
from ..inputs import InputFile as Source
from ..jobs import Job
from ..pool import Pool
from .state import BatchState, ImageIntent
from .transport import IMAGE_PURPOSE, BatchClient, seconds

__all__ = ["InputUploader"]

log = logging.getLogger("pmock_batch")

_ATTEMPTS = 3  # tries of an upload that failed transiently
_SLACK = 60.0  # seconds of clock skew allowed between this machine and the server


class InputUploader:
    """Uploads the edits' input images the log names no id for; deletes cut-off uploads."""

    def __init__(
        self,
        api: BatchClient,
        state: BatchState,
        pool: Pool,
        *,
        pause: Callable[[int, str, APIError], Awaitable[None]],
        delete: Callable[[str | None], Awaitable[None]],
    ) -> None:
        self.api = api
        self.state = state
        self.pool = pool
        self._pause = pause
        self._delete = delete
        self._checked: set[str] = set()  # recorded ids seen on the server in this run

    async def upload(self, jobs: Iterable[Job]) -> tuple[dict[str, str], dict[str, APIError]]:
        """Upload the edits' input images the log names no id for, each once.

        Returns SHA-256 -> file id, and SHA-256 -> the error of each image the server
        refused for good (a 400 for a bad picture, say): only the jobs that use it
        fail. A key, URL or quota problem raises; so does a server that keeps failing.
        """
        refused: dict[str, APIError] = {}
        sources: dict[str, Source] = {}
        for job in jobs:
            if job.inputs is not None:
                for source in (*job.inputs.images, job.inputs.mask):
                    if source is not None:
                        sources.setdefault(source.sha256, source)
        for digest, source in sources.items():
            if self.pool.stopping:
                break
            if digest in self.state.inputs and await self._still_there(digest):
                continue
            # A name of its own: an orphan is found (and deleted) by it, never another
            # run's upload of the same picture.
            name = f"pmock-{secrets.token_hex(6)}-{source.filename}"
            intent = await asyncio.to_thread(self.state.input_uploading, digest, name, source.size)
            try:
                obj = await self._upload_image(source, intent)
            except APIError as exc:
                if describe(exc).decision is not Decision.FAIL:
                    raise
                await asyncio.to_thread(self.state.input_forgotten, digest)  # nothing arrived
                log.warning(
                    "the server refused %s: %s; the jobs that use it fail",
                    source.name,
                    exc,
                    extra={"event": "batch_input_refused", "reason": str(exc)},
                )
                refused[digest] = exc
                continue
            await asyncio.to_thread(self.state.input_file, digest, str(obj["id"]))
            self._checked.add(str(obj["id"]))
            log.info(
                "uploaded %s as %s (%s bytes)",
                source.name,
                obj["id"],
                f"{source.size:,}",
                extra={"event": "batch_input_upload", "file_id": str(obj["id"])},
            )
        return dict(self.state.inputs), refused

    async def _still_there(self, digest: str) -> bool:
        """Whether the recorded upload of ``digest`` is still on the server (asked once a run):
        one deleted or expired is recorded ``deleted``, and uploaded again."""
        file_id = self.state.inputs[digest]
        if file_id in self._checked:
            return True
        try:
            there = await self.api.has_file(file_id)
        except APIError as exc:  # a key or URL problem stops the run; else the row will tell
            if describe(exc).decision is Decision.ABORT:
                raise
            return True
        if not there:
            log.info(
                "%s is gone from the server; uploading it again",
                file_id,
                extra={"event": "batch_input_gone", "file_id": file_id},
            )
            await asyncio.to_thread(self.state.deleted_file, file_id)
            return False
        self._checked.add(file_id)
        return True

    async def _upload_image(self, source: Source, intent: ImageIntent) -> dict[str, Any]:
        """``POST /files`` (vision); after a transient failure, the file if it arrived, else
        again."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self.api.upload_image(source, intent.name)
            except APIError as exc:
                if attempt == _ATTEMPTS or describe(exc).decision is not Decision.RETRY:
                    raise
                await self._pause(attempt, f"uploading {source.name}", exc)
            with contextlib.suppress(APIError):  # it may have arrived: use it, never twice
                for f in self._arrived(await self.api.batch_files(IMAGE_PURPOSE), intent):
                    return f
        raise AssertionError("unreachable")  # pragma: no cover

    def _arrived(self, files: list[dict[str, Any]], intent: ImageIntent) -> list[dict[str, Any]]:
        """The files that may be the upload ``intent`` announced: its name and size, made
        since it was announced, and named by no record."""
        known = set(self.state.inputs.values())
        return [
            f
            for f in files
            if f.get("id")
            and str(f["id"]) not in known
            and f.get("filename") == intent.name
            and f.get("bytes") == intent.size
            and seconds(f.get("created_at")) >= intent.at - _SLACK
        ]

    async def orphans(self) -> None:
        """Delete image uploads a kill cut off before their ids were recorded."""
        if not self.state.image_intents:
            return
        try:
            files = await self.api.batch_files(IMAGE_PURPOSE)
        except APIError as exc:
            log.warning(
                "could not list uploaded images to delete orphans: %s",
                exc,
                extra={"event": "warning"},
            )
            return
        for intent in list(self.state.image_intents.values()):
            for f in self._arrived(files, intent):
                await self._delete(str(f["id"]))
            await asyncio.to_thread(self.state.input_forgotten, intent.sha256)
