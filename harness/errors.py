"""User-facing errors: each names the file, key or row at fault."""

from __future__ import annotations


class HarnessError(Exception):
    """Base class; the CLI prints these without a traceback."""


class RecipeError(HarnessError):
    """A recipe key is missing, unknown or has a bad value."""


class DataError(HarnessError):
    """A dataset file, line or column is bad."""


class ModelError(HarnessError):
    """A model spec cannot be resolved or loaded."""
