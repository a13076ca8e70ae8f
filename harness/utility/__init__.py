"""Utility and over-refusal tasks (see harness.utility.base); plug-ins named in ``harness.registry.UTILITY_TASKS``."""
