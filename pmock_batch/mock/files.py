"""The mock's file store, as OpenAI's Files API keeps it: uploads and the files batches write.

An uploaded file keeps its bytes. A file a batch writes (its output or error
file) keeps no bytes: it names its batch and its kind, and its lines are
rendered when its content is read (see :mod:`pmock_batch.mock.batch_routes`),
so an output file of thousands of images is never held in memory.

Ids look like OpenAI's: ``file-`` and 24 letters and digits. Listing is newest
first, as the real API's default ``order=desc``.
"""

from __future__ import annotations

import itertools
import secrets
import string
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BATCH_FILE_SUFFIX",
    "FILE_PURPOSES",
    "MAX_BATCH_FILE_BYTES",
    "FileStore",
    "StoredFile",
    "new_id",
]

FILE_PURPOSES = (
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
)  # what an upload may name; "batch_output" is the server's own
MAX_BATCH_FILE_BYTES = 200 * 1_000_000  # the Batch API's limit on an input file
BATCH_FILE_SUFFIX = ".jsonl"
FILE_EXPIRY_SECONDS = 30 * 24 * 3600  # purpose=batch files expire after 30 days
_ALPHABET = string.ascii_letters + string.digits

GeneratedKind = Literal["output", "error"]


def new_id(prefix: str, length: int = 24) -> str:
    """A random id such as ``file-3kQ...`` (letters and digits after the prefix)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass(slots=True)
class StoredFile:
    """One file: an upload (``data``) or a batch's output or error file (``batch_id``, ``kind``)."""

    id: str
    filename: str
    purpose: str
    created_at: int  # Unix seconds
    size: int  # bytes: exact for uploads and error files, an estimate for output files
    data: bytes | None = None  # an upload's bytes
    batch_id: str | None = None  # the batch that wrote it
    kind: GeneratedKind | None = None
    sequence: int = 0  # creation order, for listing newest first

    def to_json(self) -> dict[str, Any]:
        """The file object, as ``GET /v1/files/{id}`` answers."""
        expires = (
            self.created_at + FILE_EXPIRY_SECONDS if self.purpose.startswith("batch") else None
        )
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "expires_at": expires,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    """Every file the mock holds, by id."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._sequence = itertools.count(1)

    def __len__(self) -> int:
        return len(self._files)

    def get(self, file_id: str) -> StoredFile | None:
        """The file, or None when there is none (or it was deleted)."""
        return self._files.get(file_id)

    def upload(self, *, filename: str, purpose: str, data: bytes, created_at: int) -> StoredFile:
        """Keep an uploaded file."""
        stored = StoredFile(
            id=new_id("file-"),
            filename=filename,
            purpose=purpose,
            created_at=created_at,
            size=len(data),
            data=data,
            sequence=next(self._sequence),
        )
        self._files[stored.id] = stored
        return stored

    def generated(
        self, *, batch_id: str, kind: GeneratedKind, size: int, created_at: int
    ) -> StoredFile:
        """Record a batch's output or error file (its lines are rendered when read)."""
        stored = StoredFile(
            id=new_id("file-"),
            filename=f"{batch_id}_{kind}.jsonl",
            purpose="batch_output",
            created_at=created_at,
            size=size,
            batch_id=batch_id,
            kind=kind,
            sequence=next(self._sequence),
        )
        self._files[stored.id] = stored
        return stored

    def delete(self, file_id: str) -> bool:
        """Forget a file; False when there was none."""
        return self._files.pop(file_id, None) is not None

    def newest_first(self, *, purpose: str | None = None) -> list[StoredFile]:
        """Every file (of one purpose, if given), the newest first."""
        files = [f for f in self._files.values() if purpose is None or f.purpose == purpose]
        return sorted(files, key=lambda f: f.sequence, reverse=True)
