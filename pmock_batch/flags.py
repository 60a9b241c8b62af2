"""The run command's flags: their help groups, types, and defaults as the help states them.

Each group is an ``option()`` maker (:func:`panel`) that appends "(default: X)"
once per flag. ``--help`` shows the common flags; the advanced ones (``more``)
show with ``--help-all`` (:data:`HELP_ALL`). :class:`DefaultGroup` makes
``run`` the default command, so ``pmock-batch JOBS`` keeps working.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import rich_click as rclick

from . import config as cfg
from .models import FORMATS, RESPONSE_FORMATS
from .network import parse_header

__all__ = [
    "ADVANCED",
    "BATCH_FLAGS",
    "CA_ENV",
    "COUNT",
    "FILE",
    "HEADER",
    "HELP_ALL",
    "HELP_STYLE",
    "POSITIVE",
    "POSITIVE_INT",
    "PROXY_ENV",
    "REQUEST_DEFAULTS",
    "RUN_FLAGS",
    "SECONDS",
    "SHARD_FLAGS",
    "DefaultGroup",
    "end",
    "inp",
    "logs",
    "net",
    "out",
    "panel",
    "pool",
    "req",
]

F = TypeVar("F", bound=Callable[..., Any])

ADVANCED: set[str] = set()  # the flags --help leaves out and --help-all shows


def panel(panel: str) -> Callable[..., Callable[[F], F]]:
    """An ``option()`` for one group of ``--help``, which states each flag's default once.

    Without a metavar or a type, the option is an on/off flag, which states no
    default (the command's help says once that flags are off). ``shown`` is
    the default as the help says it, where the value alone would not tell.
    """

    def option(
        name: str,
        metavar: str | None = None,
        kind: Any = None,
        default: Any = None,
        help: str = "",
        *,
        short: str | None = None,
        shown: Any = None,
        more: bool = False,
        **kw: Any,
    ) -> Callable[[F], F]:
        flag = metavar is None and kind is None
        if shown is None and not flag:  # on/off flags are off unless given: said once, above
            shown = f"{default:g}" if isinstance(default, float) else default
        kind = click.Choice(kind) if isinstance(kind, tuple) else kind
        kw |= {"is_flag": True} if flag else {"metavar": metavar, "type": kind, "default": default}
        names = (short, name) if short else (name,)
        said = "" if flag else f" (default: {shown})"
        if more:
            ADVANCED.add(name)
        return rclick.option(*names, panel=panel, help=f"{help}{said}", hidden=more, **kw)

    return option


def _apply(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def decorate(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


def _headers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    try:
        return tuple(parse_header(v) for v in values)
    except ValueError as exc:  # its message never shows the value
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


COUNT, POSITIVE_INT, PERCENT = click.IntRange(min=0), click.IntRange(min=1), click.IntRange(0, 100)


class _Finite(click.FloatRange):
    """A float range that refuses ``inf`` and ``nan``: ``--timeout inf`` would overflow
    asyncio's timers mid-run, and ``nan`` slips through every comparison."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = _Finite(min=0, min_open=True, max=1e6)
SECONDS = _Finite(min=0, max=1e6)
FILE = click.Path(path_type=Path)
DIR = click.Path(path_type=Path, exists=True, file_okay=False)
req, inp, end = panel("Request defaults"), panel("Input"), panel("Endpoint")
net, pool = panel("Network"), panel("Concurrency and retries")
out, logs = panel("Output"), panel("Logging")
HEADER = {"shown": "none", "multiple": True, "callback": _headers}
PROXY_ENV = "$HTTPS_PROXY, $HTTP_PROXY, $NO_PROXY"
CA_ENV = "$SSL_CERT_FILE or the system's"
REQUEST_DEFAULTS = _apply(
    req("--model", "NAME", str, None, "model name", shown=cfg.DEFAULT_MODEL),
    req("--size", "WxH", str, None, "image size", shown="the server's"),
    req("--quality", "Q", str, None, "quality", shown="the server's"),
    req("--output-format", None, FORMATS, None, "image format", shown="png"),
    req("--background", "B", str, None, "background", shown="the server's", more=True),
    req("--moderation", "M", str, None, "moderation", shown="the server's", more=True),
    req(
        "--response-format",
        None,
        RESPONSE_FORMATS,
        None,
        "dall-e-2/3 only",
        shown="not sent",
        more=True,
    ),
    req(
        "--output-compression",
        "0-100",
        PERCENT,
        None,
        "jpeg/webp only",
        shown="the server's",
        more=True,
    ),
    req("--capabilities", "FILE", FILE, None, "your own TOML table", shown="none", more=True),
    inp("--inputs", "DIR", DIR, None, "a folder edits' image files may be in", shown="none"),
    req("--stream", help="stream answers as server-sent events: partial images, then the image"),
)


_batch = panel("Batch API (half price, within 24 h)")
BATCH_FLAGS = _apply(
    _batch("--batch-api", help="send the jobs as Batch API batches, not direct requests"),
    _batch("--batch-size", "N", click.IntRange(1, 50_000), 50_000, "requests per batch", more=True),
    _batch("--poll-interval", "SECONDS", POSITIVE, 30.0, "between status checks", more=True),
    _batch("--no-wait", help="submit and collect what has finished, then exit"),
    _batch("--keep-files", help="keep the batch files on the server", more=True),
)

SHARD_FLAGS = _apply(  # in the Input group: a new group would cost the help two more lines
    inp("--shard", "K/N", str, None, "run only share K of N (0 <= K < N), or auto", shown="all"),
    inp("--shard-count", "N", POSITIVE_INT, None, "N for --shard auto", shown="none", more=True),
)


def _help_all(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Print the help with the advanced flags too, then exit."""
    if not value or ctx.resilient_parsing:
        return
    advanced = [p for p in ctx.command.params if p.opts[-1] in ADVANCED]
    for p in advanced:
        p.hidden = False  # type: ignore[attr-defined]
    try:
        click.echo(ctx.get_help(), color=ctx.color)
    finally:
        for p in advanced:
            p.hidden = True  # type: ignore[attr-defined]
    ctx.exit()


HELP_ALL = rclick.option(
    "--help-all",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_help_all,
    help="Show every flag, the advanced ones too, and exit.",
)

RUN_FLAGS = _apply(  # the run command's, in --help's order
    rclick.argument("jobs", type=FILE, metavar="JOBS", panel="Input", help="the JSONL job file"),
    inp("--skip-invalid", help="run the valid lines, record the others, exit 1"),
    inp("--dry-run", help="validate and print the plan; send nothing"),
    inp("--force", help="redo the jobs a previous run finished too"),
    inp("--prune", help="drop jobs gone from JOBS, and their files"),
    inp("--verify", help="on resume, check SHA-256s, not just sizes"),
    REQUEST_DEFAULTS,
    end("--base-url", "URL", str, None, "base URL", shown=f"${cfg.BASE_URL_ENV} or pmock's"),
    end(
        "--mock",
        help="offline, against a built-in mock: see 'pmock-batch mock-server --help' for its "
        "flags, here with a mock- prefix",
    ),
    end("--field-case", None, ("snake", "camel"), "snake", "JSON field names", more=True),
    end("--timeout", "SECONDS", POSITIVE, cfg.DEFAULT_TIMEOUT, "per request", more=True),
    end(
        "--connect-timeout",
        "SECONDS",
        POSITIVE,
        cfg.DEFAULT_CONNECT_TIMEOUT,
        "to connect",
        more=True,
    ),
    net("--api-key-env", "NAME", str, cfg.API_KEY_ENV, "variable with the API key", more=True),
    net("--header", "'NAME: VALUE'", str, (), "extra API header; repeatable", **HEADER, more=True),
    net("--proxy", "URL", str, None, "'' for none", shown=PROXY_ENV, more=True),
    net("--ca-bundle", "FILE", FILE, None, "CAs to trust, PEM", shown=CA_ENV, more=True),
    pool("--concurrency", "N", POSITIVE_INT, cfg.DEFAULT_CONCURRENCY, "requests in flight"),
    pool("--rpm", "N", POSITIVE, None, "requests per minute", shown="learned"),
    pool(
        "--max-attempts",
        "N",
        POSITIVE_INT,
        cfg.DEFAULT_MAX_ATTEMPTS,
        "attempts per image",
        more=True,
    ),
    pool(
        "--max-billed-retries",
        "N",
        COUNT,
        cfg.DEFAULT_MAX_BILLED_RETRIES,
        "billed retries",
        more=True,
    ),
    pool(
        "--max-retry-wait",
        "SECONDS",
        POSITIVE,
        cfg.DEFAULT_MAX_RETRY_WAIT,
        "longest Retry-After",
        more=True,
    ),
    pool("--grace", "SECONDS", SECONDS, cfg.DEFAULT_GRACE, "after Ctrl-C", more=True),
    pool("--max-images", "N", POSITIVE_INT, None, "billed images, then exit 5", shown="none"),
    pool("--max-cost", "USD", POSITIVE, None, "estimated spend, then exit 5", shown="none"),
    out("--out", "DIR", FILE, None, "output directory", shown="out/<JOBS name>"),
    out("--prices", "FILE", FILE, None, "your own price table, TOML", shown="none", more=True),
    out("--save-partials", help="keep streamed partial images in OUT/.partials/", more=True),
    logs("--quiet", short="-q", help="errors and the summary only"),
    logs("--verbose", short="-v", help="log every attempt, never the key"),
    logs("--log-format", None, ("text", "json"), "text", "json: one object a line", more=True),
    logs("--json", help="the summary as JSON on stdout too"),
    BATCH_FLAGS,
    SHARD_FLAGS,
)

HELP_STYLE = rclick.RichHelpConfiguration(
    theme="slim",
    options_table_help_sections=["help", "required", "deprecated"],
    text_markup="ansi",
    max_width=100,
    enable_theme_env_var=False,
)


class DefaultGroup(rclick.RichGroup):
    """``run`` is the default: ``pmock-batch JOBS`` is ``pmock-batch run JOBS``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] != "--version":
            close = difflib.get_close_matches(args[0], self.commands, n=1)
            if close and not os.path.exists(args[0]):  # `pmock-batch reprot OUT`
                message = f"no such command or file: '{args[0]}'. Did you mean '{close[0]}'?"
                raise click.UsageError(message, ctx)
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # as declared: run first
