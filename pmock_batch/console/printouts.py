"""What a command prints once: the summary (a table or JSON), the plan, the problems."""

from __future__ import annotations

import logging
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

from ..batchapi import still_running
from ..config import RunConfig
from ..jobs import ScanResult
from ..preflight import Plan
from ..prices import format_usd
from ..tally import FailureGroup, Summary
from .logs import say

__all__ = [
    "SUMMARY_SCHEMA",
    "cost_text",
    "log_summary",
    "print_plan",
    "print_problems",
    "render_summary",
    "summary_json",
]

log = logging.getLogger("pmock_batch")

SUMMARY_SCHEMA = "pmock-batch/summary/v1"
TIMES = "\N{MULTIPLICATION SIGN}"  # 8 x moderation


def summary_json(summary: Summary, config: RunConfig, *, exit_code: int) -> dict[str, Any]:
    """The summary for ``--json``: schema ``pmock-batch/summary/v1`` (see the README).

    Its counts are :meth:`~pmock_batch.tally.Summary.counts`, as report.html embeds them.
    """
    counts = summary.counts()
    return {
        "schema": SUMMARY_SCHEMA,
        "exit_code": exit_code,
        **counts,
        "elapsed_s": round(summary.elapsed_s, 3),
        "images_per_minute": round(summary.images_per_minute, 2),
        "out_dir": str(config.out_dir),
        "manifest": str(config.manifest_path),
        "report": str(config.report_path),
        "shard": config.shard.label if config.shard else None,
        "aborted": summary.aborted,
        "interrupted": summary.interrupted,
        "budget": summary.budget,
        "failures": [{"id": i, "message": m} for i, m in summary.failures],
        "failure_groups": [group.to_json() for group in _groups(summary)],
    }


def _groups(summary: Summary) -> list[FailureGroup]:
    """The failure groups, the largest first."""
    return sorted(summary.failure_groups.values(), key=lambda g: (-g.count, g.kind, g.message))


def render_summary(summary: Summary, config: RunConfig, console: Console) -> None:
    """Print the final summary table, then the failures (at most 20, then a count)."""
    tty = console.is_terminal
    table = Table(
        title="pmock-batch summary",
        box=box.ROUNDED if tty else box.ASCII,
        show_header=False,
        title_justify="left",
    )
    table.add_column("what", style="bold" if tty else "")
    table.add_column("value", overflow="fold")
    total = summary.jobs + summary.skipped
    if config.shard:
        table.add_row("shard", f"{config.shard.label}: {total} job(s) of this share only")
    table.add_row("jobs", f"{total}")
    table.add_row("ok", f"{summary.ok}")
    failed = f"{summary.failed}"
    if summary.failed_by_kind:
        kinds = ", ".join(f"{k} {v}" for k, v in summary.failed_by_kind.most_common())
        failed += f" ({kinds})"
    table.add_row("failed", failed)
    if summary.invalid:
        table.add_row("invalid", f"{summary.invalid}")
    table.add_row("not run", f"{summary.not_run}")
    if summary.pending:
        table.add_row("pending (in a running batch)", f"{summary.pending}")
    table.add_row("skipped (already done)", f"{summary.skipped}")
    retries = "1 retry" if summary.retries == 1 else f"{summary.retries} retries"
    attempts = f"{summary.attempts} ({retries}, {summary.rate_limited} were 429s)"
    table.add_row("attempts", attempts)
    if summary.ambiguous_retries:
        table.add_row(
            "ambiguous retries",
            f"{summary.ambiguous_retries} after timeouts or cut streams: possibly billed twice",
        )
    if summary.billed_retries:
        table.add_row(
            "billed retries",
            f"{summary.billed_retries} after unusable 200s: each was billed "
            "(the bytes are kept under .rejected/)",
        )
    if summary.warnings:
        table.add_row("warnings", f"{summary.warnings} (see the manifest)")
    table.add_row(
        "time",
        f"{summary.elapsed_s:.1f}s, {summary.images} images, "
        f"{summary.images_per_minute:.1f} images/min",
    )
    if summary.usage:
        table.add_row("usage", ", ".join(f"{k} {v:,}" for k, v in sorted(summary.usage.items())))
    if summary.cost_usd or summary.cost_unpriced:
        table.add_row("cost (estimate)", cost_text(summary))
    table.add_row("images", f"{config.out_dir}/")
    table.add_row("manifest", str(config.manifest_path))
    report = config.report_path
    if report.exists():
        table.add_row("report", str(report))
    if summary.aborted:
        table.add_row("ABORTED", summary.aborted)
    elif summary.interrupted:
        table.add_row("INTERRUPTED", f"{summary.not_run} job(s) not run; run again to finish")
    elif summary.budget:
        table.add_row("BUDGET", f"{summary.budget}; {summary.not_run} job(s) left for the next run")
    console.print(table)
    if summary.batches_running:
        console.print(still_running(summary.batches_running, config.out_dir), markup=False)
    groups = _groups(summary)
    if groups:
        console.print("Failures, grouped by kind and message:", markup=False)
    for group in groups:
        more = group.count - len(group.ids)
        ids = ", ".join(group.ids) + (f" and {more} more" if more > 0 else "")
        # Wrapped at word boundaries on a terminal; one line each in a log.
        line = f"  {group.count} {TIMES} {group.kind}: {group.message} ({ids})"
        console.print(line, markup=False, highlight=False)
    if summary.ungrouped_failures:
        count = summary.ungrouped_failures
        console.print(f"  ... and {count} more failure(s) (see the manifest)", markup=False)


def cost_text(summary: Summary) -> str:
    """``$1.23``, with what it would have cost directly for Batch API records, and the
    records the price table could not price."""
    # Nothing priced at all (an unknown model, an old manifest): unknown, not $0.00.
    text = format_usd(summary.cost_usd) if summary.cost_usd else "unknown"
    if summary.via_batch:
        saved = summary.cost_direct_usd - summary.cost_usd
        text += f" (direct: {format_usd(summary.cost_direct_usd)}, saved {format_usd(saved)})"
    if summary.cost_unpriced:
        text += f"; {summary.cost_unpriced} job(s) not priced (model not in the price table)"
    return text


def log_summary(summary: Summary, config: RunConfig, *, exit_code: int) -> None:
    """The summary as one log event, ``{"event": "summary", ...}``: for ``--log-format json``,
    where every line on stderr is one JSON object. Its fields are ``--json``'s."""
    fields = summary_json(summary, config, exit_code=exit_code)
    log.info("summary", extra={"event": "summary", **fields})


def print_problems(result: ScanResult) -> None:
    """The job file's problems, one ``FILE:LINE: message`` each, then a count (on stderr)."""
    for problem in result.problems:
        say(str(problem), event="invalid_line", error=True, line=problem.line)
    shown = len(result.problems)
    if result.problem_count > shown:
        say(f"... and {result.problem_count - shown} more problem(s)", event="invalid_line")
    if any(line.message.startswith("not valid JSON") for line in result.invalid.values()):
        say(
            "hint: each line must be one JSON value: an object, or a quoted prompt string "
            '(pretty-printed JSON spans lines; a bare prompt needs "quotes")',
            event="hint",
        )
    say(
        f"{result.file}: {len(result.invalid)} invalid line(s); nothing was sent.",
        event="invalid_file",
        error=True,
    )


def print_plan(plan: Plan, file: IO[str]) -> None:
    """The ``--dry-run`` plan: counts, the files a run would write, and what --prune removes."""
    share = f", shard {plan.shard} (its share only)" if plan.shard else ""
    waiting = f" ({plan.in_batches} in Batch API batches)" if plan.in_batches else ""
    print(
        f"Plan for {plan.jobs_file}{share}: {plan.jobs} job(s), {plan.images} image(s), into "
        f"{plan.out_dir}/; {plan.done} already done{waiting}, {plan.to_run} to run",
        file=file,
    )
    if plan.invalid:
        print(f"{plan.invalid} invalid line(s) would be skipped (--skip-invalid)", file=file)
    for path, line in plan.files:
        print(f"  {path}  (line {line})", file=file)
    if plan.more:
        print("  ... and more", file=file)
    if plan.files:
        print(
            "  (an image in another format than asked is saved with its own extension)", file=file
        )
    _print_estimate(plan, file)
    if plan.stale is not None:
        print(
            f"--prune would remove {len(plan.stale)} job(s) no longer in {plan.jobs_file}:",
            file=file,
        )
        for name, paths in plan.stale:
            print(f"  {name}: {', '.join(str(p) for p in paths) or 'no files'}", file=file)
    print("Nothing was sent (--dry-run).", file=file)


def _print_estimate(plan: Plan, file: IO[str]) -> None:
    """The owed images' cost, estimated from per-image list prices, and the Batch API's."""
    if not plan.costs:
        return
    owed = sum(images for images, _ in plan.costs.values())
    priced = owed - plan.unpriced
    batch = plan.cost * plan.batch_discount
    print(
        f"Estimated cost of the {priced} owed image(s) with a price: {format_usd(plan.cost)} "
        f"(through the Batch API: {format_usd(batch)})",
        file=file,
    )
    for (model, size, quality), (images, usd) in sorted(plan.costs.items()):
        each = "no price" if usd is None else f"{format_usd(usd)}"
        print(f"  {images} {TIMES} {model} {size} {quality}: {each}", file=file)
    if plan.unpriced:
        print(f"  {plan.unpriced} image(s) have no price in the table (see --prices)", file=file)
