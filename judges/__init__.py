"""Judges: keyword and LLM judges; plug-ins named in ``harness.registry.JUDGES``."""
