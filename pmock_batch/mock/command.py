"""The mock's command-line flags, declared once for both of their spellings.

``pmock-batch mock-server --latency 0.2`` and ``pmock-batch JOBS --mock
--mock-latency 0.2`` take the same flags: :func:`mock_flags` adds them to a
Click command with a prefix, each stored under ``mock_<name>`` either way, and
:func:`mock_options` turns those values into :class:`MockOptions`. The main
command hides its copies; ``pmock-batch mock-server --help`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click
import rich_click

from .faults import load_script, parse_fault_rates, parse_script
from .options import (
    DEFAULT_BATCH_CANCEL_DELAY,
    DEFAULT_BATCH_SECONDS,
    DEFAULT_RETRY_AFTER,
    MockOptions,
)
from .ratelimit import LIMITER_KINDS
from .validation import DIALECTS

__all__ = ["MOCK_FLAGS", "mock_flags", "mock_options"]

F = TypeVar("F", bound=Callable[..., Any])
_POSITIVE_INT = click.IntRange(min=1)
_POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)


def _converted(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A Click callback that parses the flag's text, one value or each of a repeated flag."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            if isinstance(value, tuple):
                return tuple(parse(v) for v in value)
            return None if value is None else parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc

    return callback


# name -> Click option settings; "{p}" in a help text is the flag prefix ("mock-" or "").
MOCK_FLAGS: dict[str, dict[str, Any]] = {
    "latency": dict(type=float, default=0.0, metavar="S", help="delay per response (default: 0)"),
    "latency-jitter": dict(
        type=float, default=0.0, metavar="S", help="up to this much random extra delay (default: 0)"
    ),
    "fault-rate": dict(
        default=None,
        metavar="KIND=P,...",
        callback=_converted(parse_fault_rates),
        help="random faults, e.g. 500=0.1,503=0.05,429=0.1,drop=0.05,truncate=0.05,"
        "corrupt=0.05,hang=0.01 (default: none)",
    ),
    "seed": dict(
        type=int, default=None, metavar="N", help="seed for faults and jitter (default: random)"
    ),
    "script": dict(
        multiple=True,
        metavar="PROMPT=OUTCOME,...",
        callback=_converted(parse_script),
        help="scripted outcomes by attempt for a prompt ('*' for all), e.g. 'a cat=500,drop,ok'; "
        "repeatable (default: none)",
    ),
    "script-file": dict(
        default=None,
        metavar="FILE",
        callback=_converted(load_script),
        help='scripted outcomes as JSON: {"a cat": ["500", "ok"]} (default: none)',
    ),
    "retry-after": dict(
        type=float,
        default=DEFAULT_RETRY_AFTER,
        metavar="S",
        help=f"Retry-After of a 429 fault (default: {DEFAULT_RETRY_AFTER:g})",
    ),
    "rpm": dict(
        type=_POSITIVE_INT,
        default=None,
        metavar="N",
        help="requests-per-minute limit (default: none)",
    ),
    "limiter": dict(
        type=click.Choice(LIMITER_KINDS),
        default="window",
        help="how --{p}rpm is enforced: a sliding minute with 1 s quanta, or a token bucket "
        "refilled continuously (default: window)",
    ),
    "burst": dict(
        type=_POSITIVE_INT,
        default=None,
        metavar="N",
        help="the bucket's capacity (default: one second's worth of --{p}rpm)",
    ),
    "require-key": dict(
        default=None, metavar="KEY", help="answer 401 unless this bearer key (default: none)"
    ),
    "moderation-word": dict(
        multiple=True,
        metavar="WORD",
        help="prompts with this word get moderation_blocked; repeatable (default: none)",
    ),
    "payload-mb": dict(
        type=_POSITIVE_FLOAT, default=None, metavar="MB", help="pad images to ~MB (default: off)"
    ),
    "image-px": dict(
        type=_POSITIVE_INT,
        default=None,
        metavar="N",
        help="draw every image N x N pixels, whatever size was asked (default: as asked)",
    ),
    "trailing-bytes": dict(
        type=click.IntRange(min=0),
        default=0,
        metavar="N",
        help="append N bytes after each image's end (PNG IEND, JPEG EOI, WebP RIFF) (default: 0)",
    ),
    "download-script": dict(
        default="",
        metavar="OUTCOME,...",
        help="outcomes of each url image's GETs by attempt, e.g. '500,drop,truncate' "
        "(default: all ok)",
    ),
    "partial-delay": dict(
        type=click.FloatRange(min=0),
        default=0.0,
        metavar="S",
        help="seconds before each event of a streamed answer (stream: true) (default: 0)",
    ),
    "revised-prompt": dict(is_flag=True, help="add a revised_prompt to every image (default: off)"),
    "dialect": dict(
        type=click.Choice(DIALECTS),
        default="pmock",
        help="pmock: pmock's documented rules, one set for every model; openai: the real "
        "API's rules per model, from the capability table (400 unknown_parameter, n up to "
        "10, gpt-image-2 sizes) (default: pmock)",
    ),
    "batch-seconds": dict(
        type=click.FloatRange(min=0),
        default=DEFAULT_BATCH_SECONDS,
        metavar="S",
        help="Batch API: a batch's time from validating to completed "
        f"(default: {DEFAULT_BATCH_SECONDS:g})",
    ),
    "batch-expire-after-fraction": dict(
        type=click.FloatRange(min=0, max=1),
        default=None,
        metavar="F",
        help="Batch API: every batch expires with this fraction of its rows done (default: none)",
    ),
    "batch-fail-rows": dict(
        type=click.IntRange(min=0),
        default=0,
        metavar="K",
        help="Batch API: the first K rows of each batch end in its error file (default: 0)",
    ),
    "batch-cancel-delay": dict(
        type=click.FloatRange(min=0),
        default=DEFAULT_BATCH_CANCEL_DELAY,
        metavar="S",
        help="Batch API: time a cancelled batch spends cancelling "
        f"(default: {DEFAULT_BATCH_CANCEL_DELAY:g})",
    ),
}


def mock_flags(*, prefix: str, hidden: bool = False, panel: str | None = None) -> Callable[[F], F]:
    """Add the mock's flags to a Click command, as ``--{prefix}NAME`` with dest ``mock_NAME``."""

    def decorate(command: F) -> F:
        for name, settings in reversed(MOCK_FLAGS.items()):
            settings = {**settings, "help": settings["help"].replace("{p}", prefix)}
            dest = "mock_" + name.replace("-", "_")
            option = rich_click.option(
                f"--{prefix}{name}", dest, hidden=hidden, panel=panel, **settings
            )
            command = option(command)
        return command

    return decorate


def mock_options(params: Mapping[str, Any]) -> MockOptions:
    """The mock's options from the flags' values (``mock_*`` keys). Raises ValueError."""
    script: dict[str, tuple[str, ...]] = {}
    for part in [*params["mock_script"], params["mock_script_file"] or {}]:
        script.update(part)
    return MockOptions(
        latency=params["mock_latency"],
        latency_jitter=params["mock_latency_jitter"],
        fault_rates=params["mock_fault_rate"] or {},
        seed=params["mock_seed"],
        script=script,
        retry_after=params["mock_retry_after"],
        rpm=params["mock_rpm"],
        limiter=params["mock_limiter"],
        burst=params["mock_burst"],
        require_key=params["mock_require_key"],
        moderation_words=tuple(params["mock_moderation_word"]),
        payload_mb=params["mock_payload_mb"],
        revised_prompt=params["mock_revised_prompt"],
        image_px=params["mock_image_px"],
        dialect=params["mock_dialect"],
        trailing_bytes=params["mock_trailing_bytes"],
        download_script=params["mock_download_script"],
        partial_delay=params["mock_partial_delay"],
        batch_seconds=params["mock_batch_seconds"],
        batch_expire_after_fraction=params["mock_batch_expire_after_fraction"],
        batch_fail_rows=params["mock_batch_fail_rows"],
        batch_cancel_delay=params["mock_batch_cancel_delay"],
    )
