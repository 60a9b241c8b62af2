"""Shards: ``--shard K/N`` runs only the jobs whose stable hash falls in share K.

A job's key is its id, or its request fingerprint when the line has no id
(line numbers are never used, so adding or removing lines moves no other
job). The key's SHA-256, first 8 bytes as a big-endian integer ``h``, is a
point ``u = h / 2**64`` in [0, 1); the job belongs to share ``floor(u * N)``.
The shares get about N-th of the jobs, and so of the images, by expectation.
An invalid line (``--skip-invalid``) is recorded by share 0 only.

A shard writes ``OUT/manifest.shard-K-of-N.jsonl`` and
``OUT/report.shard-K-of-N.html``, and holds ``OUT/.lock.shard-K-of-N``
(exclusive) and ``OUT/.lock`` (shared): N shards share one OUT, and an
unsharded run (which holds ``OUT/.lock`` exclusive) never runs beside them.
A shard leaves stray temporary files alone: another shard may be writing
them; the next unsharded run removes a crashed shard's. Resume reads every
manifest in OUT (:func:`manifest_paths`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .capabilities import Capabilities
from .config import MANIFEST_NAME
from .errors import LockedError, UsageError
from .jobs import Defaults, InvalidLine, Job, ScanResult, iter_jobs
from .lock import LOCK_NAME, held, run_lock

__all__ = [
    "INDEX_ENV",
    "Shard",
    "job_key",
    "manifest_paths",
    "out_lock",
    "parse_shard",
    "shard_from_flags",
    "shard_total",
    "share_of",
]

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes for each pod of an Indexed Job
_SHARD_MANIFEST = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.jsonl")
_SHARD_LOCK = re.compile(r"\.lock\.shard-(\d+)-of-(\d+)")


@dataclass(frozen=True, slots=True)
class Shard:
    """Share ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    @property
    def manifest_name(self) -> str:
        return f"manifest.{self.suffix}.jsonl"

    @property
    def report_name(self) -> str:
        return f"report.{self.suffix}.html"

    @property
    def lock_name(self) -> str:
        return f"{LOCK_NAME}.{self.suffix}"

    def owns(self, item: Job | InvalidLine) -> bool:
        if isinstance(item, InvalidLine):
            return self.index == 0
        return share_of(job_key(item), self.count) == self.index

    def select(self, items: Iterable[Job | InvalidLine]) -> Iterator[Job | InvalidLine]:
        """This share's jobs, streamed."""
        return (item for item in items if self.owns(item))


def job_key(job: Job) -> str:
    """What a job's share is taken over: its id, or its fingerprint without one."""
    return job.id if job.named else f"fingerprint:{job.fingerprint}"


def share_of(key: str, count: int) -> int:
    """The share of ``key`` among ``count``: floor(u * count), u from SHA-256 in [0, 1)."""
    point = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return (point * count) >> 64


def parse_shard(value: str, count: int | None, environ: Mapping[str, str]) -> Shard:
    """``K/N``, or ``auto`` with ``count`` and ``$JOB_COMPLETION_INDEX``; UsageError if bad."""
    if value.strip().lower() == "auto":
        if count is None:
            raise UsageError("--shard auto needs --shard-count N (the number of shards)")
        raw = environ.get(INDEX_ENV)
        if raw is None or not raw.strip().isdigit():
            got = "is not set" if raw is None else f"is {raw!r}, not a whole number"
            raise UsageError(f"--shard auto reads ${INDEX_ENV}, which {got}")
        index = int(raw)
        if index >= count:
            raise UsageError(
                f"--shard auto: ${INDEX_ENV} is {index}, not below --shard-count {count}"
            )
        return Shard(index, count)
    if count is not None:
        raise UsageError("--shard-count goes with --shard auto only; K/N gives N already")
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if match is None:
        raise UsageError(f"--shard must be K/N (e.g. 0/4) or auto, not {value!r}")
    index, total = int(match[1]), int(match[2])
    if total < 1 or index >= total:
        raise UsageError(f"--shard {value}: K must be 0 to N-1 and N at least 1")
    return Shard(index, total)


def shard_from_flags(o: Mapping[str, Any]) -> Shard | None:
    """The run command's ``--shard``/``--shard-count``, checked against the flags they forbid."""
    if o["shard"] is None:
        if o["shard_count"] is not None:
            raise UsageError("--shard-count goes with --shard auto")
        return None
    shard = parse_shard(o["shard"], o["shard_count"], os.environ)
    if o["prune"]:
        raise UsageError("--prune cannot be used with --shard: prune from an unsharded run")
    if o["batch_api"]:
        raise UsageError("--batch-api cannot be used with --shard: OUT/batches.jsonl is shared")
    return shard


def shard_total(
    shard: Shard | None,
    total: int,
    path: Path,
    scanned: ScanResult,
    defaults: Defaults,
    caps: Capabilities,
) -> int:
    """The jobs the progress counts to: ``total``, or a shard's share of them.

    A shard reads the job file once more for it (the lines are checked again,
    an edit's files are not hashed again).
    """
    if shard is None:
        return total
    return sum(1 for _ in shard.select(iter_jobs(path, scanned, defaults=defaults, caps=caps)))


@contextmanager
def out_lock(out_dir: Path, shard: Shard | None) -> Iterator[None]:
    """An unsharded run's ``OUT/.lock`` (exclusive), or a shard's two locks."""
    with ExitStack() as stack:
        if shard is None:
            stack.enter_context(run_lock(out_dir))
        else:
            stack.enter_context(run_lock(out_dir, shared=True))
            stack.enter_context(run_lock(out_dir, shard.lock_name))
            # Its own lock first, then a look at the others: of two shards with different
            # N started at once, at least one sees the other (their shares overlap).
            others = [
                path.name
                for path in out_dir.glob(f"{LOCK_NAME}.shard-*-of-*")
                if (m := _SHARD_LOCK.fullmatch(path.name)) and int(m[2]) != shard.count
            ]
            running = sorted(name for name in others if held(out_dir, name))
            if running:
                raise LockedError(
                    f"shards of another count are running on {out_dir} (they hold "
                    f"{', '.join(running)}); run one count at a time. Nothing was done"
                )
        yield


def manifest_paths(out_dir: Path) -> list[Path]:
    """Every manifest in OUT: ``manifest.jsonl``, then each shard's, oldest first."""
    shards = [
        path
        for path in out_dir.glob("manifest.shard-*-of-*.jsonl")
        if _SHARD_MANIFEST.fullmatch(path.name) and path.is_file() and not path.is_symlink()
    ]
    shards.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
    return [out_dir / MANIFEST_NAME, *shards]
