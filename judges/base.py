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
