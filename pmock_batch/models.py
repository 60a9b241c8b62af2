"""The request model (strict), the response model (lenient) and the manifest record.

The client and the mock server share :class:`ImageRequest`, so what one sends
and the other accepts cannot drift apart.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .config import DEFAULT_MODEL

__all__ = [
    "CAMEL_FIELDS",
    "FIELD_NAMES",
    "FORMATS",
    "MAX_PROMPT_CHARS",
    "RESPONSE_FORMATS",
    "ErrorRecord",
    "FileRecord",
    "ImageData",
    "ImageRequest",
    "ImagesResponse",
    "JobRecord",
    "PartialFile",
    "RejectedFile",
    "describe_errors",
    "did_you_mean",
    "fingerprint",
    "normalize_fields",
    "to_camel",
]

MAX_PROMPT_CHARS = 32_000

OutputFormat = Literal["png", "jpeg", "webp"]  # what the writer can verify and save
ResponseFormat = Literal["url", "b64_json"]  # what the client can receive

FORMATS: tuple[str, ...] = get_args(OutputFormat)
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
_SIZE_TEXT = re.compile(r"(auto|[0-9]{1,5}x[0-9]{1,5})\Z")

COMPRESSIBLE_FORMATS = ("jpeg", "webp")
ALPHA_FORMATS = ("png", "webp")


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """``"; did you mean 'jpeg'?"`` for a close match among ``allowed``, else ``""``."""
    close = difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def to_camel(name: str) -> str:
    """``output_format`` -> ``outputFormat``, as the pmock documentation spells fields."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class ImageRequest(BaseModel):
    """One image-generation request, validated strictly.

    Fields are snake_case here; :func:`normalize_fields` maps camelCase input
    onto them first. Fields left ``None`` were not set and are not sent. The
    values a model accepts (enums, sizes, the largest ``n``) are data, checked
    by :mod:`pmock_batch.capabilities`; this model checks types and what the
    tool itself needs (a format it can verify, a response it can read).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: Annotated[str, Field(min_length=1)] = DEFAULT_MODEL
    background: str | None = None
    moderation: str | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    output_format: OutputFormat | None = None
    partial_images: Annotated[int, Field(ge=0, le=3)] | None = None
    stream: bool | None = None  # server-sent events: partial images, then the image
    quality: str | None = None
    response_format: ResponseFormat | None = None
    size: str | None = None
    input_fidelity: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    extra_body: dict[str, Any] | None = None  # sent as is, like the OpenAI SDK's extra_body

    @field_validator("extra_body")
    @classmethod
    def _extra_only(cls, extra: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in extra or {}:
            name = key if key in FIELD_NAMES else CAMEL_FIELDS.get(key)
            if name is not None and name != "extra_body":
                raise PydanticCustomError(
                    "extra_field",
                    "{key} is a request field: set it on the line, where it is checked, "
                    "not in extra_body",
                    {"key": repr(key)},
                )
        return extra

    @field_validator("size")
    @classmethod
    def _size_text(cls, size: str | None) -> str | None:
        if size is not None and not _SIZE_TEXT.match(size):
            raise PydanticCustomError(
                "size_text",
                "{size} is not a size: use WxH, such as 1024x1024, or auto",
                {"size": repr(size)},
            )
        return size

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ImageRequest:
        fmt = self.output_format or "png"
        if self.output_compression is not None and fmt not in COMPRESSIBLE_FORMATS:
            raise PydanticCustomError(
                "cross_field",
                "allowed only with output_format jpeg or webp, not {fmt}",
                {"field": "output_compression", "fmt": fmt},
            )
        if self.background == "transparent" and fmt not in ALPHA_FORMATS:
            raise PydanticCustomError(
                "cross_field",
                "'transparent' needs output_format png or webp, not {fmt}",
                {"field": "background", "fmt": fmt},
            )
        return self

    @property
    def format(self) -> str:
        """The output format the server will use: png unless another was asked for."""
        return self.output_format or "png"

    @property
    def count(self) -> int:
        """How many images this request stands for (``n``, default 1)."""
        return self.n or 1

    def canonical(self) -> dict[str, Any]:
        """What the job asks for, as a snake_case dict of the fields that are set.

        ``response_format`` counts as ``b64_json`` when unset, since that is
        what the job gets either way; so fingerprints (and the file names of
        id-less jobs) stay what they were when it was always sent. ``stream`` is
        left out: the image is the same, streamed or not.
        """
        body = self.model_dump(exclude_none=True, exclude={"stream"})
        body.setdefault("response_format", "b64_json")
        return body

    def wire_body(self, field_case: str = "snake", *, unsent: Iterable[str] = ()) -> dict[str, Any]:
        """The JSON body of one single-image request. ``n`` is fanned out by the client.

        ``unsent`` names fields the model's capability entry says not to send.
        ``extra_body`` is merged in last, as is, whatever ``field_case`` says.
        """
        body = self.model_dump(exclude_none=True, exclude={"n", "extra_body", *unsent})
        if field_case == "camel":
            body = {to_camel(k): v for k, v in body.items()}
        body.update(self.extra_body or {})
        return body


FIELD_NAMES: tuple[str, ...] = tuple(ImageRequest.model_fields)
CAMEL_FIELDS: dict[str, str] = {to_camel(n): n for n in FIELD_NAMES if to_camel(n) != n}


def fingerprint(request: ImageRequest, extra: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of the canonical request body: sorted keys, snake_case, no whitespace.

    ``extra`` adds keys that are not request fields: an edit's input digests
    (``image_sha256``, ``mask_sha256``). A generation has none, so its
    fingerprint is what it always was.
    """
    body = {**request.canonical(), **extra} if extra else request.canonical()
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_fields(
    raw: Mapping[str, Any], *, extra_names: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Map camelCase and snake_case keys onto the model's field names.

    Returns the normalised dict and a list of ``(field, problem)`` for unknown
    fields (with a did-you-mean suggestion) and fields given in both spellings.
    Keys in ``extra_names`` (such as ``id``) are passed through untouched.
    """
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    known = (*FIELD_NAMES, *CAMEL_FIELDS, *extra_names)
    for key, value in raw.items():
        if key in extra_names:
            out[key] = value
            continue
        name = key if key in FIELD_NAMES else CAMEL_FIELDS.get(key)
        if name is None:
            problems.append((repr(key), f"unknown field{did_you_mean(key, known)}"))
            continue
        if name in spelled:
            problems.append((name, f"given twice, as {spelled[name]!r} and {key!r}; use one"))
            continue
        spelled[name] = key
        out[name] = value
    return out, problems


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "dict_type": "an object",
}


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """Turn a pydantic ``ValidationError`` into readable ``(field, problem)`` pairs."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        ctx = err.get("ctx") or {}
        loc = ".".join(str(part) for part in err["loc"])
        field = str(ctx.get("field", loc))
        value = err.get("input")
        if kind == "missing":
            msg = "required"
        elif kind == "literal_error":
            allowed = ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
            hint = did_you_mean(value, allowed.split(", ")) if isinstance(value, str) else ""
            msg = f"{_show(value)} is not one of {allowed}{hint}"
        elif kind in _TYPE_NAMES:
            msg = f"expected {_TYPE_NAMES[kind]}, got {_show(value)}"
        elif kind == "string_too_short":
            msg = "must not be empty"
        elif kind == "string_too_long":
            msg = f"is {len(value):,} characters long; at most {ctx['max_length']:,} are allowed"
        elif kind in ("greater_than_equal", "less_than_equal"):
            lo = {"n": "1", "output_compression": "0", "partial_images": "0"}.get(field)
            hi = {"output_compression": "100", "partial_images": "3"}.get(field)
            bound = f"from {lo} to {hi}" if lo and hi else f"at least {lo or ctx.get('ge')}"
            msg = f"{_show(value)} is out of range; must be {bound}"
        elif kind == "extra_forbidden":
            msg = "unknown field"
        else:
            msg = str(err["msg"])
        out.append((field or "request", msg))
    return out


class ImageData(BaseModel):
    """One entry of ``data`` in a response. Unknown fields are kept."""

    model_config = ConfigDict(extra="allow")

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    """The body of a 200 from ``/images/generations``, parsed leniently."""

    model_config = ConfigDict(extra="allow")

    created: int | None = None
    data: list[ImageData]
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    usage: dict[str, Any] | None = None


class FileRecord(BaseModel):
    """One image file written for a job."""

    path: str  # relative to the output directory, with forward slashes
    sha256: str
    bytes: int
    format: str
    width: int
    height: int


class RejectedFile(BaseModel):
    """The bytes of a billed answer whose image failed verification, kept under ``.rejected/``."""

    path: str  # relative to the output directory: .rejected/<id>.<attempt>.bin
    bytes: int
    sha256: str
    reason: str  # why the image was rejected


class PartialFile(BaseModel):
    """A streamed partial image saved with ``--save-partials``: a preview, never the image."""

    path: str  # relative to the output directory: .partials/<id>.<index>.<ext>
    index: int  # the event's 0-based partial_image_index
    sha256: str


class ErrorRecord(BaseModel):
    """Why a job did not finish ok."""

    kind: str
    status: int | None = None
    code: str | None = None
    message: str
    param: str | None = None


JobStatus = Literal["ok", "failed", "invalid", "not_run", "pending"]  # pending: in a running batch


class JobRecord(BaseModel):
    """One line of ``manifest.jsonl``: the outcome of one job."""

    model_config = ConfigDict(extra="allow")

    id: str | None
    line: int
    status: JobStatus
    files: list[FileRecord] = Field(default_factory=list)
    kept: int = 0  # of ``files``, those an earlier run saved: not made, nor paid, by this one
    attempts: int = 0  # HTTP requests sent for the job, over all its images, retries included
    retries: int = 0  # of those, the ones that repeated an attempt (retries of one image)
    rate_limited: int = 0  # 429 answers among them
    elapsed_s: float = 0.0
    http_status: int | None = None
    error: ErrorRecord | None = None
    revised_prompt: str | None = None
    usage: dict[str, Any] | None = None
    request: dict[str, Any] | None = None
    fingerprint: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    warnings: list[str] = Field(default_factory=list)
    ambiguous_retries: int = 0  # retries after a timeout or a cut stream: maybe billed twice
    billed_retries: int = 0  # retries after a 2xx whose image was unusable: each one was billed
    rejected: list[RejectedFile] = Field(default_factory=list)  # kept bytes of billed failures
    partials: list[PartialFile] = Field(default_factory=list)  # saved with --save-partials
    cost_usd: float | None = None  # estimated from usage and the price table (prices.py)
