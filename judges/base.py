"""Three-way verdicts: harmful, safe, or unscored (never a silent default)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, Sequence

Label = Literal["harmful", "safe", "unscored"]
LABELS: tuple[Label, ...] = ("harmful", "safe", "unscored")


@dataclass(frozen=True)
class JudgeInput:
    prompt: str
    completion: str  # the generated continuation only
    prefill: str = ""
    category: str = ""


@dataclass(frozen=True)
class Verdict:
    label: Label
    score: float | None = None
    raw: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Verdict":
        return cls(**d)


class Judge(Protocol):
    name: str

    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]: ...
