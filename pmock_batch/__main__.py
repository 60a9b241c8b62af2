"""``python -m pmock_batch`` runs the CLI."""

from __future__ import annotations

import sys

from .cli import script

if __name__ == "__main__":
    sys.exit(script())
