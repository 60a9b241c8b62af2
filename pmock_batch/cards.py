"""One job's card in the report, and the escaping and formatting the page shares.

:func:`card` renders one manifest record as an ``<article class="card">``:
its image(s) (or why there is none), the strip of its saved partial images
(``--save-partials``), prompt, revised prompt, status badge, facts (size,
format, attempts, time, or the Batch API batch) and warnings. Every value is escaped
with :func:`esc`; every link is a relative URL from :func:`relative_url`,
which never points outside the output directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from .models import JobRecord

__all__ = ["STATUS_LABELS", "TIMES", "card", "duration", "esc", "quote_part", "relative_url"]

TIMES = "\N{MULTIPLICATION SIGN}"  # as in 1024 x 1024

STATUS_LABELS = {
    "ok": "ok",
    "failed": "failed",
    "invalid": "invalid",
    "not_run": "not run",
    "pending": "pending",
}


def esc(value: object) -> str:
    """Escape for HTML text and attribute values alike."""
    return escape(str(value), quote=True)


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {plural or word + 's'}"


def relative_url(path: str) -> str | None:
    """``path`` (relative to OUT, forward slashes) as a percent-encoded relative URL.

    Anything that is not a plain relative path (absolute, ``..``, empty) gives
    ``None``: the page never points outside the output directory. Every part
    is quoted with no safe characters, so ``#``, ``?``, ``:`` and ``%`` in a
    name cannot turn into a fragment, a query or a scheme.
    """
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(part in ("", ".", "..") for part in pure.parts):
        return None
    return "/".join(quote_part(part) for part in pure.parts)


def quote_part(part: str) -> str:
    return quote(part, safe="")


def _request_field(request: Mapping[str, Any] | None, snake: str, camel: str) -> Any:
    if not request:
        return None
    return request.get(snake, request.get(camel))


# -- rendering ---------------------------------------------------------------------


def _media(record: JobRecord, thumbs: Mapping[str, str]) -> str:
    if record.status == "ok" and record.files:
        links = []
        for number, file in enumerate(record.files, start=1):
            href = relative_url(file.path)
            if href is None:
                continue
            src = thumbs.get(file.path, href)
            label = record.id or f"line {record.line}"
            alt = label if len(record.files) == 1 else f"{label} ({number} of {len(record.files)})"
            links.append(
                f'<a class="shot" href="{esc(href)}" title="{esc(file.path)}">'
                f'<img loading="lazy" src="{esc(src)}" alt="{esc(alt)}" '
                f'width="{file.width}" height="{file.height}"></a>'
            )
        if links:
            multi = " multi" if len(links) > 1 else ""
            count = f'<span class="count">{TIMES}{len(links)}</span>' if len(links) > 1 else ""
            return f'<div class="media{multi}">{"".join(links)}{count}</div>'
    error = record.error
    if error is None:
        return '<div class="media empty"><p class="message">No image recorded.</p></div>'
    head = " · ".join(esc(p) for p in (error.kind, error.status, error.code) if p is not None)
    param = f'<p class="param">param: {esc(error.param)}</p>' if error.param else ""
    return (
        f'<div class="media failure"><p class="kind">{head}</p>'
        f'<p class="message">{esc(error.message)}</p>{param}</div>'
    )


def _partials(record: JobRecord) -> str:
    """A strip of the job's saved partial images, in index order: previews, small."""
    links = []
    for item in sorted(record.partials, key=lambda p: p.index):
        href = relative_url(item.path)
        if href is None:
            continue
        links.append(
            f'<a href="{esc(href)}" title="{esc(item.path)}">'
            f'<img loading="lazy" src="{esc(href)}" alt="partial {item.index}" height="48"></a>'
        )
    if not links:
        return ""
    return f'<div class="partials" title="partial images">{"".join(links)}</div>'


def _meta(record: JobRecord) -> str:
    sizes = list(dict.fromkeys(f"{f.width}{TIMES}{f.height}" for f in record.files))
    formats = list(dict.fromkeys(f.format.upper() for f in record.files))
    if not sizes and record.request is not None:
        size = str(_request_field(record.request, "size", "size") or "auto")
        sizes = [size.replace("x", TIMES)]
        fmt = _request_field(record.request, "output_format", "outputFormat") or "png"
        formats = [str(fmt).upper()]
    items = [("size", ", ".join(sizes)), ("format", ", ".join(formats))]
    via_batch = getattr(record, "via", None) == "batch"  # set by the Batch API runner
    if via_batch:  # no per-request time: the server ran it within its batch
        items.append(("via", f"Batch API, {getattr(record, 'batch_id', None) or 'batch'}"))
    elif record.status != "invalid":
        items += [
            ("retries", _plural(record.retries, "retry", "retries")),
            ("time", duration(record.elapsed_s)),
        ]
    if record.status != "ok":  # where to look in the job file
        items.append(("line", f"line {record.line}"))
    if record.ambiguous_retries:
        items.append(
            ("ambiguous", _plural(record.ambiguous_retries, "ambiguous retry", "ambiguous retries"))
        )
    return "".join(f'<li data-meta="{key}">{esc(text)}</li>' for key, text in items if text)


def card(record: JobRecord, thumbs: Mapping[str, str]) -> str:
    prompt = _request_field(record.request, "prompt", "prompt")
    prompt_html = (
        f'<p class="prompt">{esc(prompt)}</p>'
        if isinstance(prompt, str)
        else '<p class="prompt none">No prompt: the line was not a valid job.</p>'
    )
    revised = (
        '<details class="revised"><summary>Revised prompt</summary>'
        f"<p>{esc(record.revised_prompt)}</p></details>"
        if record.revised_prompt
        else ""
    )
    warnings = (
        '<ul class="warnings">' + "".join(f"<li>{esc(w)}</li>" for w in record.warnings) + "</ul>"
        if record.warnings
        else ""
    )
    status = record.status
    name = record.id if record.id is not None else f"line {record.line}"
    return (
        f'<article class="card" data-status="{esc(status)}" data-id="{esc(name)}" '
        f'data-line="{record.line}">'
        f"{_media(record, thumbs)}"
        f'<div class="body"><div class="head"><h2 class="id">{esc(name)}</h2>'
        f'<span class="badge {esc(status)}">{esc(STATUS_LABELS.get(status, status))}</span></div>'
        f"{prompt_html}{_partials(record)}{revised}"
        f'<ul class="meta">{_meta(record)}</ul>{warnings}</div></article>'
    )
