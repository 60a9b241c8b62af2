"""What a command prints once: the summary (a table or JSON), the plan, the problems."""

from __future__ import annotations

from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

from ..config import RunConfig
from ..jobs import ScanResult
from ..preflight import Plan
from ..tally import Summary

__all__ = ["SUMMARY_SCHEMA", "print_plan", "print_problems", "render_summary", "summary_json"]

SUMMARY_SCHEMA = "pmock-batch/summary/v1"


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
        "report": str(config.out_dir / "report.html"),
        "aborted": summary.aborted,
        "interrupted": summary.interrupted,
        "failures": [{"id": i, "message": m} for i, m in summary.failures],
    }


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
    table.add_row("skipped (already done)", f"{summary.skipped}")
    attempts = f"{summary.attempts} ({summary.retries} retries, {summary.rate_limited} were 429s)"
    table.add_row("attempts", attempts)
    if summary.ambiguous_retries:
        table.add_row(
            "ambiguous retries",
            f"{summary.ambiguous_retries} after timeouts: possibly billed twice",
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
    table.add_row("images", f"{config.out_dir}/")
    table.add_row("manifest", str(config.manifest_path))
    report = config.out_dir / "report.html"
    if report.exists():
        table.add_row("report", str(report))
    if summary.aborted:
        table.add_row("ABORTED", summary.aborted)
    elif summary.interrupted:
        table.add_row("INTERRUPTED", f"{summary.not_run} job(s) not run; run again to finish")
    console.print(table)
    if summary.failures:
        console.print("Failures:", markup=False)
        for job_id, message in summary.failures:
            console.print(f"  {job_id}: {message}", markup=False, soft_wrap=True)
        hidden = summary.failed + summary.invalid - len(summary.failures)
        if hidden > 0:
            console.print(f"  ... and {hidden} more (see the manifest)", markup=False)


def print_problems(result: ScanResult, file: IO[str]) -> None:
    """The job file's problems, one ``FILE:LINE: message`` each, then a count."""
    for problem in result.problems:
        print(problem, file=file)
    shown = len(result.problems)
    if result.problem_count > shown:
        print(f"... and {result.problem_count - shown} more problem(s)", file=file)
    print(f"{result.file}: {len(result.invalid)} invalid line(s); nothing was sent.", file=file)


def print_plan(plan: Plan, file: IO[str]) -> None:
    """The ``--dry-run`` plan: counts, the files a run would write, and what --prune removes."""
    print(
        f"Plan for {plan.jobs_file}: {plan.jobs} job(s), {plan.images} image(s), into "
        f"{plan.out_dir}/; {plan.done} already done, {plan.to_run} to run",
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
    if plan.stale is not None:
        print(
            f"--prune would remove {len(plan.stale)} job(s) no longer in {plan.jobs_file}:",
            file=file,
        )
        for name, paths in plan.stale:
            print(f"  {name}: {', '.join(str(p) for p in paths) or 'no files'}", file=file)
    print("Nothing was sent (--dry-run).", file=file)
