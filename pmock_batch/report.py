"""The visual report: ``OUT/report.html``, built from the manifest alone.

:func:`write_report` reads ``OUT/manifest.jsonl`` (torn lines skipped, the
latest record of each job wins) and writes one self-contained page: its CSS and
script (``report.css`` and ``report.js``, package data beside this module) are
inlined, and a Content-Security-Policy allows nothing else, so it opens from
``file://`` with no network. One job's card is :mod:`pmock_batch.cards`; the
thumbnails are :mod:`pmock_batch.thumbs`. Images are shown with
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
from importlib import resources
from pathlib import Path

from .cards import card, duration, esc
from .config import MANIFEST_NAME
from .errors import UsageError
from .files import check_own_file, write_atomic
from .manifest import latest_records
from .models import JobRecord
from .prices import format_usd
from .tally import Summary, summarize
from .thumbs import thumbnail

log = logging.getLogger("pmock_batch")

__all__ = [
    "REPORT_NAME",
    "latest_records",
    "render_report",
    "summarize",
    "write_report",
]

REPORT_NAME = "report.html"


def _asset(name: str) -> str:
    """A file shipped beside this module (package data), as text."""
    return resources.files("pmock_batch").joinpath(name).read_text("utf-8")


_CSS = _asset("report.css")  # inlined into the page, as is the script
_JS = _asset("report.js")


# -- the header -------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) or value.is_integer() else f"{value:,.2f}"


def _stat(key: str, value: str, label: str, *, title: str = "") -> str:
    tip = f' title="{esc(title)}"' if title else ""
    return (
        f'<div class="stat" data-stat="{esc(key)}"{tip}>'
        f'<span class="value">{esc(value)}</span><span class="label">{esc(label)}</span></div>'
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
            duration(summary.wall_seconds) if summary.wall_seconds is not None else "—",
            "wall time",
            title="from the first job's start to the last job's finish",
        ),
        _stat(
            "job_time", duration(summary.job_seconds), "job time, summed", title="summed over jobs"
        ),
    ]
    if summary.pending:  # --batch-api: in a batch still running on the server
        stats.insert(5, _stat("pending", f"{summary.pending:,}", "pending"))
    if summary.ambiguous_retries:
        stats.append(_stat("ambiguous", f"{summary.ambiguous_retries:,}", "ambiguous retries"))
    if summary.cost_usd or summary.cost_unpriced:
        stats.append(_cost_stat(summary))
    usage = " · ".join(f"{esc(k)} {_number(v)}" for k, v in summary.usage.items())
    kinds = ", ".join(f"{esc(k)} {n:,}" for k, n in sorted(summary.failed_by_kind.items()))
    notes = []
    if usage:
        notes.append(f'<p data-note="usage"><b>Usage</b> {usage}</p>')
    if kinds:
        notes.append(f'<p data-note="kinds"><b>Failed, by kind</b> {kinds}</p>')
    return (
        '<header class="top"><div class="title">'
        f"<h1>pmock-batch report</h1><p>{esc(name)} · generated "
        f'<time datetime="{esc(generated_at.astimezone(UTC).isoformat())}">{esc(stamp)}</time>'
        f'</p></div><div class="stats">{"".join(stats)}</div>'
        f'<div class="notes">{"".join(notes)}</div></header>'
    )


def _cost_stat(summary: Summary) -> str:
    tip = "an estimate from each answer's usage and the price table, not an invoice"
    if summary.via_batch:
        saved = summary.cost_direct_usd - summary.cost_usd
        tip += f"; direct: {format_usd(summary.cost_direct_usd)}, saved {format_usd(saved)}"
    if summary.cost_unpriced:
        tip += f"; {summary.cost_unpriced:,} job(s) not priced (model not in the price table)"
    value = format_usd(summary.cost_usd) if summary.cost_usd else "—"  # nothing could be priced
    return _stat("cost", value, "cost (estimate)", title=tip)


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
    cards = (card(record, thumbs) for record in records)
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
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_CSP)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>pmock-batch report · {esc(name)}</title>"
        f"<style>{_CSS}</style></head>\n<body>"
        f"{_header(summary, name, generated_at)}{_toolbar(summary)}{_run_data(run)}\n"
        '<main class="grid" id="cards">\n'
    )
    for html in cards:
        yield html + "\n"
    yield (
        "</main>"
        '<p class="empty-state" id="empty" hidden>No jobs match.</p>'
        f"<script>{_JS}</script></body></html>\n"
    )


def write_report(
    out_dir: Path,
    *,
    thumbnails: bool = False,
    run: Summary | None = None,
    names: tuple[str, str] = (MANIFEST_NAME, REPORT_NAME),
) -> Path:
    """Write ``out_dir/report.html`` from ``out_dir/manifest.jsonl`` alone; return its path.

    ``names`` are the manifest and the page: a shard's are its own.

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
    manifest_name, report_name = names
    manifest = out_dir / manifest_name
    check_own_file(out_dir, manifest_name)  # never read in place of the manifest
    check_own_file(out_dir, report_name)  # before any work: refused anyway at the rename
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
                url = thumbnail(out_dir, file)
                if url is not None:
                    thumbs[file.path] = url
            yield card(record, thumbs)

    name = out_dir.resolve().name or str(out_dir)
    page = _page(summary, cards(), name=name, generated_at=datetime.now(UTC), run=run)
    return write_atomic(out_dir, report_name, (part.encode("utf-8") for part in page))
