"""Utility and over-refusal tasks (see harness.utility.base)."""

from harness.utility.base import UTILITY_TASKS, UtilityTaskConfig

__all__ = ["UTILITY_TASKS", "UtilityTaskConfig"]
