"""Judges: each module registers a config class whose ``make()`` returns a Judge."""

from judges.base import Judge, JudgeInput, Verdict
from judges import keyword  # noqa: F401  (registers "keyword")
from judges import llm  # noqa: F401  (registers "llm" and "chain")

__all__ = ["Judge", "JudgeInput", "Verdict"]
