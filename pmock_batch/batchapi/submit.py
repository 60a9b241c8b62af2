"""Submission and re-attachment: what is on the server, recorded before the next step.

:class:`Submitter` uploads input files and creates batches, writing each id
to ``OUT/batches.jsonl`` as soon as the server answers. On a re-run it
re-attaches: to a recorded batch not yet collected, or, for an upload whose
batch id was never written, to the batch carrying its
``metadata.pmock_batch_input`` tag (listing recent batches), else it creates
one now. It deletes orphans: uploads nothing owed needs any more, and files
uploaded just before a kill kept their ids out of the log (found by name).

An edit's input images go up first (:mod:`~pmock_batch.batchapi.edit_inputs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import APIError, Decision
from ..failures import describe
from ..jobs import Job
from ..models import JobRecord
from ..pool import Pool
from .book import Book
from .edit_inputs import InputUploader
from .plan import rows_of, split
from .state import Batch, BatchState, Upload
from .transport import BatchClient

__all__ = ["TAG", "Active", "Submitter"]

log = logging.getLogger("pmock_batch")

TAG = "pmock_batch_input"  # metadata on every batch: the input file id it was created for
_ATTEMPTS = 3  # tries of an upload or a batch creation that failed transiently
_FIRST_PAUSE, _MAX_PAUSE = 2.0, 30.0  # seconds before the next try, doubling


@dataclass(slots=True)
class Active:
    """A batch this run waits for, and the rows it holds."""

    batch: Batch
    rows: dict[str, str]  # custom_id -> fingerprint
    polls: int = 0


class Submitter:
    """Puts owed rows on the server, once; keeps :attr:`active`, the batches to wait for."""

    def __init__(
        self,
        api: BatchClient,
        state: BatchState,
        book: Book,
        pool: Pool,
        *,
        batch_size: int,
        max_bytes: int,
        keep_files: bool,
        field_case: str,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.api = api
        self.state = state
        self.book = book
        self.pool = pool
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self.field_case = field_case
        self.active: dict[str, Active] = {}
        self.submitted = 0  # batches created by this run
        self.sleep = sleep
        self.images = InputUploader(api, state, pool, pause=self._pause, delete=self.delete)

    async def submit(self, owed: list[tuple[Job, list[int]]]) -> list[JobRecord]:
        """Put the ``owed`` rows on the server; return the records of the jobs that fail
        before any row goes (an edit input the server refused)."""
        ids, refused = await self.images.upload(job for job, _ in owed)
        failed = self._refused(owed, refused)
        owed = [(job, left) for job, left in owed if job.id not in failed]
        records = [r for r in failed.values() if r is not None]
        if self.pool.stopping:
            return records
        rows = (
            row
            for job, left in owed
            for row in rows_of(job, self.field_case, only=left, file_ids=ids)
        )
        for infile in split(rows, batch_size=self.batch_size, max_bytes=self.max_bytes):
            if self.pool.stopping:
                return records
            name = f"pmock-batch-{secrets.token_hex(6)}.jsonl"
            await asyncio.to_thread(self.state.uploading, name)
            obj = await self._upload(name, infile.content)
            upload = await asyncio.to_thread(
                self.state.uploaded,
                str(obj["id"]),
                name,
                infile.model,
                infile.fingerprints,
                infile.endpoint,
            )
            log.info(
                "uploaded %s: %d image(s) of %s (%s bytes)",
                upload.file_id,
                len(infile.rows),
                infile.model,
                f"{infile.size:,}",
                extra={"event": "batch_upload", "file_id": upload.file_id},
            )
            await self.create(upload)
        return records

    def _refused(
        self, owed: list[tuple[Job, list[int]]], refused: dict[str, APIError]
    ) -> dict[str, JobRecord | None]:
        """The jobs an input the server refused belongs to: their owed images fail."""
        out: dict[str, JobRecord | None] = {}
        for job, left in owed:
            sources = (*job.inputs.images, job.inputs.mask) if job.inputs is not None else ()
            bad = next((refused[s.sha256] for s in sources if s and s.sha256 in refused), None)
            if bad is None:
                continue
            out[job.id] = None
            for index in left:
                found = self.book.owed(job.stems[index], job.fingerprint)
                if found is not None:
                    out[job.id] = self.book.failed(*found, describe(bad).record()) or out[job.id]
        return out

    async def _upload(self, name: str, content: bytes) -> dict[str, Any]:
        """``POST /files``; after a transient failure, the file if it arrived, else again."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self.api.upload(name, content)
            except APIError as exc:
                if attempt == _ATTEMPTS or describe(exc).decision is not Decision.RETRY:
                    raise
                await self._pause(attempt, f"uploading {name}", exc)
            with contextlib.suppress(APIError):  # it may have arrived: use it, never twice
                for f in await self.api.batch_files():
                    if f.get("filename") == name and f.get("id"):
                        return f
        raise AssertionError("unreachable")  # pragma: no cover

    async def _create(self, upload: Upload) -> dict[str, Any]:
        """``POST /batches``; after a transient failure, the batch if it was made, else again."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self.api.create(upload.file_id, upload.endpoint, {TAG: upload.file_id})
            except APIError as exc:
                if attempt == _ATTEMPTS or describe(exc).decision is not Decision.RETRY:
                    raise
                await self._pause(attempt, f"creating the batch of {upload.file_id}", exc)
            found = await self.find(upload)  # it may have been made: never two
            if found is not None:
                return found
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pause(self, attempt: int, what: str, exc: APIError) -> None:
        wait = min(_MAX_PAUSE, _FIRST_PAUSE * 2 ** (attempt - 1))
        log.warning(
            "%s failed (%s); checking and trying again in %.0fs",
            what,
            describe(exc).reason,
            wait,
            extra={"event": "batch_retry", "attempt": attempt},
        )
        await self.sleep(wait)

    async def create(self, upload: Upload) -> None:
        obj = await self._create(upload)
        at = obj.get("created_at")
        batch = await asyncio.to_thread(
            self.state.created, str(obj["id"]), upload.file_id, float(at) if at else None
        )
        self.submitted += 1
        log.info(
            "submitted %s: %d image(s)",
            batch.batch_id,
            len(upload.rows),
            extra={"event": "batch_submitted", "batch_id": batch.batch_id},
        )
        self.active[batch.batch_id] = Active(batch, upload.rows)

    async def reattach(self) -> None:
        for upload in list(self.state.uploads.values()):
            if upload.deleted:
                continue
            owed = any(self.book.owed(cid, fp) for cid, fp in upload.rows.items())
            batch = self.state.batches.get(upload.batch_id or "")
            if batch is not None and batch.lost:
                continue  # forgotten: what it held is owed again, and submitted again
            if batch is not None:
                if batch.collected and not self.keep_files:  # a kill before deleting
                    for file_id in (batch.file_id, batch.output_file_id, batch.error_file_id):
                        await self.delete(file_id)
                if owed and not batch.collected:
                    log.info(
                        "re-attached to %s (%s)",
                        batch.batch_id,
                        batch.status,
                        extra={"event": "batch_attached", "batch_id": batch.batch_id},
                    )
                    self.active[batch.batch_id] = Active(batch, upload.rows)
                continue
            if not owed:  # an upload no batch was created for, and nothing it holds is owed
                await self.delete(upload.file_id)
                continue
            found = await self.find(upload)
            if found is None:
                await self.create(upload)
                continue
            at = found.get("created_at")
            batch = await asyncio.to_thread(
                self.state.created, str(found["id"]), upload.file_id, float(at) if at else None
            )
            log.info(
                "re-attached to %s, found by its tag",
                batch.batch_id,
                extra={"event": "batch_attached", "batch_id": batch.batch_id},
            )
            self.active[batch.batch_id] = Active(batch, upload.rows)

    async def find(self, upload: Upload) -> dict[str, Any] | None:
        """The batch created for ``upload`` before a crash, if any: by its metadata tag."""
        async for batch in self.api.recent(since=upload.at - 60):
            metadata = batch.get("metadata")
            if isinstance(metadata, dict) and metadata.get(TAG) == upload.file_id:
                return batch
        return None

    async def orphans(self) -> None:
        """Delete files uploaded just before a crash that kept their ids from the log."""
        await self.images.orphans()
        if not self.state.intents:
            return
        try:
            files = await self.api.batch_files()
        except APIError as exc:
            log.warning(
                "could not list uploaded files to delete orphans: %s",
                exc,
                extra={"event": "warning"},
            )
            return
        for name in list(self.state.intents):
            for f in files:
                if f.get("filename") == name and f.get("id"):
                    await self.delete(str(f["id"]))
            await asyncio.to_thread(self.state.forgotten, name)

    async def delete(self, file_id: str | None) -> None:
        if not file_id or file_id in self.state.deleted:
            return
        try:
            await self.api.delete_file(file_id)
        except APIError as exc:
            log.warning("could not delete %s: %s", file_id, exc, extra={"event": "warning"})
            return
        await asyncio.to_thread(self.state.deleted_file, file_id)
