"""The manifest: ``OUT/manifest.jsonl``, one JSON record per job.

While a run goes on the manifest is an append-only log: each record is
appended and flushed as soon as its job finishes, so a crash loses at most
the jobs in flight. A reader tolerates a torn last line. On a clean finish
:func:`compact` rewrites it atomically as one line per job (its latest
record), in input order. The manifest is never opened through a symbolic
link (``O_NOFOLLOW``), and the compaction is written through
:class:`~pmock_batch.files.AtomicFile`, which never replaces a link.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
from aiofiles.threadpool.text import AsyncTextIOWrapper
from pydantic import ValidationError

from .files import AtomicFile
from .models import JobRecord, describe_errors

__all__ = ["ManifestWriter", "compact", "latest_records", "read_records", "stale_records"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _no_link(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open`: fail (``ELOOP``) rather than follow a link."""
    return os.open(path, flags | _NOFOLLOW, 0o666)  # as open() would: the umask applies


class ManifestWriter:
    """Appends records to the manifest log, one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: AsyncTextIOWrapper | None = None
        # aiofiles runs each call in a worker thread, and a text file is not
        # thread-safe: concurrent appends from many workers must take turns.
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> ManifestWriter:
        await aiofiles.os.makedirs(self.path.parent, exist_ok=True)
        await _heal_torn_tail(self.path)
        self._fh = await aiofiles.open(self.path, "a", encoding="utf-8", opener=_no_link)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._fh is not None:
            await self._fh.close()
            self._fh = None

    async def append(self, record: JobRecord) -> None:
        await self.append_many([record])

    async def append_many(self, records: list[JobRecord]) -> None:
        """Append records in one write and one flush."""
        if self._fh is None:
            raise RuntimeError("ManifestWriter is not open; use 'async with'")
        text = "".join(r.model_dump_json() + "\n" for r in records)
        async with self._lock:
            await self._fh.write(text)
            await self._fh.flush()


async def _heal_torn_tail(path: Path) -> None:
    """If a crash left a last line without its newline, end it so appends stay parseable."""
    try:
        size = (await aiofiles.os.stat(path)).st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    async with aiofiles.open(path, "rb+", opener=_no_link) as fh:
        await fh.seek(size - 1)
        if await fh.read(1) != b"\n":
            await fh.write(b"\n")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(byte offset, line)`` for every line of the log."""
    offset = 0
    with path.open("rb") as fh:
        for line in fh:
            yield offset, line
            offset += len(line)


def _join(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{field}: {problem}" for field, problem in problems)


def _load(line: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None  # a torn line left by a crash
    return data if isinstance(data, dict) else None


def read_records(path: Path) -> Iterator[JobRecord]:
    """Every well-formed record in the log, in file order. Torn lines are skipped."""
    if not path.exists():
        return
    for _, line in _raw_lines(path):
        data = _load(line)
        if data is not None:
            yield JobRecord.model_validate(data)


@dataclass(frozen=True, slots=True, order=True)
class _Entry:
    """Where a job's latest record sits in the log: enough to read it back, nothing more."""

    line: int
    offset: int
    length: int
    key: str
    row: int = 0  # the record's line in the manifest file, 1-based
    real: bool = True  # an outcome of the job (ok, failed, pending...), not an invalid line


def _latest_entries(
    path: Path, moved: Mapping[str, int], *, ok_under_invalid: bool = False
) -> list[_Entry]:
    """Each job's latest record, as byte offsets, sorted by input line.

    With ``ok_under_invalid`` (compaction), a job whose latest record is ``invalid``
    (its line broke) keeps its last real outcome too, just before it: ``ok``, or the
    images an unfinished one saved, or ``pending``. Once the line is fixed, that
    outcome still counts: nothing is made and paid for again.
    Memory stays small: only offsets are kept per job, never whole records.
    """
    latest: dict[str, _Entry] = {}
    ok: dict[str, _Entry] = {}  # the last real record of each job whose line broke since
    for row, (offset, raw) in enumerate(_raw_lines(path), start=1):
        data = _load(raw)
        if data is None:
            continue
        key = str(data.get("id")) if data.get("id") is not None else f"#line{data.get('line')}"
        line = moved.get(key, data.get("line"))
        status = data.get("status")
        at = line if isinstance(line, int) else 0
        entry = _Entry(at, offset, len(raw), key, row, real=status != "invalid")
        before = latest.get(key)
        if ok_under_invalid and not entry.real and before is not None and before.real:
            ok[key] = before  # kept under the broken line's record
        elif entry.real:
            ok.pop(key, None)  # a newer real outcome: the kept one is history
        latest[key] = entry
    for key in [k for k in ok if k in moved]:  # skipped as done: its ok record is its latest
        latest[key] = ok.pop(key)
    # Just before the invalid record, at its line: the report reads the invalid one last.
    kept = [replace(e, line=latest[k].line) for k, e in ok.items()]
    return sorted([*latest.values(), *kept])


def latest_records(
    path: Path, *, on_bad: Callable[[int, str], None] | None = None
) -> Iterator[JobRecord]:
    """The latest record of every job, in input-line order, read one at a time.

    A record that is JSON but not a valid record (edited by hand, or written by
    another version) raises, unless ``on_bad`` is given: then it is told the
    record's line in the manifest and what is wrong, and the record is skipped.
    """
    if not path.exists():
        return
    entries = _latest_entries(path, {})
    with path.open("rb") as src:
        for entry in entries:
            src.seek(entry.offset)
            data = _load(src.read(entry.length))
            if data is None:
                continue
            try:
                record = JobRecord.model_validate(data)
            except ValidationError as exc:
                if on_bad is None:
                    raise
                on_bad(entry.row, _join(describe_errors(exc)))
                continue
            yield record


def stale_records(path: Path, current: Set[str]) -> list[dict[str, Any]]:
    """The latest records of jobs not in ``current`` (every job of the job file as it is now).

    They belong to lines since removed, or to id-less jobs whose request (and
    so whose name) changed. Raw dicts, so a damaged record is still listed.
    """
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    with path.open("rb") as src:
        for entry in _latest_entries(path, {}):
            if entry.key in current:
                continue
            src.seek(entry.offset)
            data = _load(src.read(entry.length))
            if data is not None:
                out.append(data)
    return out


def compact(
    path: Path,
    current_lines: Mapping[str, int] | None = None,
    *,
    current: Set[str] | None = None,
    prune: bool = False,
) -> None:
    """Rewrite the log as one line per job (its latest record), sorted by input line.

    ``current_lines`` gives the line number, in the job file as it is now, of
    jobs this run skipped as already done; their records get that line.
    ``current``, when given, is every job of the job file as it is now. The
    records of other jobs (lines since removed, id-less jobs whose name
    changed) are kept, after the current ones, so that an empty or truncated
    job file never wipes the manifest; with ``prune`` they are dropped.
    """
    moved = current_lines or {}
    if not path.exists():
        return
    entries = _latest_entries(path, moved, ok_under_invalid=True)
    if current is not None:
        stale = [entry for entry in entries if entry.key not in current]
        entries = [entry for entry in entries if entry.key in current]
        if not prune:
            entries += stale
    with open(path, "rb", opener=_no_link) as src, AtomicFile(path.parent, path.name) as dst:
        for entry in entries:
            src.seek(entry.offset)
            chunk = src.read(entry.length)
            data = _load(chunk) if entry.key in moved else None
            if data is not None and data.get("line") != entry.line:
                data["line"] = entry.line
                chunk = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
            dst.write(chunk if chunk.endswith(b"\n") else chunk + b"\n")
        dst.commit()  # fsync, then rename over the log: never over a link
