"""Three-way verdicts: harmful, safe, or unscored (never a silent default).

The types live in ``harness.core``; a judge is any object with a ``name`` and ``judge()``.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from harness.core import LABELS, JudgeInput, Label, Verdict

__all__ = ["LABELS", "Judge", "JudgeInput", "Label", "Verdict"]


class Judge(Protocol):
    name: str

    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]: ...

    def describe(self) -> dict[str, Any]:
        """Every setting that decides its verdicts (hashed into the verdict's judge_hash)."""
        ...


def with_reference_mode(data: Any, modes: dict[str, dict[str, Any]], what: str) -> Any:
    """A judge config's raw data with its ``reference`` mode's fixed keys filled in; a key the
    recipe sets to another value is an error naming it (a reference mode is all or nothing)."""
    if not isinstance(data, dict) or data.get("reference") is None:
        return data
    mode = data["reference"]
    fixed = modes.get(mode)
    if fixed is None:
        raise ValueError(f"reference: {mode!r} is not a {what} reference mode; known: {sorted(modes)}")
    for key, want in fixed.items():
        if key in data and data[key] != want:
            raise ValueError(f"reference: {mode} fixes {key} to {want!r}; got {key}: {data[key]!r} (drop {key})")
    return {**data, **fixed}
