"""A batch's input: its lines read and checked the way the real API checks them, its
metadata, and the outcome each row gets when it runs (decided when the batch is created)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from ..models import ImageRequest
from .faults import OK, Outcome, pick_outcome
from .options import MockOptions
from .responses import moderation_body, outcome_error, status_error
from .validation import Rejection, parse_request

__all__ = [
    "BATCH_ENDPOINTS",
    "MAX_BATCH_ROWS",
    "InputProblem",
    "ParsedInput",
    "Row",
    "check_metadata",
    "decide_row",
    "parse_input",
]

BATCH_ENDPOINTS = ("/v1/images/generations",)  # what the mock runs; edits are refused
MAX_BATCH_ROWS = 50_000
MAX_LISTED_ERRORS = 100  # validation errors a failed batch lists
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
ROW_OUTCOMES_THAT_CHANGE_THE_BODY = ("corrupt", "bad_base64", "bomb", "bad_shape", "url")


@dataclass(frozen=True, slots=True)
class InputProblem:
    """One reason an input file is invalid: an entry of the batch's ``errors.data``."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "line": self.line, "message": self.message, "param": self.param}


@dataclass(frozen=True, slots=True)
class Row:
    """One request of a batch, with the outcome it gets when it runs."""

    index: int  # 0-based, in input order
    custom_id: str
    request: ImageRequest
    outcome: Outcome = OK
    error: dict[str, Any] | None = None  # the error body, when the row fails

    @property
    def failed(self) -> bool:
        """Whether the row ends in the error file when it runs."""
        return self.error is not None

    @property
    def status_code(self) -> int:
        """The ``response.status_code`` of its line."""
        return (self.outcome.status or 500) if self.failed else 200


@dataclass(frozen=True, slots=True)
class ParsedInput:
    """An input file read: its requests, or every problem found."""

    requests: tuple[tuple[str, ImageRequest], ...]  # (custom_id, request), in order
    problems: tuple[InputProblem, ...]
    model: str | None


def parse_input(data: bytes, *, endpoint: str, dialect: str) -> ParsedInput:
    """Check every line of an input file as the real API does (``errors.data`` codes:
    ``invalid_json_line``, ``missing_required_parameter``, ``duplicate_custom_id``,
    ``invalid_method``, ``url_mismatch``, the body's 400 code, ``model_mismatch``,
    ``empty_file``, ``too_many_tasks``)."""
    problems: list[InputProblem] = []
    requests: list[tuple[str, ImageRequest]] = []
    seen: set[str] = set()
    model: str | None = None
    model_line = 0
    lines = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        lines += 1
        problem, parsed = _parse_line(raw, number, endpoint=endpoint, dialect=dialect, seen=seen)
        if problem is not None:
            problems.append(problem)
            continue
        assert parsed is not None
        custom_id, request = parsed
        if model is None:
            model, model_line = request.model, number
        elif request.model != model:
            message = (
                f"The model {request.model!r} on line {number} does not match the model "
                f"{model!r} of line {model_line}: all the requests of a batch must use one model."
            )
            problems.append(InputProblem("model_mismatch", message, number, "body.model"))
            continue
        requests.append((custom_id, request))
    if lines == 0:
        problems.append(InputProblem("empty_file", "The batch input file is empty."))
    elif lines > MAX_BATCH_ROWS:
        message = f"The input file has {lines} requests; a batch holds at most {MAX_BATCH_ROWS}."
        problems.append(InputProblem("too_many_tasks", message))
    if problems:
        return ParsedInput((), tuple(problems[:MAX_LISTED_ERRORS]), None)
    return ParsedInput(tuple(requests), (), model)


def _parse_line(
    raw: bytes, number: int, *, endpoint: str, dialect: str, seen: set[str]
) -> tuple[InputProblem | None, tuple[str, ImageRequest] | None]:
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):
        line = None
    if not isinstance(line, dict):
        message = "This line is not parseable as valid JSON."
        return InputProblem("invalid_json_line", message, number), None
    for name in ("custom_id", "method", "url", "body"):
        if name not in line:
            message = f"Missing required parameter: {name!r}."
            return InputProblem("missing_required_parameter", message, number, name), None
    custom_id = line["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        message = "The custom_id must be a non-empty string."
        return InputProblem("invalid_custom_id", message, number, "custom_id"), None
    if custom_id in seen:
        message = (
            f"The custom_id {custom_id!r} is a duplicate of another request's: "
            "the custom_id must be unique for each request in a batch."
        )
        return InputProblem("duplicate_custom_id", message, number, "custom_id"), None
    seen.add(custom_id)
    if line["method"] != "POST":
        message = f"The method {line['method']!r} is not supported: batch requests use POST."
        return InputProblem("invalid_method", message, number, "method"), None
    if line["url"] != endpoint:
        message = f"The URL {line['url']!r} does not match the batch's endpoint {endpoint!r}."
        return InputProblem("url_mismatch", message, number, "url"), None
    parsed = parse_request(line["body"], dialect=dialect)
    if isinstance(parsed, Rejection):
        param = f"body.{parsed.param}" if parsed.param else "body"
        return InputProblem(parsed.code or "invalid_request", parsed.message, number, param), None
    return None, (custom_id, parsed)


def check_metadata(value: Any) -> dict[str, str] | None:
    """The metadata of a new batch (None when absent); ValueError when it breaks the rules."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("metadata must be an object of string keys and string values.")
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"metadata holds at most {MAX_METADATA_PAIRS} pairs, not {len(value)}.")
    for key, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"metadata[{key!r}] must be a string.")
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"metadata keys are at most {MAX_METADATA_KEY} characters long.")
        if len(item) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata values are at most {MAX_METADATA_VALUE} characters long.")
    return dict(value)


def decide_row(
    index: int,
    custom_id: str,
    request: ImageRequest,
    *,
    options: MockOptions,
    attempt: int,
    rng: random.Random,
) -> Row:
    """The row and the outcome it gets when it runs (see the module docstring)."""
    if index < options.batch_fail_rows:
        outcome = Outcome("500", status=500)
        return Row(index, custom_id, request, outcome, status_error(500))
    if any(word in request.prompt.lower() for word in options.moderation_words):
        return Row(index, custom_id, request, Outcome("moderation", 400), moderation_body())
    outcome = pick_outcome(
        prompt=request.prompt,
        attempt=attempt,
        script=options.script,
        fault_rates=options.fault_rates,
        rng=rng,
    )
    error = outcome_error(outcome)
    if error is not None:
        return Row(index, custom_id, request, outcome, error)
    if outcome.name not in ROW_OUTCOMES_THAT_CHANGE_THE_BODY:
        outcome = OK
    return Row(index, custom_id, request, outcome)
