"""The command line: Click commands and the one error -> exit-code table.

With :mod:`pmock_batch.console`, the only code that writes to the terminal. ``pmock-batch
JOBS`` runs ``run``; the others are ``validate``, ``report``, ``batches``, ``merge`` and
``mock-server``. :data:`EXIT_CODES` turns what a command raises into an exit code."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import rich_click as rclick

from . import config as cfg
from . import console
from .batchapi import BatchOptions, BatchState
from .batches import batches
from .capabilities import load_capabilities
from .errors import LockedError, OutputPathError, PmockBatchError, UsageError
from .flags import (
    FILE,
    HELP_ALL,
    HELP_STYLE,
    REQUEST_DEFAULTS,
    RUN_FLAGS,
    DefaultGroup,
    panel,
)
from .jobs import Defaults, iter_jobs, scan
from .lock import run_lock
from .merge import merge
from .mock.command import mock_flags, mock_options
from .preflight import (
    check_batch_api,
    check_jobs_file,
    check_network,
    endpoint,
    plan_run,
    resolve_endpoint,
    retry_policy,
)
from .prices import load_prices
from .report import write_report
from .run import Run, run_batch
from .shards import manifest_paths, shard_from_flags, shard_total
from .tally import Summary
from .version import __version__

__all__ = ["EXIT_CODES", "AbortedError", "cli", "fail", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ABORTED, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_BUDGET = 5  # --max-cost or --max-images stopped the run; the next run continues
PROG = "pmock-batch"
log = logging.getLogger("pmock_batch")


class AbortedError(PmockBatchError):
    """The run could not start: its output directory is unusable (exit 3)."""


# The one table: the first row whose class matches decides the exit code and the message.
EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (click.UsageError, EXIT_USAGE, "{0}"),  # a bad flag, with "did you mean"; no arguments
    (click.ClickException, EXIT_USAGE, "{0}"),
    (LockedError, EXIT_LOCKED, "{0}"),
    (OutputPathError, EXIT_USAGE, "{0}"),  # a link at the manifest or lock: before anything
    (UsageError, EXIT_USAGE, "{0}"),  # bad flags, environment or job file: nothing sent
    (AbortedError, EXIT_ABORTED, "run aborted: {0}"),
    (BrokenPipeError, EXIT_OK, ""),  # `pmock-batch JOBS --dry-run | head`: the reader has gone
    (OSError, EXIT_ABORTED, "{0}"),  # e.g. `report` cannot write into OUT
    (click.Abort, EXIT_INTERRUPTED, "interrupted"),
    (KeyboardInterrupt, EXIT_INTERRUPTED, "interrupted"),
)


def fail(exc: BaseException) -> int:
    """Print ``exc`` as one ``pmock-batch: error: ...`` line; return its exit code.

    Re-raises an exception that :data:`EXIT_CODES` does not name: that is a bug.
    """
    row = next((row for row in EXIT_CODES if isinstance(exc, row[0])), None)
    if row is None:
        raise exc
    _, code, template = row
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # `pmock-batch` alone: the help
        click.echo(exc.format_message(), err=True)
        return code
    if isinstance(exc, BrokenPipeError):
        console.quiet_stdout()
    text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    if template:
        line = f"{PROG}: error: {template.format(text)}"
        console.say(line, event="error", error=True, exit_code=code)
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
    return code


def _pick(o: dict[str, Any], names: str) -> dict[str, Any]:
    """The values of the flags ``names`` (space-separated), as keyword arguments."""
    return {name: o[name] for name in names.split()}


def _defaults(o: dict[str, Any]) -> Defaults:
    request = "model size quality output_format background moderation output_compression"
    return Defaults(**_pick(o, f"{request} response_format"), stream=o.get("stream") or None)


@click.group(
    PROG,
    cls=DefaultGroup,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "rich_help_config": HELP_STYLE},
    epilog="'pmock-batch JOBS' runs JOBS ('run' is the default command); a job file named "
    "like a command needs a path: ./report. 'pmock-batch COMMAND --help' tells more.",
)
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """Turn a JSONL file of prompts into images on disk, with a manifest."""


@cli.command(
    "run",
    epilog="Exit codes: 0 all ok, 1 some jobs not ok, 2 usage error or invalid job file, "
    "3 run aborted, 4 OUT locked, 5 spending cap reached, 130 interrupted. "
    "Every flag: --help-all. Commands: validate, report, batches, merge, mock-server.",
)
@RUN_FLAGS
@HELP_ALL
@mock_flags(prefix="mock-", hidden=True)
def run(**o: Any) -> int:
    """Turn JOBS, a JSONL file of prompts, into images in OUT, with a manifest.

    'pmock-batch JOBS' is short for 'pmock-batch run JOBS'. Flags are off unless given.
    """
    screen = console.make_console(sys.stderr)
    console.setup_logging(screen, quiet=o["quiet"], verbose=o["verbose"], fmt=o["log_format"])
    o["shard"] = shard_from_flags(o)  # checked first: --shard K/N, or auto
    # --dry-run sends nothing, so it needs no key.
    keyless = o["mock"] or o["dry_run"]
    base_url, key = resolve_endpoint(o["base_url"], o["api_key_env"], mock=keyless)
    headers = check_network(o["header"], o["proxy"], o["ca_bundle"], mock=o["mock"])
    mock = _mock_options(o) if o["mock"] else None
    caps = load_capabilities(o["capabilities"])
    prices = load_prices(o["prices"])
    jobs: Path = o["jobs"]
    check_jobs_file(jobs)
    defaults = _defaults(o)
    result = scan(jobs, defaults=defaults, caps=caps, inputs=o["inputs"])
    for warning in result.warnings:
        log.warning("%s", warning)
    out_dir = o["out"] or Path("out") / jobs.stem
    if result.invalid and not o["skip_invalid"]:
        console.print_problems(result)
        if o["json"]:
            _json_error(EXIT_USAGE, f"{jobs}: {len(result.invalid)} invalid line(s)")
        return EXIT_USAGE
    if not result.jobs and not result.invalid:
        console.say(f"no jobs in {jobs}: nothing to do", event="nothing_to_do")
        return EXIT_OK
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"OUT is a file, not a directory: {out_dir}; give --out a folder")
    if o["batch_api"]:
        check_batch_api(capped=bool(o["max_images"] or o["max_cost"]))
    resume = {"resume": not o["force"], "verify": o["verify"], "prune": o["prune"]}
    if o["dry_run"]:
        plan = plan_run(
            jobs, result, out_dir, defaults, caps, prices=prices, shard=o["shard"], **resume
        )
        console.print_plan(plan, sys.stdout)
        if o["batch_api"]:  # what a --batch-api run would do first, from OUT/batches.jsonl alone
            state = BatchState.load(out_dir) if out_dir.is_dir() else None
            held = sum(not b.collected for b in state.batches.values()) if state else 0
            click.echo(
                f"With --batch-api: at most {o['batch_size']:,} images per batch, one endpoint "
                f"and model per batch; {held} recorded batch(es) not yet collected would be "
                "re-attached"
            )
        return EXIT_OK
    same = "concurrency timeout connect_timeout max_attempts grace rpm field_case api_key_env "
    same += "max_images max_cost shard"
    config = cfg.RunConfig(
        out_dir=out_dir,
        base_url=base_url,
        api_key=key,
        headers=headers,
        trust_env=not o["mock"],
        prices=prices,
        **_pick(o, f"{same} proxy ca_bundle save_partials"),
    )
    mode = "none" if o["quiet"] else "lines"
    if mode == "lines" and screen.is_terminal and o["log_format"] == "text":
        mode = "bar"
    total = result.jobs + (len(result.invalid) if o["skip_invalid"] else 0)
    total = shard_total(o["shard"], total, jobs, result, defaults, caps)
    reporter = console.Reporter(screen, total=total, mode=mode)
    policy = retry_policy(**_pick(o, "max_attempts max_retry_wait max_billed_retries"))
    run_jobs = iter_jobs(jobs, result, defaults=defaults, caps=caps)
    batch_api = (
        BatchOptions(
            batch_size=o["batch_size"],
            poll_interval=o["poll_interval"],
            wait=not o["no_wait"],
            keep_files=o["keep_files"],
            mock=mock is not None,  # an earlier run's mock has gone with its batches
        )
        if o["batch_api"]
        else None
    )

    async def batch(on_start: Callable[[Run], None]) -> Summary:
        async with endpoint(mock, config.base_url) as url:
            return await run_batch(
                replace(config, base_url=url),
                run_jobs,
                policy=policy,
                observer=reporter,
                on_start=on_start,
                batch=batch_api,
                **resume,
            )

    try:
        live = console.live_run(batch, reporter, grace=config.grace, exit_code=EXIT_INTERRUPTED)
        summary = asyncio.run(live)
    except OSError as exc:  # the output directory itself is unusable: nothing was sent
        raise AbortedError(
            f"cannot use the output directory {out_dir}: {exc}. "
            "Check that it is a writable directory with free space."
        ) from exc
    code = _exit_code(summary)
    if summary.budget:
        left = summary.not_run
        console.say(
            f"{summary.budget}; {left} job(s) left for the next run", event="budget", left=left
        )
    if not summary.jobs and summary.skipped and not (summary.aborted or summary.interrupted):
        log.info(
            "nothing to do: all %d jobs are done (use --force to regenerate)",
            summary.skipped,
            extra={"event": "nothing_to_do", "done": summary.skipped},
        )
    if o["log_format"] == "json":  # every line on stderr is one JSON object
        console.log_summary(summary, config, exit_code=code)
    else:
        console.render_summary(summary, config, screen)
    if o["json"]:
        click.echo(json.dumps(console.summary_json(summary, config, exit_code=code)))
    return code


def _mock_options(o: dict[str, Any]) -> Any:
    try:
        return mock_options(o)
    except ValueError as exc:
        raise UsageError(f"mock server: {exc}") from exc


def _exit_code(summary: Summary) -> int:
    if summary.aborted:
        return EXIT_ABORTED
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.budget:
        return EXIT_BUDGET
    if summary.failed or summary.invalid or summary.not_run:  # pending is not a failure
        return EXIT_FAILED
    return EXIT_OK


@cli.command("validate")
@rclick.argument("jobs", type=FILE, metavar="JOBS", help="the JSONL job file")
@REQUEST_DEFAULTS
@HELP_ALL
def validate(**o: Any) -> int:
    """Check a job file without sending anything. Exit 0 if valid, 2 if not.

    Flags are off unless given.
    """
    caps = load_capabilities(o["capabilities"])
    check_jobs_file(o["jobs"])
    result = scan(o["jobs"], defaults=_defaults(o), caps=caps, inputs=o["inputs"])
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.invalid:
        console.print_problems(result)
        return EXIT_USAGE
    click.echo(f"{o['jobs']}: {result.jobs} job(s), {result.images} image(s): all valid.", err=True)
    return EXIT_OK


@cli.command("report")
@rclick.argument("out", type=FILE, metavar="OUT", help="the output directory of a run")
@rclick.option(
    "--thumbnails", is_flag=True, help="also make JPEG thumbnails in OUT/.thumbs/ (default: off)"
)
def report(out: Path, thumbnails: bool) -> int:
    """Regenerate OUT/report.html from OUT/manifest.jsonl alone."""
    shards = len(manifest_paths(out)) - 1 if out.is_dir() else 0
    merge_hint = f"'pmock-batch merge {out}' folds the {shards} shard manifest(s) in OUT into it"
    if not (out / cfg.MANIFEST_NAME).is_file():  # checked before the lock would create OUT
        raise UsageError(f"no {cfg.MANIFEST_NAME} in {out}" + (f"; {merge_hint}" if shards else ""))
    with run_lock(out):
        path = write_report(out, thumbnails=thumbnails)
    click.echo(f"Wrote {path}", err=True)
    if shards:
        click.echo(f"note: the report leaves out the shards' jobs; {merge_hint}", err=True)
    return EXIT_OK


cli.add_command(batches)
cli.add_command(merge)


@cli.command("mock-server")
@panel("Server")("--host", "HOST", str, "127.0.0.1", "address to bind")
@panel("Server")("--port", "PORT", int, 8080, "port")
@mock_flags(prefix="", panel="Behaviour")
def mock_server(host: str, port: int, **o: Any) -> int:
    """Run the built-in OpenAI-compatible image mock server. Ctrl-C stops it.

    Its behaviour flags work with 'pmock-batch JOBS --mock' too, with a mock- prefix:
    --latency 0.2 here is --mock-latency 0.2 there.
    """
    options = _mock_options(o)

    def ready(url: str) -> None:
        click.echo(f"pmock-batch mock server listening on {url} (base URL {url}/v1)", err=True)

    from .mock import serve

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(options, host=host, port=port, on_ready=ready))
    except OSError as exc:  # the port is taken, or the address is not this machine's
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(f"cannot listen on {host}:{port}: {reason}; pick another --port") from exc
    return EXIT_OK


def script() -> int:
    """The ``pmock-batch`` console script (and ``python -m pmock_batch``): :func:`main`.

    What the imports built lives as long as the process, so the garbage
    collector is told not to walk it again and again (``gc.freeze``): less CPU
    per image. Only here, never for a program that imports the package.
    """
    gc.freeze()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the process's). Returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    console.logs.plain_lines()
    try:
        with cli.make_context(PROG, args) as ctx:
            return int(cli.invoke(ctx))
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except (Exception, KeyboardInterrupt) as exc:
        code = fail(exc)
        if "--json" in args:  # a script reads stdout: never empty
            message = exc.format_message() if isinstance(exc, click.ClickException) else None
            _json_error(code, message or str(exc))
        return code


def _json_error(code: int, message: str) -> None:
    """``--json`` when the run never started: the exit code and why, for a script."""
    error = {"schema": console.SUMMARY_SCHEMA, "exit_code": code, "error": message}
    with contextlib.suppress(OSError):
        click.echo(json.dumps(error))
