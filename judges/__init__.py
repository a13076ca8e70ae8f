"""Judges: each module registers a config class whose ``make()`` returns a Judge."""

from judges.base import Judge, JudgeInput, Verdict
from judges import keyword  # noqa: F401  (registers "keyword")

__all__ = ["Judge", "JudgeInput", "Verdict"]
