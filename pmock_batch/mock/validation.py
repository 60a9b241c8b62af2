"""Validate a request body with the client's own model and capability table, and word the
rejection like OpenAI.

Two dialects:

``pmock``
    what pmock documents (``../shared/seed``): camelCase or snake_case keys,
    the seed's enums and sizes (the capability table's ``[default]`` entry),
    any model name, and ``n`` absent or 1.
``openai``
    what OpenAI's API does, per model, from the capability table: snake_case
    keys only; 400 ``unknown_parameter`` for any field the model's entry does
    not list (``response_format`` for GPT image models, ``input_fidelity`` for
    generations, any unknown key); the model's enums, size rule and ``n`` up
    to its maximum; an unknown model is ``invalid_value``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..capabilities import Capabilities, shipped_capabilities
from ..models import FIELD_NAMES, ImageRequest, describe_errors, normalize_fields
from .responses import error_body

__all__ = ["DIALECTS", "Rejection", "parse_request"]

DIALECTS = ("pmock", "openai")
_CLIENT_ONLY = "extra_body"  # the client merges it into the body; never a wire field

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
    text: str | None = None  # the message, when it is worded as OpenAI words it

    @property
    def message(self) -> str:
        """All problems as ``field: problem``, joined by ``; ``."""
        if self.text is not None:
            return self.text
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


def _unknown(param: str) -> Rejection:
    problem = ((param, "unknown parameter"),)
    return Rejection(
        problem, param=param, code="unknown_parameter", text=f"Unknown parameter: {param!r}."
    )


def parse_request(
    body: Any, *, dialect: str = "pmock", caps: Capabilities | None = None, edit: bool = False
) -> ImageRequest | Rejection:
    """The validated request, or a :class:`Rejection` naming every problem.

    ``edit``: the fields of an ``/images/edits`` request (the model must edit
    images; its ``edit_fields``, such as ``input_fidelity``, are accepted too).
    """
    if not isinstance(body, dict):
        kind = type(body).__name__ if body is not None else "null"
        wrong = ("body", f"expected a JSON object, got {kind}")
        return Rejection((wrong,), param=None, code="invalid_type")
    caps = caps or shipped_capabilities()
    if dialect == "openai":
        for key in body:
            if key not in FIELD_NAMES or key == _CLIENT_ONLY:
                return _unknown(str(key))
    elif _CLIENT_ONLY in body:
        return _unknown(_CLIENT_ONLY)
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
    if request is not None and not problems:
        entry = caps.lookup(request.model) if dialect == "openai" else caps.default
        if not entry.known and dialect == "openai":
            known = ", ".join(repr(e.name) for e in caps.models)
            text = f"Invalid value: {request.model!r}. Supported values are: {known}."
            return Rejection((("model", text),), param="model", code="invalid_value", text=text)
        checked = caps.check(request, mode="server", entry=entry, edit=edit)
        for field, problem in checked.problems:
            if problem.startswith("not accepted"):
                return _unknown(field)
            problems.append((field, problem))
            params.append((field, "invalid_value"))
    if dialect == "pmock" and request is not None and request.n not in (None, 1):
        problems.append(("n", f"{request.n} is not supported; only 1 image per request"))
        params.append(("n", "invalid_value"))
    if request is not None and not problems:
        return request
    param, code = params[0]
    return Rejection(tuple(problems), param=None if param == "request" else param, code=code)
