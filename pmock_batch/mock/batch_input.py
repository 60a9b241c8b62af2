"""A batch's input: its lines read and checked the way the real API checks them, its
metadata, and the outcome each row gets when it runs (decided when the batch is created).

An ``/v1/images/edits`` line has the JSON form: ``images``, a list of 1 to 16
``{"file_id"}`` naming uploaded files (``image_url`` is not served by the mock),
and an optional ``mask: {"file_id"}``. Its shape is checked with the line; the
ids are looked up when the batch is created, and a row naming a file the mock
does not hold fails on its own (a 400 in the error file), as the real API's would.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from ..inputs import MAX_IMAGES
from ..models import ImageRequest
from .edits import EditForm, check_files, stored_form
from .faults import OK, Outcome, pick_outcome
from .files import FileStore
from .options import MockOptions
from .responses import error_body, moderation_body, outcome_error, status_error
from .validation import Rejection, parse_request

__all__ = [
    "BATCH_ENDPOINTS",
    "EDIT_ENDPOINT",
    "MAX_BATCH_ROWS",
    "EditRefs",
    "InputProblem",
    "ParsedInput",
    "Row",
    "check_metadata",
    "decide_row",
    "edit_of",
    "parse_input",
]

EDIT_ENDPOINT = "/v1/images/edits"
BATCH_ENDPOINTS = ("/v1/images/generations", EDIT_ENDPOINT)  # what the mock runs
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
    edit: EditForm | None = None  # an edit's inputs, from the files its line names

    @property
    def failed(self) -> bool:
        """Whether the row ends in the error file when it runs."""
        return self.error is not None

    @property
    def status_code(self) -> int:
        """The ``response.status_code`` of its line."""
        return (self.outcome.status or 500) if self.failed else 200


@dataclass(frozen=True, slots=True)
class EditRefs:
    """The files an edit line names: its images' ids and its mask's."""

    images: tuple[str, ...]
    mask: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedInput:
    """An input file read: its requests, or every problem found."""

    # (custom_id, request, an edit's files or None), in order
    requests: tuple[tuple[str, ImageRequest, EditRefs | None], ...]
    problems: tuple[InputProblem, ...]
    model: str | None


def parse_input(data: bytes, *, endpoint: str, dialect: str) -> ParsedInput:
    """Check every line of an input file as the real API does (``errors.data`` codes:
    ``invalid_json_line``, ``missing_required_parameter``, ``duplicate_custom_id``,
    ``invalid_method``, ``url_mismatch``, the body's 400 code, ``model_mismatch``,
    ``empty_file``, ``too_many_tasks``)."""
    problems: list[InputProblem] = []
    requests: list[tuple[str, ImageRequest, EditRefs | None]] = []
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
        custom_id, request, refs = parsed
        if model is None:
            model, model_line = request.model, number
        elif request.model != model:
            message = (
                f"The model {request.model!r} on line {number} does not match the model "
                f"{model!r} of line {model_line}: all the requests of a batch must use one model."
            )
            problems.append(InputProblem("model_mismatch", message, number, "body.model"))
            continue
        requests.append((custom_id, request, refs))
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
) -> tuple[InputProblem | None, tuple[str, ImageRequest, EditRefs | None] | None]:
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
    body, refs = line["body"], None
    if endpoint == EDIT_ENDPOINT and isinstance(body, dict):
        found = _edit_refs(body, number)
        if isinstance(found, InputProblem):
            return found, None
        refs, body = found, {k: v for k, v in body.items() if k not in ("images", "mask")}
    parsed = parse_request(body, dialect=dialect, edit=refs is not None)
    if isinstance(parsed, Rejection):
        param = f"body.{parsed.param}" if parsed.param else "body"
        return InputProblem(parsed.code or "invalid_request", parsed.message, number, param), None
    return None, (custom_id, parsed, refs)


def _file_id(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("file_id"), str) and value["file_id"]:
        return str(value["file_id"])
    return None


def _edit_refs(body: dict[str, Any], number: int) -> EditRefs | InputProblem:
    """The files an edit line names, or why its ``images`` or ``mask`` is refused."""
    images = body.get("images")
    if images is None:
        message = "Missing required parameter: 'images'."
        return InputProblem("missing_required_parameter", message, number, "body.images")
    ids = [_file_id(item) for item in images] if isinstance(images, list) else []
    if not 1 <= len(ids) <= MAX_IMAGES or None in ids:
        message = (
            f"Invalid 'images': expected a list of 1 to {MAX_IMAGES} objects, each with a "
            "'file_id' (the mock does not fetch 'image_url')."
        )
        return InputProblem("invalid_value", message, number, "body.images")
    mask = body.get("mask")
    mask_id = _file_id(mask) if mask is not None else None
    if mask is not None and mask_id is None:
        message = "Invalid 'mask': expected an object with a 'file_id'."
        return InputProblem("invalid_value", message, number, "body.mask")
    return EditRefs(tuple(i for i in ids if i is not None), mask_id)


def edit_of(refs: EditRefs, files: FileStore) -> EditForm | dict[str, Any]:
    """An edit row's inputs from the files it names, or the error body of its 400."""
    named: list[tuple[str, bytes]] = []
    for file_id in (*refs.images, *([refs.mask] if refs.mask else [])):
        stored = files.get(file_id)
        if stored is None or stored.data is None:
            param = "mask" if file_id == refs.mask else "images"
            message = f"Invalid 'file_id': no file found with id {file_id!r}."
            return error_body(message, param=param, code="invalid_value")
        named.append((stored.filename, stored.data))
    form = stored_form(named[: len(refs.images)], named[-1] if refs.mask else None)
    rejected = check_files(form)
    if rejected is not None:
        return error_body(rejected.message, param=rejected.param, code=rejected.code)
    return form


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
