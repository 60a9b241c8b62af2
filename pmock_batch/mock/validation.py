"""Validate a request body with the client's own model, and word the rejection like OpenAI.

The mock accepts exactly what :class:`pmock_batch.models.ImageRequest` accepts
(camelCase or snake_case keys), except that ``n`` must be absent or 1, as on
the real endpoint.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..models import ImageRequest, describe_errors, normalize_fields
from .responses import error_body

__all__ = ["Rejection", "parse_request"]

_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "string_type": "invalid_type",
    "int_type": "invalid_type",
    "int_from_float": "invalid_type",
    "bool_type": "invalid_type",
    "dict_type": "invalid_type",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a body was refused: every problem, plus the first one's ``param`` and ``code``."""

    problems: tuple[tuple[str, str], ...]  # (field, problem) in the order found
    param: str | None
    code: str | None

    @property
    def message(self) -> str:
        """All problems as ``field: problem``, joined by ``; ``."""
        return "; ".join(f"{field}: {problem}" for field, problem in self.problems)

    def body(self) -> dict[str, Any]:
        """The 400 body in OpenAI's error shape."""
        return error_body(self.message, param=self.param, code=self.code)


def _unquote(field: str) -> str:
    """``"'foo'"`` (how :func:`normalize_fields` names unknown keys) -> ``"foo"``."""
    if field[:1] in ("'", '"'):
        try:
            value = ast.literal_eval(field)
        except (ValueError, SyntaxError):
            return field
        return value if isinstance(value, str) else field
    return field


def parse_request(body: Any) -> ImageRequest | Rejection:
    """The validated request, or a :class:`Rejection` naming every problem."""
    if not isinstance(body, dict):
        kind = type(body).__name__ if body is not None else "null"
        wrong = ("body", f"expected a JSON object, got {kind}")
        return Rejection((wrong,), param=None, code="invalid_type")
    fields, found = normalize_fields(body)
    problems: list[tuple[str, str]] = []
    params: list[tuple[str, str]] = []  # (param, code), parallel to problems
    for field, problem in found:
        unknown = problem.startswith("unknown field")
        problems.append((field, problem))
        params.append((_unquote(field), "unknown_parameter" if unknown else "duplicate_parameter"))
    request: ImageRequest | None = None
    try:
        request = ImageRequest.model_validate(fields)
    except ValidationError as exc:
        for err, (field, problem) in zip(exc.errors(), describe_errors(exc), strict=True):
            problems.append((field, problem))
            params.append((field, _CODES.get(err["type"], "invalid_value")))
    if request is not None and request.n is not None and request.n != 1:
        problems.append(("n", f"{request.n} is not supported; only 1 image per request"))
        params.append(("n", "invalid_value"))
    if request is not None and not problems:
        return request
    param, code = params[0]
    return Rejection(tuple(problems), param=None if param == "request" else param, code=code)
