"""Resume: which jobs a previous run already finished, so a re-run does only the rest.

A job is done when its latest manifest record is ``ok`` for the same request
fingerprint and every file it recorded is still a regular file inside OUT
with the recorded size (and, with ``verify``, the recorded SHA-256). The index keeps only those
facts per job, never whole records, so it stays small for large batches.

With several manifests (shards: ``manifest.shard-K-of-N.jsonl``), the newest
``ok`` record of a job across them decides: its files are the ones last written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .files import contained_file, open_regular, sha256_of
from .jobs import Job

__all__ = ["DoneIndex"]


@dataclass(frozen=True, slots=True)
class _Done:
    fingerprint: str
    files: tuple[tuple[str, int, str], ...]  # (path relative to OUT, bytes, sha256)
    at: str = ""  # finished_at (ISO 8601 UTC): the newest across manifests decides


def _latest(path: Path) -> Iterator[tuple[str, _Done | None]]:
    """Yield ``(id, done-or-None)`` for every well-formed record, in log order.

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
            done: _Done | None = None
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

    def __init__(self, entries: dict[str, _Done] | None = None) -> None:
        self._entries = entries or {}

    @classmethod
    def load(cls, manifest: Path) -> DoneIndex:
        """Read the manifest log; the latest record of each id decides."""
        return cls.load_all([manifest])

    @classmethod
    def load_all(cls, manifests: Iterable[Path]) -> DoneIndex:
        """Read several logs (``manifest.jsonl`` and the shards'): in each, the latest
        record of an id decides; across them, the newest of those that are ``ok``."""
        entries: dict[str, _Done] = {}
        for manifest in manifests:
            own: dict[str, _Done] = {}
            for job_id, done in _latest(manifest):
                if done is None:
                    own.pop(job_id, None)
                else:
                    own[job_id] = done
            for job_id, done in own.items():
                seen = entries.get(job_id)
                if seen is None or done.at >= seen.at:
                    entries[job_id] = done
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def is_done(self, job: Job, out_dir: Path, *, verify: bool = False) -> bool:
        """True if ``job`` needs no work: same request, files present and intact.

        Without ``verify`` this costs one ``stat`` per file. With ``verify`` it
        also hashes every file, so call it from a worker thread.
        """
        done = self._entries.get(job.id)
        return done is not None and self._intact(done, job, out_dir, verify=verify)

    @staticmethod
    def _intact(done: _Done, job: Job, out_dir: Path, *, verify: bool) -> bool:
        if done.fingerprint != job.fingerprint:
            return False
        if len(done.files) != job.request.count:
            return False
        for relative, size, sha256 in done.files:
            # A record is text anyone may edit: only regular files inside OUT count.
            target = contained_file(out_dir, relative)
            if target is None:
                return False
            try:
                if target.stat().st_size != size:
                    return False
            except OSError:
                return False
            if verify and sha256_of(target, size) != sha256:
                return False
        return True
