"""The visual report: ``OUT/report.html``, built from the manifest alone.

:func:`write_report` reads ``OUT/manifest.jsonl`` (torn lines skipped, the
latest record of each job wins) and writes one self-contained page: its CSS and
script are inline, and a Content-Security-Policy allows nothing else, so it
opens from ``file://`` with no network. Images are shown with
``loading="lazy"`` straight from their files, sized by CSS, so writing the
report costs no image work at all; only ``thumbnails=True`` (for
``pmock-batch report``) decodes images, to make small JPEGs under
``OUT/.thumbs/``.

The page has stable hooks for tests and scripts: each job is an
``<article class="card" data-status=... data-id=...>``, cards filtered out
carry the ``hidden`` attribute, and the fragment ``#ok``, ``#failed`` or
``#all`` picks the filter on load (``?q=text`` pre-fills the search).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from PIL import Image

from .config import MANIFEST_NAME
from .errors import UsageError
from .files import AtomicFile, check_own_file, contained_file
from .manifest import latest_records
from .models import FileRecord, JobRecord
from .tally import Summary, summarize

log = logging.getLogger("pmock_batch")

__all__ = [
    "REPORT_NAME",
    "THUMBS_DIR",
    "THUMB_PX",
    "latest_records",
    "render_report",
    "summarize",
    "write_report",
]

REPORT_NAME = "report.html"
THUMBS_DIR = ".thumbs"
THUMB_PX = 512  # longest side of a thumbnail: sharp on a 2x screen at card size
THUMB_QUALITY = 82

TIMES = "\N{MULTIPLICATION SIGN}"  # as in 1024 x 1024

STATUS_LABELS = {"ok": "ok", "failed": "failed", "invalid": "invalid", "not_run": "not run"}


# -- reading the manifest ------------------------------------------------------


# -- the summary -----------------------------------------------------------------


# -- formatting helpers ------------------------------------------------------------


def _e(value: object) -> str:
    """Escape for HTML text and attribute values alike."""
    return escape(str(value), quote=True)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) or value.is_integer() else f"{value:,.2f}"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def _url(path: str) -> str | None:
    """``path`` (relative to OUT, forward slashes) as a percent-encoded relative URL.

    Anything that is not a plain relative path (absolute, ``..``, empty) gives
    ``None``: the page never points outside the output directory. Every part
    is quoted with no safe characters, so ``#``, ``?``, ``:`` and ``%`` in a
    name cannot turn into a fragment, a query or a scheme.
    """
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(part in ("", ".", "..") for part in pure.parts):
        return None
    return "/".join(_quote(part) for part in pure.parts)


def _quote(part: str) -> str:
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
            href = _url(file.path)
            if href is None:
                continue
            src = thumbs.get(file.path, href)
            label = record.id or f"line {record.line}"
            alt = label if len(record.files) == 1 else f"{label} ({number} of {len(record.files)})"
            links.append(
                f'<a class="shot" href="{_e(href)}" title="{_e(file.path)}">'
                f'<img loading="lazy" src="{_e(src)}" alt="{_e(alt)}" '
                f'width="{file.width}" height="{file.height}"></a>'
            )
        if links:
            multi = " multi" if len(links) > 1 else ""
            count = f'<span class="count">{TIMES}{len(links)}</span>' if len(links) > 1 else ""
            return f'<div class="media{multi}">{"".join(links)}{count}</div>'
    error = record.error
    if error is None:
        return '<div class="media empty"><p class="message">No image recorded.</p></div>'
    head = " · ".join(_e(p) for p in (error.kind, error.status, error.code) if p is not None)
    param = f'<p class="param">param: {_e(error.param)}</p>' if error.param else ""
    return (
        f'<div class="media failure"><p class="kind">{head}</p>'
        f'<p class="message">{_e(error.message)}</p>{param}</div>'
    )


def _meta(record: JobRecord) -> str:
    sizes = list(dict.fromkeys(f"{f.width}{TIMES}{f.height}" for f in record.files))
    formats = list(dict.fromkeys(f.format.upper() for f in record.files))
    if not sizes and record.request is not None:
        size = str(_request_field(record.request, "size", "size") or "auto")
        sizes = [size.replace("x", TIMES)]
        fmt = _request_field(record.request, "output_format", "outputFormat") or "png"
        formats = [str(fmt).upper()]
    items = [("size", ", ".join(sizes)), ("format", ", ".join(formats))]
    if record.status != "invalid":
        items += [
            ("attempts", _plural(record.attempts, "attempt")),
            ("time", _duration(record.elapsed_s)),
        ]
    if record.status != "ok":  # where to look in the job file
        items.append(("line", f"line {record.line}"))
    if record.ambiguous_retries:
        items.append(("ambiguous", _plural(record.ambiguous_retries, "ambiguous retry")))
    return "".join(f'<li data-meta="{key}">{_e(text)}</li>' for key, text in items if text)


def _card(record: JobRecord, thumbs: Mapping[str, str]) -> str:
    prompt = _request_field(record.request, "prompt", "prompt")
    prompt_html = (
        f'<p class="prompt">{_e(prompt)}</p>'
        if isinstance(prompt, str)
        else '<p class="prompt none">No prompt: the line was not a valid job.</p>'
    )
    revised = (
        '<details class="revised"><summary>Revised prompt</summary>'
        f"<p>{_e(record.revised_prompt)}</p></details>"
        if record.revised_prompt
        else ""
    )
    warnings = (
        '<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in record.warnings) + "</ul>"
        if record.warnings
        else ""
    )
    status = record.status
    name = record.id if record.id is not None else f"line {record.line}"
    return (
        f'<article class="card" data-status="{_e(status)}" data-id="{_e(name)}" '
        f'data-line="{record.line}">'
        f"{_media(record, thumbs)}"
        f'<div class="body"><div class="head"><h2 class="id">{_e(name)}</h2>'
        f'<span class="badge {_e(status)}">{_e(STATUS_LABELS.get(status, status))}</span></div>'
        f"{prompt_html}{revised}"
        f'<ul class="meta">{_meta(record)}</ul>{warnings}</div></article>'
    )


def _stat(key: str, value: str, label: str, *, title: str = "") -> str:
    tip = f' title="{_e(title)}"' if title else ""
    return (
        f'<div class="stat" data-stat="{_e(key)}"{tip}>'
        f'<span class="value">{_e(value)}</span><span class="label">{_e(label)}</span></div>'
    )


def _header(summary: Summary, name: str, generated_at: datetime) -> str:
    stamp = generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    stats = [
        _stat("jobs", f"{summary.jobs:,}", "jobs"),
        _stat("ok", f"{summary.ok:,}", "ok"),
        _stat("failed", f"{summary.failed:,}", "failed"),
        _stat("invalid", f"{summary.invalid:,}", "invalid"),
        _stat("not_run", f"{summary.not_run:,}", "not run"),
        _stat("images", f"{summary.images:,}", "images"),
        _stat("attempts", f"{summary.attempts:,}", "attempts"),
        _stat(
            "wall",
            _duration(summary.wall_seconds) if summary.wall_seconds is not None else "—",
            "wall time",
            title="from the first job's start to the last job's finish",
        ),
        _stat("job_time", _duration(summary.job_seconds), "job time", title="jobs' times added"),
    ]
    if summary.ambiguous_retries:
        stats.append(_stat("ambiguous", f"{summary.ambiguous_retries:,}", "ambiguous retries"))
    usage = " · ".join(f"{_e(k)} {_number(v)}" for k, v in summary.usage.items())
    kinds = ", ".join(f"{_e(k)} {n:,}" for k, n in sorted(summary.failed_by_kind.items()))
    notes = []
    if usage:
        notes.append(f'<p data-note="usage"><b>Usage</b> {usage}</p>')
    if kinds:
        notes.append(f'<p data-note="kinds"><b>Failed, by kind</b> {kinds}</p>')
    return (
        '<header class="top"><div class="title">'
        f"<h1>pmock-batch report</h1><p>{_e(name)} · generated "
        f'<time datetime="{_e(generated_at.astimezone(UTC).isoformat())}">{_e(stamp)}</time>'
        f'</p></div><div class="stats">{"".join(stats)}</div>'
        f'<div class="notes">{"".join(notes)}</div></header>'
    )


def _toolbar(summary: Summary) -> str:
    buttons = (
        ("all", "All", summary.jobs),
        ("ok", "OK", summary.ok),
        ("failed", "Failed", summary.not_ok),
    )
    html = "".join(
        f'<button type="button" data-filter="{key}" aria-pressed="{str(key == "all").lower()}">'
        f'{label} <span class="n">{count:,}</span></button>'
        for key, label, count in buttons
    )
    return (
        '<nav class="toolbar" aria-label="Filter"><div class="filters" role="group">'
        f"{html}</div>"
        '<input id="search" type="search" placeholder="Search prompts and ids" '
        'aria-label="Search prompts and ids" autocomplete="off">'
        f'<span id="shown" aria-live="polite">{summary.jobs:,} of {summary.jobs:,}</span></nav>'
    )


_CSS = """\
:root{color-scheme:light dark;--bg:#f4f5f7;--card:#fff;--text:#1a1d23;--muted:#5d6673;
--line:#e2e5ea;--accent:#2563eb;--chip:#eef0f3;--check-a:#eceef1;--check-b:#fafbfc;
--ok:#15803d;--ok-bg:#dcfce7;--bad:#b91c1c;--bad-bg:#fee2e2;--warn:#a16207;--warn-bg:#fef3c7;
--idle:#475569;--idle-bg:#e2e8f0;--shadow:0 1px 2px rgb(15 23 42/.06),0 4px 14px rgb(15 23 42/.06)}
@media (prefers-color-scheme:dark){:root{--bg:#0e1014;--card:#171a20;--text:#e5e7eb;
--muted:#9aa3b2;--line:#272c35;--accent:#60a5fa;--chip:#222731;--check-a:#1d2129;
--check-b:#242933;--ok:#4ade80;--ok-bg:#14301f;--bad:#f87171;--bad-bg:#3a1618;--warn:#fbbf24;
--warn-bg:#382a0c;--idle:#cbd5e1;--idle-bg:#283040;--shadow:0 1px 2px rgb(0 0 0/.4)}}
*{box-sizing:border-box}[hidden]{display:none!important}
body{margin:0;background:var(--bg);color:var(--text);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.top{padding:22px 28px 10px;display:grid;gap:14px}
.title{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap}
h1{font-size:20px;margin:0;letter-spacing:-.01em}.title p{margin:0;color:var(--muted)}
.stats{display:flex;flex-wrap:wrap;gap:8px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:8px 14px;
min-width:88px;display:flex;flex-direction:column;box-shadow:var(--shadow)}
.stat .value{font-size:19px;font-weight:650;font-variant-numeric:tabular-nums}
.stat .label{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.stat[data-stat=ok] .value{color:var(--ok)}.stat[data-stat=failed] .value{color:var(--bad)}
.stat[data-stat=invalid] .value{color:var(--warn)}.stat[data-stat=not_run] .value{color:var(--idle)}
.notes{display:flex;flex-wrap:wrap;gap:4px 22px;color:var(--muted);font-size:13px}
.notes p{margin:0}.notes b{color:var(--text);font-weight:600;margin-right:4px}
.toolbar{position:sticky;top:0;z-index:2;display:flex;gap:12px;align-items:center;flex-wrap:wrap;
padding:10px 28px;background:color-mix(in srgb,var(--bg) 88%,transparent);
backdrop-filter:blur(8px);border-bottom:1px solid var(--line)}
.filters{display:inline-flex;background:var(--chip);border-radius:9px;padding:3px;gap:2px}
.filters button{font:inherit;border:0;background:none;color:var(--muted);padding:5px 12px;
border-radius:7px;cursor:pointer}
.filters button[aria-pressed=true]{background:var(--card);color:var(--text);
box-shadow:var(--shadow)}
.filters .n{font-variant-numeric:tabular-nums;opacity:.7;margin-left:2px}
#search{font:inherit;flex:1 1 240px;max-width:420px;padding:7px 11px;border-radius:9px;
border:1px solid var(--line);background:var(--card);color:var(--text)}
#search:focus{outline:2px solid var(--accent);outline-offset:-1px}
#shown{color:var(--muted);font-size:13px;margin-left:auto;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:16px;
padding:18px 28px 40px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;overflow:hidden;
display:flex;flex-direction:column;box-shadow:var(--shadow)}
.media{position:relative;aspect-ratio:4/3;display:grid;overflow:hidden;
grid-template-columns:minmax(0,1fr);grid-template-rows:minmax(0,1fr);
background:repeating-conic-gradient(var(--check-a) 0 25%,var(--check-b) 0 50%) 0 0/18px 18px}
.media.multi{grid-template-columns:repeat(2,minmax(0,1fr));grid-auto-rows:minmax(0,1fr);gap:2px;background-color:var(--line)}
.shot{display:block;min-height:0;overflow:hidden}
.shot img{display:block;width:100%;height:100%;object-fit:contain;transition:transform .2s}
.shot:hover img{transform:scale(1.03)}
.multi .shot img{object-fit:cover}
.multi .shot:first-child:nth-last-child(even){grid-row:span 2}
.shot:has(img.broken){display:grid;place-items:center}
.shot:has(img.broken)::after{content:"file missing";color:var(--muted);font-size:12px}
.shot img.broken{display:none}
.count{position:absolute;right:8px;bottom:8px;background:rgb(0 0 0/.6);color:#fff;font-size:12px;
padding:1px 8px;border-radius:99px}
.media.failure,.media.empty{background:var(--bad-bg);color:var(--bad);align-content:center;
grid-template-rows:none;padding:18px;gap:6px;overflow:auto}
.card[data-status=invalid] .media{background:var(--warn-bg);color:var(--warn)}
.card[data-status=not_run] .media{background:var(--idle-bg);color:var(--idle)}
.media .kind{margin:0;font-weight:650;text-transform:uppercase;font-size:12px;letter-spacing:.05em}
.media .message{margin:0;font-size:13px;overflow-wrap:anywhere}
.media .param{margin:0;font-size:12px;opacity:.85}
.body{padding:12px 14px 14px;display:flex;flex-direction:column;gap:8px;flex:1}
.head{display:flex;align-items:flex-start;justify-content:space-between;gap:10px}
.id{margin:0;font:600 13px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
overflow-wrap:anywhere}
.badge{flex:none;font-size:11px;font-weight:600;padding:2px 9px;border-radius:99px;
text-transform:uppercase;letter-spacing:.04em}
.badge.ok{color:var(--ok);background:var(--ok-bg)}.badge.failed{color:var(--bad);background:var(--bad-bg)}
.badge.invalid{color:var(--warn);background:var(--warn-bg)}
.badge.not_run{color:var(--idle);background:var(--idle-bg)}
.prompt{margin:0;display:-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:3;
overflow:hidden;overflow-wrap:anywhere;cursor:pointer}
.prompt.expanded{-webkit-line-clamp:unset;display:block}
.prompt.none{color:var(--muted);font-style:italic;cursor:auto}
.revised{font-size:13px;color:var(--muted)}.revised summary{cursor:pointer}
.revised p{margin:4px 0 0;overflow-wrap:anywhere}
.meta{list-style:none;margin:auto 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px}
.meta li{background:var(--chip);color:var(--muted);border-radius:6px;padding:1px 7px;font-size:12px;
font-variant-numeric:tabular-nums}
.warnings{margin:0;padding-left:18px;color:var(--warn);font-size:12px}
.empty-state{text-align:center;color:var(--muted);padding:40px}
"""

_JS = """\
(() => {
  "use strict";
  const FILTERS = ["all", "ok", "failed"];
  const cards = Array.from(document.querySelectorAll("article.card"));
  const texts = cards.map((card) => {
    const prompt = card.querySelector(".prompt");
    const revised = card.querySelector(".revised p");
    return [card.dataset.id, prompt && prompt.textContent, revised && revised.textContent]
      .join("\\n").toLowerCase();
  });
  const buttons = Array.from(document.querySelectorAll("button[data-filter]"));
  const search = document.getElementById("search");
  const shown = document.getElementById("shown");
  const empty = document.getElementById("empty");
  let filter = "all";

  const fromHash = () => {
    const name = decodeURIComponent(location.hash.slice(1)).toLowerCase();
    return FILTERS.includes(name) ? name : "all";
  };
  const apply = () => {
    const query = search.value.trim().toLowerCase();
    let visible = 0;
    cards.forEach((card, i) => {
      const ok = card.dataset.status === "ok";
      const pass = filter === "all" || (filter === "ok" ? ok : !ok);
      card.hidden = !(pass && (!query || texts[i].includes(query)));
      if (!card.hidden) visible += 1;
    });
    buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.filter === filter)));
    shown.textContent = visible.toLocaleString() + " of " + cards.length.toLocaleString();
    empty.hidden = visible > 0;
    document.documentElement.dataset.filter = filter;
  };
  const setFilter = (name, updateHash) => {
    filter = name;
    if (updateHash && location.hash !== "#" + name) {
      try { history.replaceState(null, "", "#" + name); } catch (e) { location.hash = name; }
    }
    apply();
  };

  buttons.forEach((b) => b.addEventListener("click", () => setFilter(b.dataset.filter, true)));
  search.addEventListener("input", apply);
  window.addEventListener("hashchange", () => setFilter(fromHash(), false));
  document.addEventListener("click", (event) => {
    const prompt = event.target.closest && event.target.closest(".prompt:not(.none)");
    if (prompt) prompt.classList.toggle("expanded");
  });
  const mark = (img) => img.classList.add(img.naturalWidth > 0 ? "loaded" : "broken");
  document.addEventListener("load", (e) => {
    if (e.target.tagName === "IMG") mark(e.target);
  }, true);
  document.addEventListener("error", (e) => {
    if (e.target.tagName === "IMG") e.target.classList.add("broken");
  }, true);
  document.querySelectorAll("img").forEach((img) => { if (img.complete) mark(img); });

  const query = new URLSearchParams(location.search).get("q");
  if (query) search.value = query;
  setFilter(fromHash(), false);
})();
"""


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


# Nothing but our own inline style and script may run, and images only from files
# beside the page: no network, even if some text escaped its escaping.
_CSP = (
    "default-src 'none'; "
    f"style-src {_csp_hash(_CSS)}; "
    f"script-src {_csp_hash(_JS)}; "
    "img-src 'self' file:; base-uri 'none'; form-action 'none'"
)


def render_report(
    records: Sequence[JobRecord],
    *,
    name: str,
    generated_at: datetime,
    thumbs: Mapping[str, str] | None = None,
) -> str:
    """The report page for ``records``, as one HTML string.

    ``name`` titles the page (the output directory's name). ``thumbs`` maps a
    file's manifest path to the relative URL of its thumbnail; files without
    one are shown full size, lazily.
    """
    thumbs = thumbs or {}
    cards = (_card(record, thumbs) for record in records)
    return "".join(_page(summarize(records), cards, name=name, generated_at=generated_at))


def _run_data(run: Summary | None) -> str:
    """The counts of the run that wrote the page, as JSON for scripts (the same as ``--json``)."""
    if run is None:
        return ""
    text = json.dumps(run.counts(), separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="run-counts">{text}</script>'


def _page(
    summary: Summary,
    cards: Iterable[str],
    *,
    name: str,
    generated_at: datetime,
    run: Summary | None = None,
) -> Iterator[str]:
    """The page in pieces, so that a 100,000-job report never sits in memory whole."""
    yield (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>pmock-batch report · {_e(name)}</title>"
        f"<style>{_CSS}</style></head>\n<body>"
        f"{_header(summary, name, generated_at)}{_toolbar(summary)}{_run_data(run)}\n"
        '<main class="grid" id="cards">\n'
    )
    for card in cards:
        yield card + "\n"
    yield (
        "</main>"
        '<p class="empty-state" id="empty" hidden>No jobs match.</p>'
        f"<script>{_JS}</script></body></html>\n"
    )


# -- thumbnails -------------------------------------------------------------------


def _flatten(img: Image.Image) -> Image.Image:
    """An RGB copy of ``img``, transparent areas on white (JPEG has no alpha)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def _thumbnail(out_dir: Path, file: FileRecord) -> str | None:
    """Make (or reuse) a JPEG thumbnail of ``file``; its relative URL, or None if impossible.

    Only a regular file inside OUT reached through no link is read; the
    thumbnail is written through :class:`~pmock_batch.files.AtomicFile`, so a
    link at ``.thumbs`` or below raises :class:`~pmock_batch.errors.OutputPathError`.
    """
    if _url(file.path) is None:
        return None
    parts = PurePosixPath(file.path).parts
    thumb_parts = (THUMBS_DIR, *parts[:-1], parts[-1] + ".jpg")
    url = "/".join(_quote(p) for p in thumb_parts)
    source = contained_file(out_dir, file.path)
    if source is None:
        return None
    try:
        source_mtime = source.stat().st_mtime_ns
        done = contained_file(out_dir, "/".join(thumb_parts))
        if done is not None and done.stat().st_mtime_ns >= source_mtime:
            return url
        with Image.open(source) as img:
            img.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale
            img.thumbnail((THUMB_PX, THUMB_PX))
            flat = _flatten(img)
        with AtomicFile(out_dir, "/".join(thumb_parts)) as tmp:
            flat.save(tmp.file, "JPEG", quality=THUMB_QUALITY, optimize=True)
            tmp.commit()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return url


# -- writing -----------------------------------------------------------------------


def _write_atomic(out_dir: Path, name: str, parts: Iterable[str]) -> Path:
    with AtomicFile(out_dir, name) as tmp:
        for part in parts:
            tmp.write(part.encode("utf-8"))
        return tmp.commit()


def write_report(out_dir: Path, *, thumbnails: bool = False, run: Summary | None = None) -> Path:
    """Write ``out_dir/report.html`` from ``out_dir/manifest.jsonl`` alone; return its path.

    Without ``thumbnails`` no image is opened, so this is cheap enough to run
    at the end of every batch. With it, each image gets a small JPEG under
    ``out_dir/.thumbs/`` (reused while newer than its image), for
    ``pmock-batch report``. The page is written to a temporary file and
    renamed into place. Raises :class:`~pmock_batch.errors.UsageError` if
    there is no manifest, :class:`~pmock_batch.errors.OutputPathError` if the
    manifest, ``report.html`` or a thumbnail's path is (or goes through) a
    symbolic link (nothing is written through one), and ``OSError`` if the
    page cannot be written.
    """
    manifest = out_dir / MANIFEST_NAME
    check_own_file(out_dir, MANIFEST_NAME)  # never read in place of the manifest
    check_own_file(out_dir, REPORT_NAME)  # before any work: refused anyway at the rename
    if not manifest.is_file():
        raise UsageError(f"no manifest at {manifest}: nothing to report")

    def skip(row: int, problem: str) -> None:  # said once, in the first pass
        log.warning(
            "%s:%d: skipped a damaged record in the report: %s",
            manifest,
            row,
            problem,
            extra={"event": "warning", "reason": f"damaged manifest record on line {row}"},
        )

    # A first pass: the header needs totals.
    summary = summarize(latest_records(manifest, on_bad=skip))

    def cards() -> Iterator[str]:
        # A second pass, one record at a time.
        for record in latest_records(manifest, on_bad=lambda row, problem: None):
            thumbs: dict[str, str] = {}
            for file in record.files if thumbnails and record.status == "ok" else ():
                url = _thumbnail(out_dir, file)
                if url is not None:
                    thumbs[file.path] = url
            yield _card(record, thumbs)

    name = out_dir.resolve().name or str(out_dir)
    page = _page(summary, cards(), name=name, generated_at=datetime.now(UTC), run=run)
    return _write_atomic(out_dir, REPORT_NAME, page)
