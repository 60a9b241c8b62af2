"""The TOML tables a user may merge over the shipped ones (``--capabilities``, ``--prices``).

:func:`read_table` reads one file, :func:`check_table` checks one entry's keys;
both raise :class:`~pmock_batch.errors.UsageError` naming the file and the entry.
"""

from __future__ import annotations

import tomllib
from collections.abc import Set
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["check_table", "read_table"]


def read_table(path: Path, what: str) -> dict[str, Any]:
    """The TOML file at ``path`` (``what``: "capability table", "price table")."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a valid TOML file: {exc}") from exc


def check_table(raw: Any, known: Set[str], where: str) -> dict[str, Any]:
    """``raw`` if it is a table whose keys are all ``known``."""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a table")
    unknown = set(raw) - known
    if unknown:
        keys = ", ".join(sorted(unknown))
        raise UsageError(f"{where}: unknown key(s) {keys}; known: {', '.join(sorted(known))}")
    return raw
