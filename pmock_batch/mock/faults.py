"""Outcomes the mock can give a request, and how it picks one.

An outcome is named by a short string, the same in a script, in a fault-rate
table and in the stats:

``ok``
    a 200 with a real image.
``drop``
    the connection is closed without a response.
``truncate``
    a 200 whose ``Content-Length`` promises the whole body, but only part is sent.
``corrupt``
    a 200 whose ``b64_json`` is valid base64 of a broken (cut-off) image.
``bad_base64``
    a 200 whose ``b64_json`` is not base64 at all.
``bomb``
    a 200 whose image is a whole, well-formed PNG whose header claims
    40,000 x 40,000 pixels: a decompression bomb, which Pillow refuses to open.
``hang``
    no answer until ``hang_seconds`` pass (or the server stops), then a drop.
    A streamed answer sends its partial images first, then hangs.
``stream_cut:K``
    a streamed answer (``stream: true``) is cut after K partial images, before
    the image; an answer that is not streamed is dropped.
``stream_error``
    a streamed answer sends its partial images, then an ``error`` event and
    ends; an answer that is not streamed gets a 500.
``padded_json``
    a 200 whose JSON comes after ``padding_bytes`` of whitespace (valid JSON).
``gzip_bomb``
    the same, gzip-encoded (``Content-Encoding: gzip``): a small body on the
    wire that expands to ``padding_bytes`` and more.
``bad_shape``
    a 200 that is JSON but not an images response (``created`` is text).
``url``
    a 200 whose image is a URL, whatever ``response_format`` asked for.
``quota``
    a 429 with code ``insufficient_quota`` (retrying does not help).
``moderation``
    a 400 with code ``moderation_blocked``.
``STATUS`` or ``STATUS:SECONDS``
    an HTTP error status from 400 to 599 in OpenAI's error shape, such as
    ``500``, ``503`` or ``429``; ``SECONDS`` sets ``Retry-After`` (``429:2.5``).
    A ``429`` without it carries the server's default ``retry_after``.

A script maps a prompt (or ``*`` for every prompt) to outcomes by attempt
number: attempt *k* of that prompt gets entry *k*; after the script runs out
the outcome is ``ok``. Prompts without a script draw from the fault rates.

The GETs of an image made for ``response_format: url`` follow their own
script (:func:`check_download_script`), by attempt for each file: ``ok``,
``drop``, ``truncate`` (the file cut in half) or an error ``STATUS``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DOWNLOAD_OUTCOMES",
    "NAMED_OUTCOMES",
    "WILDCARD",
    "Outcome",
    "check_download_script",
    "check_fault_rates",
    "check_script",
    "load_script",
    "parse_fault_rates",
    "parse_outcome",
    "parse_script",
    "pick_outcome",
]

WILDCARD = "*"
NAMED_OUTCOMES = (
    "ok",
    "drop",
    "truncate",
    "corrupt",
    "bad_base64",
    "bomb",
    "hang",
    "quota",
    "moderation",
    "padded_json",
    "gzip_bomb",
    "bad_shape",
    "url",
    "stream_error",
)
DOWNLOAD_OUTCOMES = ("ok", "drop", "truncate")  # or a plain STATUS


@dataclass(frozen=True, slots=True)
class Outcome:
    """One parsed outcome: ``name`` is its stats key (``"429"`` for ``"429:2.5"``)."""

    name: str
    status: int | None = None  # the HTTP status for error outcomes
    retry_after: float | None = None  # seconds, from ``STATUS:SECONDS``
    after: int | None = None  # partial images sent before a ``stream_cut:K``

    @property
    def is_http_error(self) -> bool:
        """True for plain ``STATUS`` outcomes (not ``quota`` or ``moderation``)."""
        return self.name.isdigit()


OK = Outcome("ok")


def parse_outcome(text: str) -> Outcome:
    """Parse one outcome such as ``ok``, ``drop``, ``500`` or ``429:2.5``.

    Raises ``ValueError`` with a readable message when it is not one.
    """
    word = str(text).strip().lower()
    if word in NAMED_OUTCOMES:
        if word == "quota":
            return Outcome("quota", status=429)
        if word == "moderation":
            return Outcome("moderation", status=400)
        if word == "stream_error":
            return Outcome("stream_error", status=500)
        return OK if word == "ok" else Outcome(word)
    code, sep, wait = word.partition(":")
    if code == "stream_cut":
        if sep and not (wait.isdigit() and int(wait) <= 3):
            raise ValueError(f"outcome {text!r}: K must be a whole number from 0 to 3")
        return Outcome("stream_cut", after=int(wait) if sep else 0)
    if not code.isdigit():
        known = ", ".join(NAMED_OUTCOMES)
        raise ValueError(
            f"unknown outcome {text!r}; use one of {known}, stream_cut:K, or a status like 500"
        )
    status = int(code)
    if status == 200 and not sep:
        return OK
    if not 400 <= status <= 599:
        raise ValueError(f"outcome {text!r}: a status must be 200 or from 400 to 599")
    retry_after: float | None = None
    if sep:
        try:
            retry_after = float(wait)
        except ValueError:
            raise ValueError(f"outcome {text!r}: {wait!r} is not a number of seconds") from None
        if not math.isfinite(retry_after) or retry_after < 0:
            raise ValueError(f"outcome {text!r}: the wait must be a finite number >= 0")
    return Outcome(str(status), status=status, retry_after=retry_after)


def parse_fault_rates(text: str) -> dict[str, float]:
    """Parse ``"500=0.1,drop=0.05"`` into ``{"500": 0.1, "drop": 0.05}``.

    Each kind is an outcome other than ``ok``; each rate is from 0 to 1 and
    together they add up to at most 1. An empty string gives ``{}``.
    """
    rates: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"fault rate {item!r}: expected KIND=RATE, such as 500=0.1")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"fault rate {item!r}: {value.strip()!r} is not a number") from None
        key = kind.strip()
        if key in rates:
            raise ValueError(f"fault rate {key!r} is given twice")
        rates[key] = rate
    return check_fault_rates(rates)


def check_fault_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """Validate a fault-rate table; return it as a plain dict of canonical kinds."""
    out: dict[str, float] = {}
    for kind, rate in rates.items():
        if parse_outcome(kind).name == "ok":
            raise ValueError("fault rates cannot include 'ok'; it is what is left over")
        if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate for {kind!r} must be a number from 0 to 1, not {rate!r}")
        out[str(kind).strip().lower()] = float(rate)
    total = sum(out.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault rates add up to {total:g}; they must add up to at most 1")
    return out


def parse_script(specs: str | Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Parse script specs such as ``"a red fox=500,drop,ok"`` or ``"*=429:2"``.

    Each spec is ``PROMPT=OUTCOME,OUTCOME,...``, split at the last ``=``; a spec
    that starts with ``{`` is read as a JSON object instead (see
    :func:`load_script`). Several specs may be given; a prompt given twice is
    an error.
    """
    items = [specs] if isinstance(specs, str) else list(specs)
    script: dict[str, tuple[str, ...]] = {}
    for spec in items:
        if spec.lstrip().startswith("{"):
            part = _script_from_json(spec, "script")
        else:
            key, sep, steps = spec.rpartition("=")
            if not sep or not key:
                raise ValueError(
                    f"script {spec!r}: expected PROMPT=OUTCOME,..., such as '*=500,ok'"
                )
            part = {key: tuple(o.strip() for o in steps.split(",") if o.strip())}
        for prompt, outcomes in part.items():
            if prompt in script:
                raise ValueError(f"script: prompt {prompt!r} is given twice")
            script[prompt] = outcomes
    return check_script(script)


def load_script(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read a script from a JSON file: ``{"a red fox": ["500", "ok"], "*": ["429:2"]}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read script file {str(path)!r}: {exc.strerror}") from exc
    return check_script(_script_from_json(text, str(path)))


def _script_from_json(text: str, where: str) -> dict[str, tuple[str, ...]]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object mapping prompts to lists of outcomes")
    script: dict[str, tuple[str, ...]] = {}
    for prompt, outcomes in raw.items():
        if not isinstance(outcomes, list) or not all(
            isinstance(o, str | int) and not isinstance(o, bool) for o in outcomes
        ):
            raise ValueError(f"{where}: the outcomes of {prompt!r} must be a list of strings")
        script[prompt] = tuple(str(o) for o in outcomes)
    return script


def check_script(script: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Validate a script; return it as a plain dict of outcome tuples."""
    out: dict[str, tuple[str, ...]] = {}
    for prompt, outcomes in script.items():
        if isinstance(outcomes, str):
            raise ValueError(f"script for {prompt!r}: expected a list of outcomes, not a string")
        for outcome in outcomes:
            try:
                parse_outcome(outcome)
            except ValueError as exc:
                raise ValueError(f"script for {prompt!r}: {exc}") from None
        out[str(prompt)] = tuple(str(o).strip() for o in outcomes)
    return out


def check_download_script(outcomes: Sequence[str] | str) -> tuple[str, ...]:
    """Validate the outcomes of each image file's GETs, by attempt: ``ok, drop, truncate, 500``.

    A string is split at commas (the CLI's form).
    """
    items = outcomes.split(",") if isinstance(outcomes, str) else list(outcomes)
    out: list[str] = []
    for item in (str(o).strip() for o in items):
        if not item:
            continue
        outcome = parse_outcome(item)
        if outcome.name not in DOWNLOAD_OUTCOMES and not outcome.is_http_error:
            known = ", ".join(DOWNLOAD_OUTCOMES)
            raise ValueError(f"download outcome {item!r}: use one of {known}, or a status")
        out.append(outcome.name)
    return tuple(out)


def pick_outcome(
    *,
    prompt: str,
    attempt: int,
    script: Mapping[str, Sequence[str]],
    fault_rates: Mapping[str, float],
    rng: random.Random,
) -> Outcome:
    """The outcome of attempt ``attempt`` (1-based) of ``prompt``.

    A script for the prompt, or else for ``*``, decides alone. Otherwise one
    draw from ``rng`` is compared with the cumulative fault rates.
    """
    steps = script.get(prompt, script.get(WILDCARD))
    if steps is not None:
        return parse_outcome(steps[attempt - 1]) if 0 < attempt <= len(steps) else OK
    if not fault_rates:
        return OK
    draw = rng.random()
    edge = 0.0
    for kind, rate in fault_rates.items():
        edge += rate
        if draw < edge:
            return parse_outcome(kind)
    return OK
