"""The job reader: JSONL lines -> validated :class:`Job` objects, with line numbers.

A job file is read twice. :func:`scan` validates every line first and keeps
only compact facts (the output names seen, the invalid lines), so a bad file
is rejected before anything is sent. :func:`iter_jobs` then streams the jobs
for the worker pool, so a 100,000-line file never sits in memory at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .capabilities import Capabilities, shipped_capabilities
from .errors import Problem
from .inputs import EditInputs, InputFiles
from .models import (
    COMPRESSIBLE_FORMATS,
    ImageRequest,
    describe_errors,
    fingerprint,
    normalize_fields,
)
from .names import MAX_ID_CHARS, Names, check_id, collisions, slug

__all__ = ["MAX_ID_CHARS", "Defaults", "InvalidLine", "Job", "ScanResult", "iter_jobs", "scan"]

MAX_REPORTED_PROBLEMS = 20
MAX_DEPTH = 32  # levels of nesting a line may have (an extra_body is the only deep field)
_BATCH_KEYS = ("custom_id", "method", "url", "body")


@dataclass(frozen=True, slots=True)
class Defaults:
    """Request fields from CLI flags, used where a line leaves the field out."""

    model: str | None = None
    size: str | None = None
    quality: str | None = None
    output_format: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_compression: int | None = None
    response_format: str | None = None
    stream: bool | None = None  # --stream: True; None leaves each line's own

    def fill(self, values: dict[str, Any]) -> dict[str, Any]:
        """Return ``values`` with every default the line did not set filled in.

        ``output_compression`` is filled only for jpeg and webp jobs, the only
        formats it applies to, so one flag can serve a mixed file.
        """
        merged = dict(values)
        for f in fields(self):
            default = getattr(self, f.name)
            if default is None or f.name in merged:
                continue
            if f.name == "output_compression":
                fmt = merged.get("output_format", "png")
                if fmt not in COMPRESSIBLE_FORMATS:
                    continue
            merged[f.name] = default
        return merged


@dataclass(frozen=True, slots=True)
class Job:
    """One valid line of the job file."""

    line: int
    id: str  # the output name stem: the line's id, or a slug of the prompt
    request: ImageRequest
    fingerprint: str
    named: bool = True  # False when the id is a slug of the prompt
    unsent: tuple[str, ...] = ()  # fields set but not sent: the model's entry says so
    notes: tuple[tuple[str, str], ...] = ()  # (key, warning) from the capability check
    inputs: EditInputs | None = None  # an edit's input files; None for a generation

    def wire_body(self, field_case: str = "snake") -> dict[str, Any]:
        """The body of each of this job's requests, as sent (an edit's form fields)."""
        return self.request.wire_body(field_case, unsent=self.unsent)

    def record_request(self, field_case: str = "snake") -> dict[str, Any]:
        """The request as a record shows it: the body, plus an edit's file names."""
        body = self.wire_body(field_case)
        if self.inputs is not None:
            body.update(self.inputs.described())
        return body

    @property
    def stems(self) -> list[str]:
        """The output name stems: ``id`` for one image, ``id-1`` ... ``id-n`` for n."""
        n = self.request.count
        return [self.id] if n == 1 else [f"{self.id}-{i}" for i in range(1, n + 1)]


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """A line that failed validation, kept for ``--skip-invalid``."""

    line: int
    id: str | None
    message: str


@dataclass(slots=True)
class ScanResult:
    """What :func:`scan` learnt about a job file."""

    file: str
    jobs: int = 0
    images: int = 0
    edits: int = 0  # jobs with input images
    files: InputFiles | None = None  # edits' input files, checked and hashed once per run
    problems: list[Problem] = field(default_factory=list)  # the first few, for display
    problem_count: int = 0  # all of them
    invalid: dict[int, InvalidLine] = field(default_factory=dict)  # by line number
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.invalid


def _split_line(obj: Any) -> tuple[Any, dict[str, Any], str, list[tuple[str, str]]]:
    """Split a decoded line into (id, request fields, field-name prefix, problems)."""
    if isinstance(obj, str):
        return None, {"prompt": obj}, "", []
    if not isinstance(obj, dict):
        kind = "an array" if isinstance(obj, list) else f"{json.dumps(obj)}"
        return None, {}, "", [("", f"expected a JSON object or string, got {kind}")]
    if "custom_id" in obj or "body" in obj:
        problems: list[tuple[str, str]] = []
        for key in obj:
            if key not in _BATCH_KEYS:
                problems.append((repr(key), "unknown field in a Batch API line"))
        if obj.get("method", "POST") != "POST":
            problems.append(("method", f"{obj.get('method')!r} is not POST"))
        url = obj.get("url", "/v1/images/generations")
        if not isinstance(url, str) or not url.rstrip("/").endswith("/images/generations"):
            problems.append(("url", f"{url!r} is not /v1/images/generations"))
        body = obj.get("body")
        if not isinstance(body, dict):
            problems.append(("body", "required, as a JSON object"))
            body = {}
        return obj.get("custom_id"), dict(body), "body.", problems
    values = dict(obj)
    return values.pop("id", None), values, "", []


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: a key given twice is an error, not "the last one wins"."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _unusable(obj: Any) -> tuple[str, str] | None:
    """``(field, problem)`` for a value no request can carry, or None. Iterative.

    A string with a lone surrogate is not Unicode (it cannot be encoded, hashed or
    sent); a value nested deeper than :data:`MAX_DEPTH` is no request field
    (``json.loads`` takes far deeper ones, but serialising them later fails).
    """
    stack: list[tuple[str, Any, int]] = [("", obj, 0)]
    while stack:
        where, item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return where, f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                shown = where.encode("utf-8", "backslashreplace").decode("utf-8")
                return shown, "contains a lone surrogate (\\ud800-\\udfff): not valid Unicode"
        elif isinstance(item, dict):
            for key, value in item.items():
                stack.append((where or key, key, depth + 1))
                stack.append((where or key, value, depth + 1))
        elif isinstance(item, list):
            stack.extend((where, value, depth + 1) for value in item)
    return None


@dataclass(frozen=True, slots=True)
class _Rejected:
    problems: list[tuple[str, str]]  # (field, problem)
    id: str | None = None  # the line's id, when it had a valid one


def parse_line(
    text: str,
    *,
    defaults: Defaults,
    caps: Capabilities | None = None,
    files: InputFiles | None = None,
) -> Job | _Rejected | None:
    """Parse one line. Returns a Job, its problems, or None for a blank or comment line.

    A line with ``image`` is an edit: its files are checked by ``files``
    (relative to the current folder when it is None).
    """
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        obj = json.loads(stripped, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        return _Rejected([("", f"not valid JSON: {exc.msg} (column {exc.colno})")])
    except _DuplicateKeyError as exc:
        return _Rejected([(repr(exc.key), "given twice on the line; use it once")])
    except RecursionError:
        return _Rejected([("", "nested too deeply to be a job")])
    unusable = _unusable(obj)
    if unusable is not None:
        return _Rejected([unusable])
    raw_id, raw_fields, prefix, problems = _split_line(obj)
    if problems and not raw_fields:
        return _Rejected(problems)
    edit = not prefix and "image" in raw_fields  # even "image": null, which then fails
    image, mask = (
        (raw_fields.pop("image", None), raw_fields.pop("mask", None))
        if not prefix
        else (None, None)
    )
    if mask is not None and not edit:
        problems.append(("mask", "a mask needs an image to edit"))
    values, field_problems = normalize_fields(raw_fields)
    problems += [
        (prefix + name if not name.startswith("'") else name, msg) for name, msg in field_problems
    ]
    job_id: str | None = None
    if raw_id is not None:
        try:
            job_id = check_id(raw_id)
        except ValueError as exc:
            problems.append(("custom_id" if prefix else "id", str(exc)))
    try:
        request = ImageRequest.model_validate(defaults.fill(values))
    except ValidationError as exc:
        problems += [(prefix + name, msg) for name, msg in describe_errors(exc)]
        return _Rejected(problems, job_id)
    checked = (caps or shipped_capabilities()).check(request, edit=edit)
    problems += [(prefix + name, msg) for name, msg in checked.problems]
    inputs: EditInputs | None = None
    if edit and not problems:
        found = (files or InputFiles(Path.cwd())).edit_inputs(image, mask)
        if isinstance(found, list):
            return _Rejected(found, job_id)
        inputs = found
    if problems:
        return _Rejected(problems, job_id)
    digest = fingerprint(request, inputs.canonical() if inputs is not None else None)
    return Job(
        line=0,
        id=job_id or slug(request.prompt, digest),
        request=request,
        fingerprint=digest,
        named=job_id is not None,
        unsent=checked.unsent,
        notes=tuple(checked.notes),
        inputs=inputs,
    )


def _read_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """Yield ``(line number, text)``; text is None for a line that is not UTF-8."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield number, None


def _parse(
    number: int,
    text: str | None,
    defaults: Defaults,
    caps: Capabilities | None,
    files: InputFiles | None,
) -> Job | _Rejected | None:
    if text is None:
        return _Rejected([("", "not valid UTF-8")])
    result = parse_line(text, defaults=defaults, caps=caps, files=files)
    if isinstance(result, Job):
        return replace(result, line=number)
    return result


def scan(
    path: Path,
    *,
    defaults: Defaults | None = None,
    caps: Capabilities | None = None,
    inputs: Path | None = None,
) -> ScanResult:
    """Validate every line of ``path``; collect problems instead of raising.

    Each kind of capability warning (a field not sent, an unknown model) is
    reported once, for the first line it applies to. An edit's files are
    relative to the job file's folder; ``inputs`` (``--inputs DIR``) is a
    second folder they may be in. The result keeps the files' digests, so
    :func:`iter_jobs` does not hash them again.
    """
    defaults = defaults or Defaults()
    roots = (inputs,) if inputs is not None else ()
    result = ScanResult(file=str(path), files=InputFiles(path.parent, roots=roots))
    seen = Names()
    warned: set[str] = set()
    for number, text in _read_lines(path):
        parsed = _parse(number, text, defaults, caps, result.files)
        if parsed is None:
            continue
        parsed_problems = collisions(parsed, seen) if isinstance(parsed, Job) else parsed.problems
        if parsed_problems:
            job_id = parsed.id
            message = _join(parsed_problems)
            result.invalid[number] = InvalidLine(line=number, id=job_id, message=message)
            result.problem_count += len(parsed_problems)
            for fld, msg in parsed_problems:
                if len(result.problems) < MAX_REPORTED_PROBLEMS:
                    result.problems.append(Problem(str(path), number, fld, msg))
            continue
        assert isinstance(parsed, Job)
        result.jobs += 1
        result.images += parsed.request.count
        result.edits += parsed.inputs is not None
        for key, note in parsed.notes:
            if key not in warned:
                warned.add(key)
                result.warnings.append(f"{path}:{number}: {note}")
    _key_invalid_lines(result, set(seen.ids))
    return result


def _key_invalid_lines(result: ScanResult, taken: set[str]) -> None:
    """An invalid line's record is keyed by its id, unless a valid job (anywhere in the
    file) or an earlier invalid line has that id: then by its line, so that it never
    supersedes that job's record (a typo on one line would make another job pay again)."""
    for number in sorted(result.invalid):
        item = result.invalid[number]
        if item.id is None:
            continue
        if item.id in taken:
            result.invalid[number] = replace(item, id=None)
        else:
            taken.add(item.id)


def _join(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{f}: {m}" if f else m for f, m in problems)


def iter_jobs(
    path: Path,
    scanned: ScanResult,
    *,
    defaults: Defaults | None = None,
    caps: Capabilities | None = None,
) -> Iterator[Job | InvalidLine]:
    """Stream the file again, yielding each valid Job and each invalid line in order.

    ``scanned`` is the result of :func:`scan` on the same file: lines it found
    invalid are yielded as :class:`InvalidLine` without parsing them again.
    """
    defaults = defaults or Defaults()
    files = scanned.files or InputFiles(path.parent)  # one cache for the whole file
    for number, text in _read_lines(path):
        if number in scanned.invalid:
            yield scanned.invalid[number]
            continue
        parsed = _parse(number, text, defaults, caps, files)
        if parsed is None:
            continue
        if isinstance(parsed, Job):
            yield parsed
        else:  # the file changed between the scan and the run
            yield InvalidLine(line=number, id=parsed.id, message=_join(parsed.problems))
