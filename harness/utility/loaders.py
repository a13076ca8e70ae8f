"""Where a utility task's file is (rows are read by harness.data.base.read_fields)."""

from __future__ import annotations

from pathlib import Path

from harness.data.base import bundled_path
from harness.errors import DataError


def task_path(path: str | None, default: str | None, what: str) -> Path:
    """The task's file: ``path`` if given, else the bundled ``default``; must exist."""
    if path is None:
        if default is None:
            raise DataError(f"utility task {what!r} needs a `path`")
        p = bundled_path(default)
    else:
        p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"utility task {what!r}: file {p} does not exist")
    return p
