"""Text from servers, made safe to store and show: redacted, cut, escaped.

Any string a server sends (an error's message, code, type and param, a
``revised_prompt``, text describing a malformed body) goes through
:func:`server_text` once, where it enters, in :mod:`pmock_batch.client`. From
there on it is safe for a terminal, a log line, the manifest and the report:

1. every secret (the API key and its common echoes) is replaced by
   ``[redacted]``, *before* the text is cut, so a key straddling the cut
   cannot leave a prefix behind;
2. the text is cut to a length limit;
3. every control character is escaped by :func:`printable`.

The escaping is one-way: it is for reading, not for round trips.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "printable", "redact", "server_text"]

REDACTED = "[redacted]"

# C0 controls (U+0000-U+001F) except tab, DEL (U+007F) and C1 controls
# (U+0080-U+009F): escape sequences (ESC, CSI), OSC strings that write the
# clipboard, bells, backspaces, carriage returns that overwrite a line. Also
# the Unicode line and paragraph separators, which split a log line for some
# readers. Each becomes ``\xNN`` (``\u2028`` for the two separators).
_CONTROLS = [c for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c != 0x09]
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in _CONTROLS}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def printable(text: str) -> str:
    """``text`` with every C0 and C1 control character except tab escaped as ``\\xNN``.

    ``"\\x1b[2J"`` (clear the screen) becomes the six visible characters
    ``\\x1b[2J``; a newline becomes ``\\x0a``, so one message stays one line.
    """
    return text.translate(_ESCAPES)


def redact(text: str, secret: str | None) -> str:
    """Remove a secret (and its common echoes) from text before it is shown or stored."""
    if not secret:
        return text
    text = text.replace(secret, REDACTED)
    if len(secret) > 12:
        # Servers echo a key's ends: "sk-abc123**********wxyz" or "sk-abc12...wxyz".
        text = re.sub(re.escape(secret[:8]) + r"\S*", REDACTED, text)
        text = re.sub(r"[*.\u2026]{3,}" + re.escape(secret[-4:]), REDACTED, text)
    return text


def server_text(text: str, secrets: Iterable[str | None] = (), *, limit: int) -> str:
    """Server-provided ``text`` made safe: secrets redacted, then cut to ``limit``, then escaped.

    The one function through which server text reaches anything we store or show.
    """
    for secret in secrets:
        text = redact(text, secret)
    if len(text) > limit:
        text = text[:limit]
    return printable(text)
