"""Utility and over-refusal tasks (see harness.utility.base); importing this registers the task types."""

from harness.utility.base import UTILITY_TASKS, UtilityTaskConfig
from harness.utility import tasks  # noqa: F401  (registers overrefusal, reference, alpaca, samsum, gsm8k)

__all__ = ["UTILITY_TASKS", "UtilityTaskConfig"]
