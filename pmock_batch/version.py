"""The package version: a leaf, so the lowest layers can name it without importing the rest."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
