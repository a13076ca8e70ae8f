"""Names that become one file or folder name: run ids (``results/<run-id>/``), recipe names
(the default run id), dataset labels (``<cache>/synth/<label>-<key>.jsonl``, training anchors
``<cache>/anchors/<label>-<key>.jsonl``), analysis labels (``<run>/<label>.csv``).

One rule for all of them (issue 19): a plain name is non-empty and has no path separator
(``/`` or ``\\``), no NUL, and is not ``.`` or ``..``, so joined to its folder it stays in it.
``--run-id ../../etc/x`` is refused instead of creating a folder outside ``results/``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator

from harness.errors import HarnessError

_RULE = "a plain name: not empty, no / or \\, no NUL, not . or .."


def name_problem(value: Any) -> str | None:
    """Why ``value`` is not a plain name, or None if it is."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}, not a string"
    if not value:
        return "empty"
    if "\0" in value:
        return "contains a NUL character"
    for sep in ("/", "\\"):
        if sep in value:
            return f"contains the path separator {sep!r}"
    if value in (".", ".."):
        return "the folder itself or its parent"
    return None


def check_name(value: Any, what: str, becomes: str = "", error: type[HarnessError] = HarnessError) -> str:
    """``value`` if it is a plain name, else ``error`` naming ``what`` (a flag or key, e.g.
    ``--run-id``) and the value; ``becomes`` says what path it would be part of."""
    problem = name_problem(value)
    if problem is not None:
        where = f" ({becomes})" if becomes else ""
        raise error(f"{what} {value!r}: not a plain name ({problem}); it is used as a file or folder name{where}, "
                    f"so it must be {_RULE}")
    return value


def _validate(value: Any) -> Any:
    if isinstance(value, str):  # anything else is reported by the field's own type
        problem = name_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} is not a plain name ({problem}); it is used as a file or folder name, so it "
                             f"must be {_RULE}")
    return value


PlainName = Annotated[str, BeforeValidator(_validate)]
"""A pydantic field type: a string refused (naming the value) unless it is a plain name; runs
before any ``pattern`` of the field, so a path gets this message rather than the pattern's."""
