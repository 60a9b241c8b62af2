"""What the server answered, turned into the project's values: pure, no I/O.

A 200's body becomes a :class:`Reply` (:func:`parse_images`); an error body
becomes the :class:`~pmock_batch.errors.APIStatusError` subclass for its status
(:func:`status_from_body`). Every string the server wrote passes :func:`clean`
on the way in: redacted, then cut, then escaped (:func:`~pmock_batch.text.server_text`),
so nothing stored or shown later can carry a key or a terminal escape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, overload

from pydantic import ValidationError

from .errors import APIStatusError, Headers, InvalidResponseError, status_error
from .models import ImagesResponse
from .text import server_text

__all__ = [
    "MAX_ERROR_CHARS",
    "Reply",
    "b64_size",
    "clean",
    "parse_images",
    "status_from_body",
    "too_large",
]

MAX_ERROR_CHARS = 2000


def b64_size(size: int) -> int:
    """The length of the base64 text of ``size`` bytes."""
    return 4 * -(-size // 3)


def too_large(what: str, cap: int) -> InvalidResponseError:
    """A 200 over a cap: an invalid answer (billed, so retried at most --max-billed-retries)."""
    return InvalidResponseError(f"the server's 200 answer has more than {cap:,} bytes {what}")


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer: the parsed body, its status and headers."""

    body: ImagesResponse
    status: int
    headers: Headers  # case-insensitive


def parse_images(raw: bytes) -> ImagesResponse:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = clean(str(exc), ())
        raise InvalidResponseError(f"the server's 200 answer is not JSON: {reason}") from exc
    except RecursionError:  # [[[[...: within the cap, but deeper than any answer
        raise InvalidResponseError("the server's 200 answer is nested too deeply") from None
    if not isinstance(data, dict) or not data.get("data"):
        raise InvalidResponseError("the server's 200 answer has no image in 'data'")
    try:
        return ImagesResponse.model_validate(data)
    except ValidationError as exc:  # its text echoes the values: say where and what, not them
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['type']}"
            for err in exc.errors(include_url=False, include_input=False)[:3]
        ]
        raise InvalidResponseError(
            f"the server's 200 answer has an unexpected shape ({'; '.join(problems)})"
        ) from None


def status_from_body(
    status: int, raw: bytes, headers: Headers, secrets: tuple[str, ...]
) -> APIStatusError:
    """Build an APIStatusError from OpenAI's error shape, or from whatever text came back.

    Every field the server wrote is made safe by :func:`clean` before it is kept.
    """
    message, code, type_, param = "", None, None, None
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or "")
        code = str(err["code"]) if err.get("code") is not None else None
        type_ = str(err["type"]) if err.get("type") is not None else None
        param = str(err["param"]) if err.get("param") is not None else None
    elif isinstance(err, str):
        message = err
    if not message:
        message = raw.decode("utf-8", "replace").strip() or f"HTTP {status}"
    return status_error(
        clean(message, secrets),
        status=status,
        code=clean(code, secrets),
        type=clean(type_, secrets),
        param=clean(param, secrets),
        headers=headers,
    )


@overload
def clean(text: str, secrets: tuple[str, ...], limit: int = ...) -> str: ...
@overload
def clean(text: None, secrets: tuple[str, ...], limit: int = ...) -> None: ...
def clean(text: str | None, secrets: tuple[str, ...], limit: int = MAX_ERROR_CHARS) -> str | None:
    """Where server text enters: redacted, then cut, then escaped (:func:`.text.server_text`)."""
    return None if text is None else server_text(text, secrets, limit=limit)
