"""Merging outputs: fold shard manifests and other output folders into one OUT.

The sources are ``OUT/manifest.jsonl``, OUT's shard manifests
(``manifest.shard-K-of-N.jsonl``), then for each other folder (a matrix
job's artifact, say) its ``manifest.jsonl`` and shard manifests. Each source
is a log: its last record of a job is its word on that job. Across sources a
job keeps its newest ``ok`` record (by ``finished_at``), else its newest
record; two ``ok`` records with different fingerprints are a conflict
(:class:`~pmock_batch.errors.MergeConflictError`, before anything changes)
unless ``prefer_newest``.

An ``ok`` record's images are brought into OUT by :mod:`pmock_batch.transfer`
only if every one of them matches its recorded size and SHA-256 (checked
while copied, committed all together; never through a link, never outside
OUT). A record whose images fail is not merged as ``ok``.

A crash is harmless: images first (each atomic), then the new manifest
(atomic), and only then are OUT's shard manifests removed; an interrupted
merge is simply run again. It holds OUT's lock and every shard lock, and refuses an
other folder a run is writing (it only probes their locks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import rich_click as rclick
from pydantic import ValidationError

from .config import MANIFEST_NAME
from .errors import (
    LockedError,
    MergeConflictError,
    OutputPathError,
    PmockBatchError,
    UsageError,
)
from .files import (
    AtomicFile,
    check_own_file,
    contained_file,
    remove_file,
    remove_stray_temps,
    sha256_of,
)
from .flags import FILE
from .lock import LOCK_NAME, held, run_lock
from .models import ErrorRecord, JobRecord
from .report import REPORT_NAME, write_report
from .text import printable
from .transfer import bring_files, bring_partials, intact

__all__ = ["MergeResult", "merge", "merge_outputs"]

SHARD_MANIFEST = re.compile(r"manifest\.shard-[0-9]+-of-[0-9]+\.jsonl\Z")
SHARD_LOCK = re.compile(r"\.lock\.shard-[0-9]+-of-[0-9]+\Z")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_SHOWN_CONFLICTS = 3


@dataclass(frozen=True, slots=True)
class _Source:
    folder: Path
    name: str  # the manifest's file name in ``folder``
    index: int  # its place in the merge: a later source wins a tie
    own: bool  # a manifest of OUT itself

    def __str__(self) -> str:
        return str(self.folder / self.name)


@dataclass(frozen=True, slots=True)
class _Seen:
    """One record as read, with where it came from and its line as written."""

    record: JobRecord
    raw: bytes
    source: _Source

    @property
    def order(self) -> tuple[str, int]:
        """Newer sorts later: the record's time, then the later source."""
        r = self.record
        return (r.finished_at or r.started_at or "", self.source.index)


@dataclass(slots=True)
class _Job:
    latest: dict[int, _Seen] = field(default_factory=dict)  # per source, its last record
    oks: dict[int, _Seen] = field(default_factory=dict)  # per source, its last ok record


@dataclass(slots=True)
class MergeResult:
    """What a merge did, for the command to print."""

    sources: list[str] = field(default_factory=list)
    jobs: int = 0
    ok: int = 0
    copied: int = 0  # images copied into OUT
    present: int = 0  # images already in OUT with the right SHA-256
    removed: list[str] = field(default_factory=list)  # OUT's shard manifests merged and removed
    kept: list[str] = field(default_factory=list)  # manifests with damaged records: not removed
    rejected: list[str] = field(default_factory=list)  # ok records not merged as ok, and why
    warnings: list[str] = field(default_factory=list)
    changed: bool = False  # the manifest was rewritten
    report: Path | None = None


def _key(record: JobRecord) -> str:
    """A job's identity: its id, else its fingerprint, else its line."""
    if record.id is not None:
        return record.id
    if record.fingerprint is not None:
        return f"#fingerprint:{record.fingerprint}"
    return f"#line{record.line}"


def _shard_names(folder: Path, pattern: re.Pattern[str]) -> list[str]:
    names = os.listdir(folder) if folder.is_dir() else []
    return sorted(name for name in names if pattern.match(name))


def _shard_locks(out: Path) -> list[str]:
    """OUT's shard locks: those there, and those of the shard manifests there."""
    names = set(_shard_names(out, SHARD_LOCK))
    for manifest in _shard_names(out, SHARD_MANIFEST):
        names.add(LOCK_NAME + manifest.removeprefix("manifest").removesuffix(".jsonl"))
    return sorted(names)


def _check_idle(other: Path) -> None:
    """Raise :class:`LockedError` if a run (or a shard) is writing ``other`` right now."""
    for name in (LOCK_NAME, *_shard_locks(other)):
        if held(other, name):
            raise LockedError(
                f"a pmock-batch run is writing {other} (it holds {other / name}); "
                "merge it once that run ends; nothing was merged"
            )


def _sources(out: Path, others: Sequence[Path], result: MergeResult) -> list[_Source]:
    """Every manifest to merge, OUT's first; links in other folders are skipped."""
    found: list[_Source] = []
    for folder in (out, *others):
        own = folder is out
        names = [MANIFEST_NAME, *_shard_names(folder, SHARD_MANIFEST)]
        seen_any = False
        for name in names:
            if own:
                check_own_file(out, name)  # a link there: refused, nothing changed
                usable = (out / name).is_file()
            else:
                usable = contained_file(folder, name) is not None
                if not usable and os.path.lexists(folder / name):
                    result.warnings.append(f"{folder / name}: not a regular file; not followed")
            if usable:
                found.append(_Source(folder, name, len(found), own))
                seen_any = True
        if not own and not seen_any:
            raise UsageError(
                f"no {MANIFEST_NAME} or shard manifest in {folder}; nothing was merged"
            )
    return found


def _read(source: _Source, result: MergeResult) -> Iterator[_Seen]:
    """The source's well-formed records in log order; torn lines skipped, damaged ones warned."""
    fd = os.open(source.folder / source.name, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        for row, raw in enumerate(fh, start=1):
            try:
                data: Any = json.loads(raw)
            except ValueError:
                continue  # a torn line left by a crash
            if not isinstance(data, dict):
                continue
            try:
                record = JobRecord.model_validate(data)
            except ValidationError:
                result.warnings.append(f"{source}:{row}: a damaged record; skipped")
                result.kept.append(str(source))  # an own shard manifest is then kept
                continue
            yield _Seen(record, raw.rstrip(b"\r\n"), source)


def _conflicts(jobs: dict[str, _Job]) -> list[str]:
    lines = []
    for key, job in jobs.items():
        oks = sorted(job.oks.values(), key=lambda s: s.source.index)
        first = oks[0] if oks else None
        other = next((s for s in oks if s.record.fingerprint != oks[0].record.fingerprint), None)
        if first is not None and other is not None:
            lines.append(
                f"job {key!r} has two different ok results: fingerprint "
                f"{str(first.record.fingerprint)[:12]} in {first.source} and "
                f"{str(other.record.fingerprint)[:12]} in {other.source}"
            )
    return lines


def _demote(seen: _Seen, why: str) -> _Seen:
    """An ok record whose images failed, as a failed one: a re-run redoes the job."""
    error = ErrorRecord(kind="merge", message=f"not merged as ok: {why}")
    update = {"status": "failed", "files": [], "kept": 0, "error": error}
    record = seen.record.model_copy(update=update)
    return _Seen(record, record.model_dump_json().encode(), seen.source)


def _choose(out: Path, key: str, job: _Job, result: MergeResult) -> _Seen:
    """The record a job keeps: its newest ok whose images verify, else its newest record."""
    oks = sorted(job.oks.values(), key=lambda s: s.order, reverse=True)
    if oks:
        winner = oks[0].record.fingerprint
        same = [s for s in oks if s.record.fingerprint == winner]
        if len(same) > 1:  # the one already in OUT first; stable: newest first otherwise
            same.sort(key=lambda s: not intact(out, s.record.files))
        # With --prefer newest, an older ok result (another fingerprint) whose images
        # verify beats a failed record: what was paid for is kept.
        rest = [s for s in oks if s.record.fingerprint != winner]
        failed: list[tuple[_Seen, str]] = []
        for seen in [*same, *rest]:
            folder = None if seen.source.own else seen.source.folder
            brought = bring_files(out, folder, seen.record.files)
            why = brought.problem
            if why is None:
                result.copied += brought.copied
                result.present += brought.present
                if folder is not None:
                    for problem in bring_partials(out, folder, seen.record.partials):
                        result.warnings.append(f"{seen.source}: {problem}")
                return seen
            failed.append((seen, why))
            result.rejected.append(f"{seen.source}: job {key!r}: {why}; not merged as ok")
        others = [s for s in job.latest.values() if s.record.status != "ok"]
        if others:
            return _with_part(out, key, max(others, key=lambda s: s.order), result)
        return _demote(*failed[0])
    return _with_part(out, key, max(job.latest.values(), key=lambda s: s.order), result)


def _with_part(out: Path, key: str, seen: _Seen, result: MergeResult) -> _Seen:
    """An unfinished job's record, with the images it saved brought into OUT, each
    verified on its own, so that a re-run makes only the rest; one that fails is
    dropped from the record, with a warning."""
    files = seen.record.files
    if not files or seen.record.status == "ok":
        return seen
    folder = None if seen.source.own else seen.source.folder
    good = []
    for f in files:
        brought = bring_files(out, folder, [f])
        if brought.problem is None:
            result.copied += brought.copied
            result.present += brought.present
            good.append(f)
        else:
            result.warnings.append(
                f"{seen.source}: job {key!r}: a saved image was not merged: {brought.problem}"
            )
    if len(good) == len(files):
        return seen
    kept = min(seen.record.kept, len(good))
    record = seen.record.model_copy(update={"files": good, "kept": kept})
    return _Seen(record, record.model_dump_json().encode(), seen.source)


def _write_manifest(out: Path, chosen: list[_Seen]) -> bool:
    """Write the merged manifest atomically, unless it has exactly these lines already."""
    text = b"".join(s.raw + b"\n" for s in chosen)
    old = contained_file(out, MANIFEST_NAME)
    if old is not None and sha256_of(old, len(text)) == hashlib.sha256(text).hexdigest():
        return False
    with AtomicFile(out, MANIFEST_NAME) as tmp:
        tmp.write(text)
        tmp.commit()
    return True


def merge_outputs(out: Path, others: Sequence[Path], *, prefer_newest: bool = False) -> MergeResult:
    """Merge OUT's shard manifests and ``others`` into OUT; see the module's docstring.

    Raises :class:`UsageError` for a bad folder or nothing to merge,
    :class:`MergeConflictError` for two different ok results of one job (unless
    ``prefer_newest``), and :class:`~pmock_batch.errors.LockedError` while OUT
    or one of its shards is locked; then nothing has changed.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT is a file, not a directory: {out}")
    for other in others:
        if not other.is_dir():
            raise UsageError(f"not a directory: {other}")
        if out.exists() and other.resolve() == out.resolve():
            raise UsageError(f"{other} is OUT itself; give the other output folders")
    if not out.is_dir() and not others:
        raise UsageError(f"no output directory {out}: nothing to merge")
    result = MergeResult()
    with contextlib.ExitStack() as locks:
        locks.enter_context(run_lock(out))
        for name in _shard_locks(out):
            locks.enter_context(run_lock(out, name=name))
        for other in others:  # only looked at: another folder may be read-only
            _check_idle(other)
        remove_stray_temps(out)
        check_own_file(out, REPORT_NAME)
        sources = _sources(out, others, result)
        if not sources:
            raise UsageError(f"no {MANIFEST_NAME} or shard manifest in {out}: nothing to merge")
        result.sources = [str(s) for s in sources]
        jobs: dict[str, _Job] = {}
        for source in sources:
            for seen in _read(source, result):
                job = jobs.setdefault(_key(seen.record), _Job())
                job.latest[source.index] = seen
                if seen.record.status == "ok":
                    job.oks[source.index] = seen
        conflicts = _conflicts(jobs)
        if conflicts and not prefer_newest:
            more = len(conflicts) - _SHOWN_CONFLICTS
            tail = f" (and {more} more job(s))" if more > 0 else ""
            raise MergeConflictError(  # ids and paths from other manifests: escaped
                printable("; ".join(conflicts[:_SHOWN_CONFLICTS])) + f"{tail}. Nothing was merged; "
                "'--prefer newest' keeps the newest ok result of each job"
            )
        chosen = [(_choose(out, key, job, result), key) for key, job in jobs.items()]
        chosen.sort(key=lambda pair: (pair[0].record.line, pair[1]))
        result.jobs = len(chosen)
        result.ok = sum(s.record.status == "ok" for s, _ in chosen)
        result.changed = _write_manifest(out, [s for s, _ in chosen])
        for source in sources:  # only now: the new manifest holds all they held
            own = source.own and source.name != MANIFEST_NAME and str(source) not in result.kept
            if own and remove_file(out, source.name):
                result.removed.append(source.name)
                suffix = source.name.removeprefix("manifest.").removesuffix(".jsonl")
                with contextlib.suppress(OSError, OutputPathError):  # the shard's own report
                    remove_file(out, f"report.{suffix}.html")
        if result.changed or result.removed or not (out / REPORT_NAME).is_file():
            try:
                result.report = write_report(out)
            except (OSError, PmockBatchError) as exc:
                result.warnings.append(f"could not write the report: {exc}")
    return result


_EPILOG = "Exit codes: 0 merged, 1 merged but an ok record's images failed verification, "
_EPILOG += (
    "2 usage error or conflict, 4 OUT or one of its shards locked (2 and 4: nothing changed)."
)


@rclick.command("merge", epilog=_EPILOG)
@rclick.argument("out", type=FILE, metavar="OUT", help="the output directory to merge into")
@rclick.argument("others", type=FILE, nargs=-1, metavar="[OTHER_OUT]...", help="other outputs")
@rclick.option(
    "--prefer",
    type=click.Choice(["newest"]),
    default=None,
    help="on two different ok results of one job, keep the newest (default: refuse)",
)
def merge(out: Path, others: tuple[Path, ...], prefer: str | None) -> int:
    """Fold OUT's shard manifests and other output folders into OUT/manifest.jsonl."""
    result = merge_outputs(out, others, prefer_newest=prefer == "newest")
    for line in result.warnings + result.rejected:  # paths from other manifests: escaped
        click.echo(f"warning: {printable(line)}", err=True)
    state = "merged" if result.changed else "already merged: nothing changed"
    click.echo(
        f"{state}: {result.jobs} job(s), {result.ok} ok, from {len(result.sources)} "
        f"manifest(s); {result.copied} image(s) copied, {result.present} already in {out}"
        + (f"; removed {printable(', '.join(result.removed))}" if result.removed else ""),
        err=True,
    )
    return 1 if result.rejected else 0
