"""The command line: argument parsing, progress, summaries and exit codes.

This is the only module that prints. Everything else logs through the
``pmock_batch`` logger or returns values.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar
from urllib.parse import urlsplit

from .capabilities import Capabilities, load_capabilities
from .config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_GRACE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BILLED_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    MANIFEST_NAME,
    RunConfig,
)
from .console import Reporter, make_console, render_summary, setup_logging, summary_json
from .errors import LockedError, OutputPathError, UsageError
from .files import check_own_file
from .images import EXTENSIONS
from .jobs import Defaults, Job, ScanResult, iter_jobs, scan
from .lock import run_lock
from .models import FORMATS, RESPONSE_FORMATS
from .network import ProxyRoutes, check_headers, parse_header, ssl_context
from .report import write_report
from .resume import DoneIndex
from .retry import RetryPolicy
from .run import Run, run_batch, stale_files
from .tally import Summary
from .version import __version__

if TYPE_CHECKING:  # the mock (and aiohttp.web) is imported only when it is used
    from .mock import MockOptions

__all__ = [
    "EXIT_ABORTED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130

MAX_PLAN_FILES = 50
MOCK_LIMITERS = ("window", "bucket")  # the mock's LIMITER_KINDS, without importing the mock

log = logging.getLogger("pmock_batch")
T = TypeVar("T")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _compression(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be from 0 to 100, got {value}")
    return value


def _add_request_defaults(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "request defaults", "used for fields a job line leaves out; a value on the line wins"
    )
    group.add_argument("--model", help=f"model name (default: {DEFAULT_MODEL})")
    group.add_argument(
        "--size", metavar="WxH", help="image size, checked per model (default: the server's)"
    )
    group.add_argument(
        "--quality", metavar="Q", help="quality, checked per model (default: the server's)"
    )
    group.add_argument(
        "--output-format", choices=FORMATS, help="image format (default: the server's, png)"
    )
    group.add_argument("--background", metavar="B", help="background (default: server's)")
    group.add_argument("--moderation", metavar="M", help="moderation (default: server's)")
    group.add_argument(
        "--response-format",
        choices=RESPONSE_FORMATS,
        help="sent only to models that accept it (dall-e-2/3); GPT image models always "
        "return b64_json (default: not sent)",
    )
    group.add_argument(
        "--output-compression",
        type=_compression,
        metavar="0-100",
        help="jpeg/webp compression, applied only to jpeg and webp jobs (default: server's)",
    )
    group.add_argument(
        "--capabilities",
        type=Path,
        metavar="FILE",
        help="a TOML capability table merged over the shipped one, for new models "
        "(default: the shipped table)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pmock-batch",
        description="Turn a JSONL file of prompts into images on disk, with a manifest.",
        epilog=(
            "other commands: 'pmock-batch validate JOBS' checks a job file; "
            "'pmock-batch report OUT' regenerates OUT/report.html; "
            "'pmock-batch mock-server' runs the built-in mock server. "
            "Exit codes: 0 all ok, 1 some jobs not ok, 2 usage error or invalid job file, "
            "3 run aborted (bad key, wrong URL, no quota, disk full), 4 output directory "
            "locked by another run, 130 interrupted."
        ),
    )
    parser.add_argument("--version", action="version", version=f"pmock-batch {__version__}")
    inp = parser.add_argument_group("input")
    inp.add_argument("jobs", type=Path, metavar="JOBS", help="the JSONL job file")
    inp.add_argument(
        "--skip-invalid",
        action="store_true",
        help="run the valid lines, record invalid ones in the manifest, exit 1 (default: off)",
    )
    inp.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the plan; send nothing (default: off)",
    )
    inp.add_argument(
        "--force",
        action="store_true",
        help="regenerate every job, even those a previous run finished (default: resume)",
    )
    inp.add_argument(
        "--prune",
        action="store_true",
        help="drop the manifest records of jobs no longer in JOBS and delete their files "
        "(default: keep them; with --dry-run: list them)",
    )
    inp.add_argument(
        "--verify",
        action="store_true",
        help="when resuming, also check each finished file's SHA-256 (default: size only)",
    )
    _add_request_defaults(parser)
    end = parser.add_argument_group("endpoint")
    end.add_argument(
        "--base-url",
        default=None,
        help=f"OpenAI-compatible base URL (default: ${BASE_URL_ENV} or {DEFAULT_BASE_URL})",
    )
    end.add_argument(
        "--mock",
        action="store_true",
        help="run against a built-in mock server on loopback: offline, no key (default: off)",
    )
    end.add_argument(
        "--field-case",
        choices=("snake", "camel"),
        default="snake",
        help="spelling of the JSON body's field names on the wire (default: snake)",
    )
    end.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per-request timeout (default: {DEFAULT_TIMEOUT:g})",
    )
    end.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"timeout to open a connection (default: {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    _add_network_options(parser)
    pool = parser.add_argument_group("concurrency and retries")
    pool.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight at most (default: {DEFAULT_CONCURRENCY})",
    )
    pool.add_argument(
        "--rpm",
        type=_positive_float,
        default=None,
        metavar="N",
        help="pace requests to at most N per minute, with a small burst at the start "
        "(default: learn the limit from the server's x-ratelimit headers)",
    )
    pool.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"attempts per image, first try included (default: {DEFAULT_MAX_ATTEMPTS})",
    )
    pool.add_argument(
        "--max-billed-retries",
        type=_count,
        default=DEFAULT_MAX_BILLED_RETRIES,
        metavar="N",
        help="new generations after a 200 whose image is unusable, each one billed "
        f"(default: {DEFAULT_MAX_BILLED_RETRIES})",
    )
    pool.add_argument(
        "--max-retry-wait",
        type=_positive_float,
        default=DEFAULT_MAX_RETRY_WAIT,
        metavar="SECONDS",
        help="fail a job rather than wait longer than this for a Retry-After "
        f"(default: {DEFAULT_MAX_RETRY_WAIT:g})",
    )
    pool.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"time jobs in flight get to finish after Ctrl-C (default: {DEFAULT_GRACE:g})",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory (default: out/<JOBS file name without extension>)",
    )
    logs = parser.add_argument_group("logging")
    logs.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="errors and the final summary only (default: off)",
    )
    logs.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log every attempt: status code, latency and wait; never the key (default: off)",
    )
    logs.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text, or one JSON object per line for log collectors (default: text)",
    )
    logs.add_argument(
        "--json",
        action="store_true",
        help="also print the final summary as one JSON object on stdout (default: off)",
    )
    _add_mock_options(parser, prefix="mock-", title="mock server (with --mock)")
    return parser


def _add_network_options(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("network", "proxies, CA bundles, headers and the key")
    net.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        metavar="NAME",
        help=f"read the API key from this environment variable (default: {API_KEY_ENV})",
    )
    net.add_argument(
        "--header",
        type=_checked(parse_header),
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra header for API calls, such as 'OpenAI-Organization: org-...'; repeatable; "
        "values are never shown (default: none)",
    )
    net.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="http://[user:password@]host:port proxy for every request, API calls and image "
        "downloads alike; '' for none (default: $HTTPS_PROXY or $HTTP_PROXY by scheme, "
        "else $ALL_PROXY, except hosts in $NO_PROXY)",
    )
    net.add_argument(
        "--ca-bundle",
        type=Path,
        default=None,
        metavar="FILE",
        help="PEM file of the CAs to trust, instead of the system's "
        "(default: $SSL_CERT_FILE or $SSL_CERT_DIR, else the system's)",
    )


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a parser so that its ValueError message reaches the user as is."""

    def wrapped(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    wrapped.__name__ = parse.__name__
    return wrapped


def _lazy_parser(name: str) -> Callable[[str], Any]:
    """A mock flag's parser, importing the mock only when such a flag is given."""

    def parse(text: str) -> Any:
        from .mock import faults

        return getattr(faults, name)(text)

    parse.__name__ = name
    return parse


def _add_mock_options(parser: argparse.ArgumentParser, *, prefix: str, title: str) -> None:
    """The mock's behaviour flags: ``--latency`` on mock-server, ``--mock-latency`` with --mock."""
    group = parser.add_argument_group(title)

    def add(name: str, **kwargs: Any) -> None:
        group.add_argument(f"--{prefix}{name}", dest="mock_" + name.replace("-", "_"), **kwargs)

    add("latency", type=float, default=0.0, metavar="S", help="delay per response (default: 0)")
    add(
        "latency-jitter",
        type=float,
        default=0.0,
        metavar="S",
        help="up to this much random extra delay (default: 0)",
    )
    add(
        "fault-rate",
        type=_checked(_lazy_parser("parse_fault_rates")),
        default={},
        metavar="KIND=P,...",
        help="random faults, e.g. 500=0.1,503=0.05,429=0.1,drop=0.05,truncate=0.05,"
        "corrupt=0.05,hang=0.01 (default: none)",
    )
    add("seed", type=int, default=None, help="seed for faults and jitter (default: random)")
    add(
        "script",
        type=_checked(_lazy_parser("parse_script")),
        action="append",
        default=[],
        metavar="PROMPT=OUTCOME,...",
        help="scripted outcomes by attempt for a prompt ('*' for all), e.g. 'a cat=500,drop,ok'; "
        "repeatable (default: none)",
    )
    add(
        "script-file",
        type=_checked(_lazy_parser("load_script")),
        default=None,
        metavar="FILE",
        help='scripted outcomes as JSON: {"a cat": ["500", "ok"]} (default: none)',
    )
    add(
        "retry-after",
        type=float,
        default=1.0,
        metavar="S",
        help="Retry-After of a 429 fault (default: 1)",
    )
    add(
        "rpm",
        type=_positive_int,
        default=None,
        metavar="N",
        help="requests-per-minute limit (default: none)",
    )
    add(
        "limiter",
        choices=MOCK_LIMITERS,
        default="window",
        help=f"how --{prefix}rpm is enforced: a sliding minute with 1 s quanta, or a token "
        "bucket refilled continuously (default: window)",
    )
    add(
        "burst",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"the bucket's capacity (default: one second's worth of --{prefix}rpm)",
    )
    add(
        "require-key",
        default=None,
        metavar="KEY",
        help="answer 401 unless this bearer key (default: none)",
    )
    add(
        "moderation-word",
        action="append",
        default=[],
        metavar="WORD",
        help="prompts with this word get moderation_blocked; repeatable (default: none)",
    )
    add(
        "payload-mb",
        type=_positive_float,
        default=None,
        metavar="MB",
        help="pad images to ~MB (default: off)",
    )
    add(
        "image-px",
        type=_positive_int,
        default=None,
        metavar="N",
        help="draw every image N x N pixels, whatever size was asked (default: as asked)",
    )
    add(
        "trailing-bytes",
        type=_count,
        default=0,
        metavar="N",
        help="append N bytes after each image's end (PNG IEND, JPEG EOI, WebP RIFF) (default: 0)",
    )
    add(
        "download-script",
        default="",
        metavar="OUTCOME,...",
        help="outcomes of each url image's GETs by attempt, e.g. '500,drop,truncate' "
        "(default: all ok)",
    )
    add(
        "revised-prompt",
        action="store_true",
        help="add a revised_prompt to every image (default: off)",
    )
    add(
        "dialect",
        choices=("pmock", "openai"),
        default="pmock",
        help="pmock: the seed's rules; openai: the real API's rules per model, from the "
        "capability table (400 unknown_parameter, n up to 10, gpt-image-2 sizes) "
        "(default: pmock)",
    )


def _mock_options(args: argparse.Namespace) -> MockOptions:
    from .mock import MockOptions

    script: dict[str, tuple[str, ...]] = {}
    for part in [*args.mock_script, args.mock_script_file or {}]:
        script.update(part)
    try:
        return MockOptions(
            latency=args.mock_latency,
            latency_jitter=args.mock_latency_jitter,
            fault_rates=args.mock_fault_rate,
            seed=args.mock_seed,
            script=script,
            retry_after=args.mock_retry_after,
            rpm=args.mock_rpm,
            limiter=args.mock_limiter,
            burst=args.mock_burst,
            require_key=args.mock_require_key,
            moderation_words=tuple(args.mock_moderation_word),
            payload_mb=args.mock_payload_mb,
            revised_prompt=args.mock_revised_prompt,
            image_px=args.mock_image_px,
            dialect=args.mock_dialect,
            trailing_bytes=args.mock_trailing_bytes,
            download_script=args.mock_download_script,
        )
    except ValueError as exc:
        raise UsageError(f"mock server: {exc}") from exc


# -- output helpers ------------------------------------------------------------


def _err(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stderr)


def _print_problems(result: ScanResult) -> None:
    for problem in result.problems:
        _err(str(problem))
    shown = len(result.problems)
    total = result.problem_count
    if total > shown:
        _err(f"... and {total - shown} more problem(s)")
    _err(f"{result.file}: {len(result.invalid)} invalid line(s); nothing was sent.")


def _print_plan(
    result: ScanResult, args: argparse.Namespace, out_dir: Path, caps: Capabilities
) -> None:
    path = args.jobs
    done = DoneIndex() if args.force else DoneIndex.load(out_dir / MANIFEST_NAME)
    finished = 0
    todo: list[Job] = []
    current: set[str] = set()
    for item in iter_jobs(path, result, defaults=_defaults(args), caps=caps):
        current.add(item.id if item.id is not None else f"#line{item.line}")
        if not isinstance(item, Job):
            continue
        if done.is_done(item, out_dir, verify=args.verify):
            finished += 1
        elif len(todo) <= MAX_PLAN_FILES:
            todo.append(item)
    print(
        f"Plan for {path}: {result.jobs} job(s), {result.images} image(s), into {out_dir}/; "
        f"{finished} already done, {result.jobs - finished} to run"
    )
    if result.invalid:
        print(f"{len(result.invalid)} invalid line(s) would be skipped (--skip-invalid)")
    shown = 0
    for item in todo:
        for stem in item.stems:
            if shown < MAX_PLAN_FILES:
                ext = EXTENSIONS[item.request.format]
                print(f"  {out_dir / f'{stem}.{ext}'}  (line {item.line})")
            shown += 1
    if result.jobs - finished > len(todo) or shown > MAX_PLAN_FILES:
        print("  ... and more")
    if args.prune:
        stale = stale_files(out_dir, current)
        print(f"--prune would remove {len(stale)} job(s) no longer in {path}:")
        for name, paths in stale:
            files = ", ".join(str(p) for p in paths) or "no files"
            print(f"  {name}: {files}")
    print("Nothing was sent (--dry-run).")


# -- commands --------------------------------------------------------------------


def _defaults(args: argparse.Namespace) -> Defaults:
    return Defaults(
        model=args.model,
        size=args.size,
        quality=args.quality,
        output_format=args.output_format,
        background=args.background,
        moderation=args.moderation,
        output_compression=args.output_compression,
        response_format=args.response_format,
    )


def _capabilities(args: argparse.Namespace) -> Capabilities:
    """The capability table for this run (raises UsageError for a bad --capabilities)."""
    return load_capabilities(args.capabilities)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _resolve_endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    """The base URL and key, from flags and environment. Raises UsageError."""
    base_url = args.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--base-url must be an http(s) URL, got {base_url!r}")
    name = args.api_key_env
    if not _ENV_NAME.fullmatch(name):  # not echoed: it may be the key itself, pasted by mistake
        raise UsageError("--api-key-env takes the name of an environment variable, not a key")
    key = os.environ.get(name) or None
    if key is not None and not all(33 <= ord(ch) <= 126 for ch in key):
        # Not echoed, not even in part: the message names the variable only.
        raise UsageError(
            f"the API key in {name} contains whitespace, a control character or a non-ASCII "
            "character (a trailing newline, or a \\r from a file with Windows line endings?); "
            "an HTTP header cannot carry it. Fix the variable. Nothing was sent."
        )
    if key is None and not args.mock:
        raise UsageError(
            f"no API key: set {name} (or use --mock to run offline against the mock "
            "server). Nothing was sent."
        )
    return base_url, key


def _check_network(args: argparse.Namespace) -> None:
    """Check --header, the proxy and the CA bundle before anything is sent. Raises UsageError.

    With --mock, proxy and CA variables are ignored: the mock is plain HTTP on loopback.
    """
    environ = {} if args.mock else os.environ
    try:
        args.header = check_headers(args.header)
        ProxyRoutes.resolve(args.proxy, environ)
        ssl_context(args.ca_bundle, environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


@contextlib.asynccontextmanager
async def _endpoint(mock: MockOptions | None, base_url: str) -> AsyncIterator[str]:
    """Yield the base URL to use: a fresh in-process mock's with --mock, else ``base_url``."""
    if mock is None:
        yield base_url
        return
    from .mock import MockServer

    async with MockServer(mock) as server:
        yield server.base_url


async def _run(
    args: argparse.Namespace,
    config: RunConfig,
    result: ScanResult,
    mock: MockOptions | None,
    reporter: Reporter,
    caps: Capabilities,
) -> Summary:
    loop = asyncio.get_running_loop()
    runs: list[Run] = []

    def on_start(run: Run) -> None:
        runs.append(run)
        reporter.attach(run)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            reporter.tick()

    def on_signal() -> None:
        if not runs or runs[0].stopping:
            _err("Interrupted again: exiting now.")
            os._exit(EXIT_INTERRUPTED)
        runs[0].stop()
        _err(
            f"Stopping: no new jobs; jobs in flight get {config.grace:g}s to finish "
            "(press Ctrl-C again to exit at once)."
        )

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
    reporter.start()
    tick_task = asyncio.create_task(ticker())
    try:
        async with _endpoint(mock, config.base_url) as base_url:
            config = replace(config, base_url=base_url)
            jobs = iter_jobs(args.jobs, result, defaults=_defaults(args), caps=caps)
            policy = RetryPolicy(
                max_attempts=config.max_attempts,
                max_retry_wait=args.max_retry_wait,
                max_billed_retries=args.max_billed_retries,
            )
            return await run_batch(
                config,
                jobs,
                policy=policy,
                observer=reporter,
                on_start=on_start,
                resume=not args.force,
                verify=args.verify,
                prune=args.prune,
            )
    finally:
        tick_task.cancel()
        reporter.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


def _exit_code(summary: Summary) -> int:
    if summary.aborted:
        return EXIT_ABORTED
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.failed or summary.invalid or summary.not_run:
        return EXIT_FAILED
    return EXIT_OK


def _main_command(argv: Sequence[str]) -> int:
    args = _build_parser().parse_args(argv)
    console = make_console(sys.stderr)
    setup_logging(console, quiet=args.quiet, verbose=args.verbose, fmt=args.log_format)
    try:
        base_url, key = _resolve_endpoint(args)
        _check_network(args)
        mock = _mock_options(args) if args.mock else None
        caps = _capabilities(args)
    except UsageError as exc:
        _err(f"pmock-batch: error: {exc}")
        return EXIT_USAGE
    if not args.jobs.is_file():
        _err(f"pmock-batch: error: {args.jobs}: no such file")
        return EXIT_USAGE
    defaults = _defaults(args)
    result = scan(args.jobs, defaults=defaults, caps=caps)
    for warning in result.warnings:
        log.warning("%s", warning)
    out_dir = args.out or Path("out") / args.jobs.stem
    if result.invalid and not args.skip_invalid:
        _print_problems(result)
        return EXIT_USAGE
    if args.dry_run:
        try:  # as the run would: a linked manifest is never read
            check_own_file(out_dir, MANIFEST_NAME)
        except OutputPathError as exc:
            _err(f"pmock-batch: error: {exc}; nothing was sent")
            return EXIT_USAGE
        _print_plan(result, args, out_dir, caps)
        return EXIT_OK
    config = RunConfig(
        out_dir=out_dir,
        base_url=base_url,
        api_key=key,
        concurrency=args.concurrency,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        max_attempts=args.max_attempts,
        grace=args.grace,
        rpm=args.rpm,
        field_case=args.field_case,
        api_key_env=args.api_key_env,
        headers=args.header,
        proxy=args.proxy,
        ca_bundle=args.ca_bundle,
        trust_env=not args.mock,
    )
    if args.quiet:
        mode = "none"
    elif console.is_terminal and args.log_format == "text":
        mode = "bar"
    else:
        mode = "lines"
    total = result.jobs + (len(result.invalid) if args.skip_invalid else 0)
    reporter = Reporter(console, total=total, mode=mode)
    try:
        summary = asyncio.run(_run(args, config, result, mock, reporter, caps))
    except LockedError as exc:
        _err(f"pmock-batch: {exc}")
        return EXIT_LOCKED
    except OutputPathError as exc:  # the manifest is a link: nothing could be recorded
        _err(f"pmock-batch: error: {exc}; nothing was sent")
        return EXIT_USAGE
    except OSError as exc:  # the output directory itself is unusable
        _err(
            f"pmock-batch: run aborted: cannot use the output directory {config.out_dir}: "
            f"{exc}. Check that it is a writable directory with free space."
        )
        return EXIT_ABORTED
    code = _exit_code(summary)
    render_summary(summary, config, console)
    if args.json:
        print(json.dumps(summary_json(summary, config, exit_code=code)))
    return code


def _validate_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pmock-batch validate",
        description="Check a job file without sending anything. Exit 0 if valid, 2 if not.",
    )
    parser.add_argument("jobs", type=Path, metavar="JOBS", help="the JSONL job file")
    _add_request_defaults(parser)
    args = parser.parse_args(argv)
    if not args.jobs.is_file():
        _err(f"pmock-batch: error: {args.jobs}: no such file")
        return EXIT_USAGE
    try:
        caps = _capabilities(args)
    except UsageError as exc:
        _err(f"pmock-batch: error: {exc}")
        return EXIT_USAGE
    result = scan(args.jobs, defaults=_defaults(args), caps=caps)
    for warning in result.warnings:
        _err(f"warning: {warning}")
    if result.invalid:
        _print_problems(result)
        return EXIT_USAGE
    _err(f"{args.jobs}: {result.jobs} job(s), {result.images} image(s): all valid.")
    return EXIT_OK


def _report_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pmock-batch report",
        description="Regenerate OUT/report.html from OUT/manifest.jsonl alone.",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="the output directory of a run")
    parser.add_argument(
        "--thumbnails",
        action="store_true",
        help="also make small JPEG thumbnails under OUT/.thumbs/ (default: full images, lazily)",
    )
    args = parser.parse_args(argv)
    if not (args.out / MANIFEST_NAME).is_file():
        _err(f"pmock-batch report: error: no {MANIFEST_NAME} in {args.out}")
        return EXIT_USAGE
    try:
        with run_lock(args.out):
            path = write_report(args.out, thumbnails=args.thumbnails)
    except LockedError as exc:
        _err(f"pmock-batch report: {exc}")
        return EXIT_LOCKED
    except (UsageError, OutputPathError, OSError, ValueError) as exc:
        _err(f"pmock-batch report: error: {exc}")
        return EXIT_USAGE
    _err(f"Wrote {path}")
    return EXIT_OK


def _mock_server_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pmock-batch mock-server",
        description="Run the built-in OpenAI-compatible image mock server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    _add_mock_options(parser, prefix="", title="behaviour")
    args = parser.parse_args(argv)
    try:
        options = _mock_options(args)
    except UsageError as exc:
        _err(f"pmock-batch mock-server: error: {exc}")
        return EXIT_USAGE

    def ready(url: str) -> None:
        _err(f"pmock-batch mock server listening on {url} (base URL {url}/v1); Ctrl-C stops it")

    from .mock import serve

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(options, host=args.host, port=args.port, on_ready=ready))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pmock-batch`` console script. Returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "mock-server":
            return _mock_server_command(args[1:])
        if args and args[0] == "validate":
            return _validate_command(args[1:])
        if args and args[0] == "report":
            return _report_command(args[1:])
        return _main_command(args)
    except SystemExit as exc:  # argparse: --help exits 0, a bad flag exits 2
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except BrokenPipeError:  # `pmock-batch JOBS --dry-run | head`: the reader has gone
        _quiet_stdout()
        return EXIT_OK


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
