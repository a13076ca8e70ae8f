"""Row reading for utility tasks: named fields mapped to columns, errors name file, line, column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.data.base import bundled_path, csv_header, get_column, read_rows
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


def read_fields(path: Path, fields: dict[str, bool], columns: dict[str, str]) -> list[tuple[int, dict[str, str]]]:
    """Rows as (line, {field: text}). ``fields`` maps each field to whether it is required;
    ``columns`` maps fields to the file's column names (dots index nested JSON). A missing
    or empty required column raises DataError naming file, line and column; an optional
    field is read only when present."""
    unknown = sorted(set(columns) - set(fields))
    if unknown:  # also checked when the recipe is validated
        raise DataError(f"{path}: columns map has unknown field(s) {unknown}; allowed: {sorted(fields)}")
    if path.suffix.lower() in (".csv", ".tsv"):
        header = csv_header(path)
        for fld, required in fields.items():
            col = columns.get(fld, fld)
            if (required or fld in columns) and col not in header:
                raise DataError(f"{path}:1: column {col!r} (for {fld}) not in header; columns are {header}")
    out: list[tuple[int, dict[str, str]]] = []
    for line_no, row in read_rows(path):
        values: dict[str, str] = {}
        for fld, required in fields.items():
            col = columns.get(fld, fld)
            try:
                val: Any = get_column(row, col)
            except KeyError:
                if required or fld in columns:
                    raise DataError(f"{path}:{line_no}: missing column {col!r} (for {fld})") from None
                continue
            if val is None or (isinstance(val, str) and not val.strip()):
                if required:
                    raise DataError(f"{path}:{line_no}: column {col!r} (for {fld}) is empty")
                continue
            if isinstance(val, (dict, list)):
                raise DataError(f"{path}:{line_no}: column {col!r} (for {fld}) is a {type(val).__name__}, "
                                "expected text")
            values[fld] = str(val)
        out.append((line_no, values))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def unique_id(path: Path, line_no: int, given: str | None, prefix: str, n: int, seen: set[str]) -> str:
    ex_id = given.strip() if given else f"{prefix}-{n:04d}"
    if ex_id in seen:
        raise DataError(f"{path}:{line_no}: duplicate id {ex_id!r}")
    seen.add(ex_id)
    return ex_id
