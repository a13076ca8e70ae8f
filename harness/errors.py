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


def read_json_file(path, missing: str | None = None):
    """The JSON in ``path``; invalid JSON is a DataError naming file and line. ``missing``: the
    message for a file that does not exist (None: the caller checked)."""
    import json
    from pathlib import Path

    path = Path(path)
    if missing is not None and not path.is_file():
        raise DataError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
