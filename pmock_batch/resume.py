"""Resume: which jobs a previous run already finished, so a re-run does only the rest.

A job is done when its latest manifest record is ``ok`` for the same request
fingerprint and every file it recorded is still a regular file inside OUT
with the recorded size (and, with ``verify``, the recorded SHA-256). The index keeps only those
facts per job, never whole records, so it stays small for large batches.

With several manifests (shards: ``manifest.shard-K-of-N.jsonl``), the newest
``ok`` record of a job across them decides: its files are the ones last written.

An ``n > 1`` job that stopped part way (an image failed, the run was stopped
or killed: the runner records each image as it lands) keeps its intact
images: :meth:`DoneIndex.kept` names them, so a re-run pays only for the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .errors import InvalidResponseError
from .files import contained_file, open_regular, sha256_of
from .images import EXTENSIONS, read_header
from .jobs import Job
from .models import FileRecord

__all__ = ["DoneIndex"]

_FORMATS = {ext: fmt for fmt, ext in EXTENSIONS.items()}  # png, jpg, webp -> the format
_HEADER_BYTES = 1 << 20  # enough of a file for any image header pmock-batch writes


@dataclass(frozen=True, slots=True)
class _Done:
    fingerprint: str
    files: tuple[tuple[str, int, str], ...]  # (path relative to OUT, bytes, sha256)
    at: str = ""  # finished_at (ISO 8601 UTC): the newest across manifests decides


@dataclass(frozen=True, slots=True)
class _Part:
    """Some of a job's images: the record of an ``n > 1`` job that stopped part way."""

    fingerprint: str
    files: tuple[FileRecord, ...]
    at: str = ""  # when it was recorded: the newest across manifests counts
    pending: bool = False  # the rest is in a Batch API batch still on the server


@dataclass(frozen=True, slots=True)
class _Other:
    """A record that is neither done nor a part (``failed`` with no image, ``not_run``, ...)."""

    fingerprint: str | None
    pending: bool = False  # in a Batch API batch still on the server
    at: str = ""
    invalid: bool = False  # the line broke: it says nothing of the job's earlier outcome


def _stamp(data: dict[str, object]) -> str:
    return str(data.get("finished_at") or data.get("started_at") or "")


def _part(data: dict[str, object]) -> _Part | _Other:
    """The saved images of a ``failed``, ``not_run`` or ``pending`` record, if it names any."""
    files, fingerprint = data.get("files"), data.get("fingerprint")
    fingerprint = fingerprint if isinstance(fingerprint, str) else None
    pending, at = data.get("status") == "pending", _stamp(data)
    if data.get("status") not in ("failed", "not_run", "pending") or fingerprint is None:
        return _Other(fingerprint, at=at, invalid=data.get("status") == "invalid")
    if not isinstance(files, list) or not files:
        return _Other(fingerprint, pending, at)
    try:
        files_ = tuple(FileRecord.model_validate(f) for f in files)
        return _Part(fingerprint, files_, at, pending)
    except ValidationError:
        return _Other(fingerprint, pending, at)


def _latest(path: Path) -> Iterator[tuple[str, _Done | _Part | _Other]]:
    """Yield ``(id, what the record says)`` for every well-formed record, in log order.

    A missing manifest yields nothing. One that is not a regular file (a link, a FIFO)
    raises :class:`OSError` at once, never blocking: the run checked it before."""
    try:
        fh = open_regular(path)
    except FileNotFoundError:
        return
    with fh:
        for raw in fh:
            try:
                data = json.loads(raw)
            except ValueError:
                continue  # a torn line left by a crash
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                continue
            done: _Done | _Part | _Other = _part(data)
            if data.get("status") == "ok" and isinstance(data.get("fingerprint"), str):
                try:
                    files = tuple(
                        (str(f["path"]), int(f["bytes"]), str(f["sha256"])) for f in data["files"]
                    )
                except (KeyError, TypeError, ValueError):
                    files = ()
                if files:
                    done = _Done(data["fingerprint"], files, str(data.get("finished_at") or ""))
            yield data["id"], done


class DoneIndex:
    """The jobs the manifests record as done, by id."""

    def __init__(
        self,
        entries: dict[str, _Done] | None = None,
        parts: dict[str, _Part] | None = None,
        pending: dict[str, str] | None = None,
    ) -> None:
        self._entries = entries or {}
        self._parts = parts or {}  # jobs whose latest record kept some of their images
        self._pending = pending or {}  # id -> fingerprint: jobs in a batch on the server

    @classmethod
    def load(cls, manifest: Path) -> DoneIndex:
        """Read the manifest log; the latest record of each id decides."""
        return cls.load_all([manifest])

    @classmethod
    def load_all(cls, manifests: Iterable[Path]) -> DoneIndex:
        """Read several logs (``manifest.jsonl`` and the shards'): in each, the latest
        record of an id decides; across them, the newest of those that are ``ok``.

        A part (some images of an unfinished job) outlives a later record of the same
        request that names no image (the job was stopped again before it ran): those
        images are still paid for. A later ``ok`` record, or another request, ends it.
        Across manifests the newest part counts, unless a newer ``ok`` record exists.
        """
        entries: dict[str, _Done] = {}
        parts: dict[str, _Part] = {}
        pending: dict[str, tuple[str, str]] = {}  # id -> (fingerprint, when): by time, too
        for manifest in manifests:
            own: dict[str, _Done] = {}
            own_parts: dict[str, _Part] = {}
            own_pending: dict[str, tuple[str, str]] = {}
            for job_id, done in _latest(manifest):
                if isinstance(done, _Other) and done.invalid:
                    continue  # a broken line: the job's ok record, if any, still stands
                own.pop(job_id, None)
                own_pending.pop(job_id, None)
                if not isinstance(done, _Done) and done.pending:
                    own_pending[job_id] = (done.fingerprint or "", done.at)
                if job_id in pending and done.at > pending[job_id][1]:
                    del pending[job_id]  # a newer record in another manifest
                if isinstance(done, _Done):
                    own[job_id] = done
                    own_parts.pop(job_id, None)
                elif isinstance(done, _Part):
                    own_parts[job_id] = done
                elif job_id in own_parts and own_parts[job_id].fingerprint != done.fingerprint:
                    del own_parts[job_id]
            for job_id, done in own.items():
                seen = entries.get(job_id)
                if seen is None or done.at >= seen.at:
                    entries[job_id] = done
            for job_id, part in own_parts.items():
                if job_id not in parts or part.at >= parts[job_id].at:
                    parts[job_id] = part
            for job_id, (fp, at) in own_pending.items():
                if job_id not in pending or at >= pending[job_id][1]:
                    pending[job_id] = (fp, at)
        for job_id in [j for j, part in parts.items() if j in entries]:
            if entries[job_id].at >= parts[job_id].at:
                del parts[job_id]
        waiting = {
            j: fp for j, (fp, at) in pending.items() if j not in entries or entries[j].at < at
        }
        return cls(entries, parts, waiting)

    def pending(self, job: Job) -> bool:
        """Whether the latest record of ``job`` (the same request) is ``pending``: its images
        are in a Batch API batch still on the server, paid for there."""
        return self._pending.get(job.id) == job.fingerprint

    def __len__(self) -> int:
        return len(self._entries)

    def is_done(self, job: Job, out_dir: Path, *, verify: bool = False) -> bool:
        """True if ``job`` needs no work: same request, files present and intact.

        Without ``verify`` this costs one ``stat`` per file. With ``verify`` it
        also hashes every file, so call it from a worker thread.
        """
        done = self._entries.get(job.id)
        return done is not None and self._intact(done, job, out_dir, verify=verify)

    def kept(self, job: Job, out_dir: Path, *, verify: bool = False) -> list[FileRecord]:
        """The intact images an earlier run saved of ``job`` (the same request): a re-run
        makes only the others. From an unfinished job's record, or from an ``ok`` one some
        of whose images went missing or changed. Hashes the files with ``verify``."""
        part = self._parts.get(job.id)
        files: Iterable[FileRecord | None]
        if part is not None and part.fingerprint == job.fingerprint:
            files = part.files
        elif (done := self._entries.get(job.id)) and done.fingerprint == job.fingerprint:
            files = (_file_record(out_dir, *f) for f in done.files)  # the rare case: read them
        else:
            return []
        stems = set(job.stems)
        kept = [
            f
            for f in files
            if f is not None
            and f.path.rpartition(".")[0] in stems
            and _file_intact(out_dir, f.path, f.bytes, f.sha256, verify=verify)
        ]
        return kept if len(kept) < job.request.count else []  # all of them: done, not a part

    @staticmethod
    def _intact(done: _Done, job: Job, out_dir: Path, *, verify: bool) -> bool:
        if done.fingerprint != job.fingerprint:
            return False
        if len(done.files) != job.request.count:
            return False
        return all(
            _file_intact(out_dir, relative, size, sha256, verify=verify)
            for relative, size, sha256 in done.files
        )


def _file_record(out_dir: Path, relative: str, size: int, sha256: str) -> FileRecord | None:
    """The record of an ``ok`` job's image, its format and size read from its header; None
    if it is missing or unreadable (the index keeps only path, size and hash of each)."""
    fmt = _FORMATS.get(relative.rpartition(".")[2])
    target = contained_file(out_dir, relative)
    if fmt is None or target is None:
        return None
    try:
        with open_regular(target) as fh:
            width, height = read_header(fmt, fh.read(_HEADER_BYTES))
    except (OSError, InvalidResponseError):
        return None
    return FileRecord(
        path=relative, sha256=sha256, bytes=size, format=fmt, width=width, height=height
    )


def _file_intact(out_dir: Path, relative: str, size: int, sha256: str, *, verify: bool) -> bool:
    """Whether ``relative`` is a regular file inside OUT with this size (and hash)."""
    # A record is text anyone may edit: only regular files inside OUT count.
    target = contained_file(out_dir, relative)
    if target is None:
        return False
    try:
        if target.stat().st_size != size:
            return False
    except OSError:
        return False
    return not verify or sha256_of(target, size) == sha256
