"""Output names: which ids are safe file names, and which lines would collide on disk.

A job's id is its file name under OUT (``icons/home`` -> ``OUT/icons/home.png``),
so it is checked as a path that must work on every system an OUT is copied to:
relative, no ``..``, safe characters, not one of the names pmock-batch writes
itself, no Windows device name, no part ending in a dot. :func:`collisions`
then finds lines that would write the same file, or a file another line needs
as a folder, before anything is sent.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["MAX_ID_CHARS", "Named", "Names", "check_id", "collisions", "slug"]

MAX_ID_CHARS = 200
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
# Names the tool itself writes at the top of OUT: an id may not claim them.
RESERVED_NAMES = frozenset({"manifest.jsonl", "report.html", ".lock", ".thumbs", ".rejected"})
# Windows refuses these as file names, with or without an extension; OUT is copied between
# machines and CI runs on Windows runners too.
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
)
# Every extension an image of a job may get (the server may send another format than asked).
_ALL_EXTENSIONS = ("png", "jpg", "webp")
_SLUG_CHARS = 40


class Named(Protocol):
    """What :func:`collisions` needs of a job."""

    @property
    def line(self) -> int: ...

    @property
    def id(self) -> str: ...

    @property
    def named(self) -> bool: ...

    @property
    def stems(self) -> list[str]: ...


def check_id(value: Any) -> str:
    """Validate a job id: relative, safe path segments, at most 200 characters."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {json.dumps(value)}")
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"is {len(value)} characters long; at most {MAX_ID_CHARS} are allowed")
    if value.startswith("/") or value.startswith("\\") or re.match(r"[A-Za-z]:", value):
        raise ValueError(f"{value!r} is an absolute path; ids are relative to the output directory")
    for index, segment in enumerate(value.split("/")):
        if segment == "..":
            raise ValueError(f"{value!r} contains '..'; output must stay in the output directory")
        if not _SEGMENT.match(segment):
            raise ValueError(
                f"{value!r} is not a safe name: each '/'-separated part must match "
                "[A-Za-z0-9_][A-Za-z0-9._-]*"
            )
        if segment.endswith("."):
            raise ValueError(f"{value!r}: a part may not end in a dot (Windows drops it)")
        if segment.split(".")[0].upper() in WINDOWS_RESERVED:
            raise ValueError(
                f"{value!r}: {segment!r} is a reserved device name on Windows "
                "(CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
            )
        if index == 0 and segment.casefold() in RESERVED_NAMES:
            raise ValueError(f"{value!r}: {segment!r} is a name pmock-batch writes in OUT")
    return value


def slug(prompt: str, digest: str) -> str:
    """A short, stable file name for an id-less job: prompt words plus 8 hex of its fingerprint."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    words = words[:_SLUG_CHARS].rstrip("-") or "image"
    return f"{words}-{digest[:8]}"


@dataclass(slots=True)
class Names:
    """The output names of the lines read so far, casefolded (macOS and Windows ignore case)."""

    stems: dict[str, tuple[int, str]] = field(default_factory=dict)  # stem -> (line, stem)
    folders: dict[str, tuple[int, str]] = field(default_factory=dict)  # folder -> (line, id)
    ids: dict[str, int] = field(default_factory=dict)  # id -> its line: a job's manifest key


def _folders(job_id: str) -> list[str]:
    """The folders an id's file sits in: ``a/b/c`` -> ``a``, ``a/b``."""
    parts = job_id.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def collisions(job: Named, seen: Names) -> list[tuple[str, str]]:
    """Report output names this job shares with an earlier line; register its own."""
    problems = _same_id(job, seen) or _same_names(job, seen.stems) or _file_and_folder(job, seen)
    if not problems:
        seen.ids.setdefault(job.id, job.line)
        for stem in job.stems:
            seen.stems[stem.casefold()] = (job.line, stem)
        for folder in _folders(job.id):
            seen.folders.setdefault(folder.casefold(), (job.line, job.id))
    return problems


def _same_id(job: Named, seen: Names) -> list[tuple[str, str]]:
    """An id an earlier line has: the two would share one manifest record."""
    other = seen.ids.get(job.id)  # exact: the manifest's key (case: _same_names)
    if other is None or not job.named:  # an id-less job's slug: _same_names tells
        return []
    return [("id", f"duplicate id {job.id!r} (first used on line {other})")]


def _file_and_folder(job: Named, seen: Names) -> list[tuple[str, str]]:
    """A file of one line that would have to be a folder of another (``x`` and ``x.png/y``)."""
    for stem in job.stems:
        for ext in _ALL_EXTENSIONS:
            other = seen.folders.get(f"{stem}.{ext}".casefold())
            if other is not None:
                return [
                    (
                        "id",
                        f"its file {stem}.{ext} would be the folder that line {other[0]}'s id "
                        f"{other[1]!r} needs",
                    )
                ]
    for folder in _folders(job.id):
        base, dot, ext = folder.rpartition(".")
        other = seen.stems.get(base.casefold()) if dot and ext.lower() in _ALL_EXTENSIONS else None
        if other is not None:
            return [
                (
                    "id",
                    f"its folder {folder!r} would be the file that line {other[0]} "
                    f"({other[1]!r}) writes",
                )
            ]
    return []


def _same_names(job: Named, seen: dict[str, tuple[int, str]]) -> list[tuple[str, str]]:
    """Output names this job shares with an earlier line."""
    for stem in job.stems:
        key = stem.casefold()
        if key not in seen:
            continue
        other_line, other_stem = seen[key]
        if other_stem == stem and not job.named:
            return [
                (
                    "prompt",
                    f"same request as line {other_line}, so it would overwrite the same "
                    'file; to get variants of one prompt set n (e.g. "n": 2), '
                    "or give each line its own id",
                )
            ]
        if other_stem == stem and stem == job.id:
            return [("id", f"duplicate id {stem!r} (first used on line {other_line})")]
        if other_stem == stem:
            return [("id", f"output name {stem!r} (from n) is already used on line {other_line}")]
        return [
            (
                "id",
                f"output name {stem!r} collides with {other_stem!r} on line {other_line} "
                "on case-insensitive file systems",
            )
        ]
    return []
