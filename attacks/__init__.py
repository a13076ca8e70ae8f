"""Attacks: each module registers a config class whose ``plan()`` yields samples."""

from attacks.base import PlannedSample
from attacks import prefill  # noqa: F401  (registers "prefill")

__all__ = ["PlannedSample"]
