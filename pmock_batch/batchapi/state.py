"""``OUT/batches.jsonl``: what was uploaded and submitted, so a re-run never submits twice.

The log is append-only, one JSON object a line, each written and fsynced
before the next step is taken:

- ``uploading``: a file is about to be uploaded (its name), so a kill before
  the upload's answer leaves a name to look for;
- ``upload``: its file id, endpoint, model, and the ``[custom_id, fingerprint]`` rows it holds;
- ``input_uploading``: an edit's input image is about to be uploaded (its
  SHA-256, file name and size), so a kill before the answer leaves it findable;
- ``input_file``: it was uploaded (its SHA-256 and file id), written before
  any line names it, so a re-run names it again instead of uploading it twice;
- ``input_forgotten``: an image upload cut off was dealt with (its orphan deleted);
- ``batch``: the batch id, as soon as ``POST /batches`` answers;
- ``status``: each status change, with ``request_counts`` and the file ids;
- ``collected``: every line of the batch was recorded in the manifest;
- ``deleted``: a file was deleted from the server.

:meth:`BatchState.load` folds the log into :class:`Upload` and :class:`Batch`
views; a torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import check_own_file
from .plan import ENDPOINT

__all__ = [
    "STATE_NAME",
    "TERMINAL",
    "Batch",
    "BatchState",
    "ImageIntent",
    "Upload",
    "held_rows",
]

STATE_NAME = "batches.jsonl"
TERMINAL = frozenset({"completed", "expired", "cancelled", "failed"})


@dataclass(slots=True)
class Upload:
    """One uploaded input file and the rows it holds."""

    file_id: str
    name: str
    model: str
    rows: dict[str, str]  # custom_id -> fingerprint
    at: float  # when it was uploaded (Unix seconds)
    batch_id: str | None = None
    deleted: bool = False
    endpoint: str = ENDPOINT


@dataclass(frozen=True, slots=True)
class ImageIntent:
    """An edit's input image announced for upload, its id not (yet) recorded."""

    sha256: str
    name: str  # the file name it is uploaded under
    size: int  # bytes
    at: float  # when it was announced (Unix seconds)


@dataclass(slots=True)
class Batch:
    """One submitted batch, as last seen."""

    batch_id: str
    file_id: str
    at: float  # when it was created (Unix seconds)
    status: str = "validating"
    counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    expires_at: float | None = None
    collected: bool = False
    lost: bool = False  # forgotten: the server does not know it (batches OUT --forget)
    mock: bool = False  # made by a --mock run's mock, which went with that run

    @property
    def running(self) -> bool:
        return not self.lost and self.status not in TERMINAL


class BatchState:
    """The folded log, and the one writer that appends to it."""

    def __init__(self, out_dir: Path, *, on_step: Callable[[str], None] | None = None) -> None:
        self.out_dir = out_dir
        self.path = out_dir / STATE_NAME
        self.uploads: dict[str, Upload] = {}  # by file id, in log order
        self.batches: dict[str, Batch] = {}  # by batch id, in log order
        self.intents: dict[str, float] = {}  # names announced but never recorded as uploaded
        self.deleted: set[str] = set()  # file ids deleted from the server
        self.inputs: dict[str, str] = {}  # an edit's input image: SHA-256 -> file id
        self.image_intents: dict[str, ImageIntent] = {}  # by SHA-256: uploads cut off
        self.mock = False  # this run's server is --mock's: its batches are recorded as such
        self._on_step = on_step  # tests: a crash right after a step was recorded

    @classmethod
    def load(cls, out_dir: Path, *, on_step: Callable[[str], None] | None = None) -> BatchState:
        """Read ``OUT/batches.jsonl`` (missing: empty). Runs in a worker thread."""
        state = cls(out_dir, on_step=on_step)
        check_own_file(out_dir, STATE_NAME)
        try:
            with state.path.open("rb") as fh:
                for raw in fh:
                    try:
                        event = json.loads(raw)
                    except ValueError:
                        continue  # a torn line left by a crash
                    if isinstance(event, dict):
                        state._fold(event)
        except FileNotFoundError:
            pass
        return state

    def _fold(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "uploading":
            self.intents[str(e["name"])] = float(e.get("at", 0))
        elif kind == "upload":
            self.intents.pop(str(e["name"]), None)
            rows = {str(cid): str(fp) for cid, fp in e.get("rows", [])}
            upload = Upload(str(e["file_id"]), str(e["name"]), str(e["model"]), rows, e["at"])
            upload.endpoint = str(e.get("endpoint") or ENDPOINT)  # older logs: generations
            self.uploads[upload.file_id] = upload
        elif kind == "input_uploading":
            intent = ImageIntent(str(e["sha256"]), str(e["name"]), int(e["size"]), float(e["at"]))
            self.image_intents[intent.sha256] = intent
        elif kind == "input_file":
            self.image_intents.pop(str(e["sha256"]), None)
            self.inputs[str(e["sha256"])] = str(e["file_id"])
        elif kind == "input_forgotten":
            self.image_intents.pop(str(e["sha256"]), None)
        elif kind == "batch":
            batch = Batch(str(e["batch_id"]), str(e["file_id"]), float(e["at"]))
            batch.mock = bool(e.get("mock"))
            self.batches[batch.batch_id] = batch
            if batch.file_id in self.uploads:
                self.uploads[batch.file_id].batch_id = batch.batch_id
        elif kind == "status" and (b := self.batches.get(str(e["batch_id"]))) is not None:
            b.status = str(e["status"])
            b.counts = dict(e.get("counts") or {})
            b.output_file_id = e.get("output_file_id")
            b.error_file_id = e.get("error_file_id")
            b.expires_at = e.get("expires_at")
        elif kind == "collected" and (b := self.batches.get(str(e["batch_id"]))) is not None:
            b.collected = True
        elif kind == "lost" and (b := self.batches.get(str(e["batch_id"]))) is not None:
            b.lost = True
        elif kind == "deleted":
            file_id = str(e["file_id"])
            self.deleted.add(file_id)
            self.inputs = {k: v for k, v in self.inputs.items() if v != file_id}
            if file_id in self.uploads:
                self.uploads[file_id].deleted = True
        elif kind == "forgotten":  # an intent resolved: its orphan was deleted, or none was found
            self.intents.pop(str(e["name"]), None)

    def _append(self, event: dict[str, Any]) -> None:
        """Write one line and fsync it; then fold it in. Never through a link."""
        event.setdefault("at", time.time())
        data = (json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        check_own_file(self.out_dir, STATE_NAME)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._fold(event)
        if self._on_step is not None:
            self._on_step(str(event["event"]))

    # -- the steps ----------------------------------------------------------

    def uploading(self, name: str) -> None:
        self._append({"event": "uploading", "name": name})

    def forgotten(self, name: str) -> None:
        self._append({"event": "forgotten", "name": name})

    def uploaded(
        self,
        file_id: str,
        name: str,
        model: str,
        rows: dict[str, str],
        endpoint: str = ENDPOINT,
    ) -> Upload:
        self._append(
            {
                "event": "upload",
                "file_id": file_id,
                "name": name,
                "endpoint": endpoint,
                "model": model,
                "rows": [[cid, fp] for cid, fp in rows.items()],
            }
        )
        return self.uploads[file_id]

    def input_uploading(self, sha256: str, name: str, size: int) -> ImageIntent:
        self._append({"event": "input_uploading", "sha256": sha256, "name": name, "size": size})
        return self.image_intents[sha256]

    def input_forgotten(self, sha256: str) -> None:
        self._append({"event": "input_forgotten", "sha256": sha256})

    def input_file(self, sha256: str, file_id: str) -> None:
        self._append({"event": "input_file", "sha256": sha256, "file_id": file_id})

    def created(self, batch_id: str, file_id: str, at: float | None = None) -> Batch:
        event: dict[str, Any] = {"event": "batch", "batch_id": batch_id, "file_id": file_id}
        if at is not None:
            event["at"] = at
        if self.mock:
            event["mock"] = True  # gone with its process: a later --mock run may forget it
        self._append(event)
        return self.batches[batch_id]

    def status(self, batch: Batch, seen: dict[str, Any]) -> bool:
        """Record what ``GET /batches/{id}`` said, if it changed anything. True if it did."""
        counts = {k: int(v) for k, v in (seen.get("request_counts") or {}).items()}
        event = {
            "event": "status",
            "batch_id": batch.batch_id,
            "status": str(seen.get("status")),
            "counts": counts,
            "output_file_id": seen.get("output_file_id"),
            "error_file_id": seen.get("error_file_id"),
            "expires_at": seen.get("expires_at"),
        }
        same = (
            batch.status == event["status"]
            and batch.counts == counts
            and (batch.output_file_id, batch.error_file_id)
            == (event["output_file_id"], event["error_file_id"])
        )
        if not same:
            self._append(event)
        return not same

    def collected(self, batch: Batch) -> None:
        self._append({"event": "collected", "batch_id": batch.batch_id})

    def lost(self, batch: Batch) -> None:
        """Forget a batch the server does not know: a run no longer waits for it, and
        submits the images it held again."""
        self._append({"event": "lost", "batch_id": batch.batch_id})

    def deleted_file(self, file_id: str) -> None:
        self._append({"event": "deleted", "file_id": file_id})


def held_rows(out_dir: Path) -> dict[str, str]:
    """``custom_id -> fingerprint`` of the rows a batch recorded for OUT may still hold:
    running, or ended but not collected (its output is paid for). A run without
    ``--batch-api`` does not make them again. Forgotten and collected batches hold none.
    Runs in a worker thread."""
    if not (out_dir / STATE_NAME).is_file():
        return {}
    state = BatchState.load(out_dir)
    rows: dict[str, str] = {}
    for upload in state.uploads.values():
        batch = state.batches.get(upload.batch_id or "")
        if upload.deleted or (batch is not None and (batch.lost or batch.collected)):
            continue
        rows.update(upload.rows)
    return rows
