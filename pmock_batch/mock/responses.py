"""Response bodies in OpenAI's shapes: errors, and the usage block of a success.

Every error body is ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any

from .faults import Outcome

__all__ = [
    "HOSTILE_CONTROLS",
    "HOSTILE_CUT",
    "INVALID_KEY_MESSAGE",
    "MODERATION_MESSAGE",
    "QUOTA_MESSAGE",
    "error_body",
    "hostile_error",
    "hostile_text",
    "moderation_body",
    "outcome_error",
    "status_error",
    "usage",
]

INVALID_KEY_MESSAGE = "Incorrect API key provided."
MODERATION_MESSAGE = (
    "Your request was rejected by the safety system. If you believe this is an error, "
    "contact us at help.openai.com and include the request ID if you have one."
)
QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."
RATE_LIMIT_MESSAGE = "Rate limit reached for requests. Please try again later."

# status -> (type, code, message) for error outcomes without a special meaning
_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request (scripted by the mock)."),
    401: ("invalid_request_error", "invalid_api_key", INVALID_KEY_MESSAGE),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "The requested resource does not exist."),
    408: ("invalid_request_error", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict; please try again."),
    429: ("requests", "rate_limit_exceeded", RATE_LIMIT_MESSAGE),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}

# What a hostile server writes into its text: clear the screen, home the cursor, set the
# clipboard (OSC 52, ended by BEL), a C1 CSI colour, a carriage return and a backspace.
HOSTILE_CONTROLS = "\x1b[2J\x1b[H\x1b]52;c;cHduZWQ=\x07\x9b31m\r\x08"
HOSTILE_CUT = 2000  # a hostile message puts the key across this character: all but its last before

# base output tokens of a 1024x1024 image by quality; other sizes scale by area
_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def status_error(status: int) -> dict[str, Any]:
    """The error body the mock sends for a plain error ``status``."""
    default = ("server_error", None, f"Error {status} (scripted by the mock).")
    if status < 500:
        default = ("invalid_request_error", None, f"Error {status} (scripted by the mock).")
    kind, code, message = _STATUS_ERRORS.get(status, default)
    return error_body(message, type=kind, code=code)


def moderation_body() -> dict[str, Any]:
    """The 400 body of a prompt the safety system blocks."""
    return error_body(
        MODERATION_MESSAGE, type="image_generation_user_error", code="moderation_blocked"
    )


def outcome_error(outcome: Outcome) -> dict[str, Any] | None:
    """The error body of an error outcome (``quota``, ``moderation``, a status); else None."""
    if outcome.name == "quota":
        return error_body(QUOTA_MESSAGE, type="insufficient_quota", code="insufficient_quota")
    if outcome.name == "moderation":
        return moderation_body()
    if outcome.is_http_error and outcome.status is not None:
        return status_error(outcome.status)
    return None


def usage(prompt: str, *, width: int, height: int, quality: str) -> dict[str, Any]:
    """A plausible, deterministic ``usage`` block for one generated image."""
    text_tokens = max(1, len(prompt) // 4)
    base = _OUTPUT_TOKENS.get(quality, _OUTPUT_TOKENS["medium"])
    output_tokens = round(base * width * height / (1024 * 1024))
    return {
        "input_tokens": text_tokens,
        "output_tokens": output_tokens,
        "total_tokens": text_tokens + output_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
    }


def hostile_text(text: str, token: str) -> str:
    """``text`` as a hostile server writes it: with the caller's key and control sequences."""
    return f"{text} {token} {HOSTILE_CONTROLS}"


def hostile_error(body: dict[str, Any], token: str) -> dict[str, Any]:
    """An error body whose every string echoes the key and holds control sequences.

    The message also holds the key again across character :data:`HOSTILE_CUT`
    (all but its last character before it), where a client that cuts before
    it redacts would leave most of the key.
    """
    err = dict(body.get("error") or {})
    head = hostile_text(str(err.get("message") or "Error."), token)
    pad = max(1, HOSTILE_CUT - (len(token) - 1) - len(head))
    err["message"] = head + " " * pad + token + " (end)"
    for name in ("type", "param", "code"):
        err[name] = hostile_text(str(err.get(name) or name), token)
    return {"error": err}
