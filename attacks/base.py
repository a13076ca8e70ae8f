"""What attacks see and produce, in one import for attack authors.

An attack is a config class (``harness.core.AttackConfig``) whose hooks the runner calls for
each target model: ``variants`` (models derived from the target, e.g. fine-tuning rounds),
``prepare`` (per-example artefacts computed with gradient access, e.g. GCG suffixes) and
``plan`` (token-level prompts and sampling settings). The runner owns generation, caching,
judging and the run log, so an attack never touches an engine or a file directly. How its
samples read in the report and the export is the attack's too: ``threat_model``,
``describe_edit`` and ``charts`` (``SettingChart``). The target and the context the runner
lends (``Target``, ``AttackContext``, ``ArtifactStore``) live in ``harness.attack_api``.
"""

from __future__ import annotations

from harness.attack_api import ArtifactStore, AttackContext, Target
from harness.core import AttackConfig, BuiltPrompt, Example, PlannedSample, Sampling, SettingChart, setting_label

__all__ = ["ArtifactStore", "AttackConfig", "AttackContext", "BuiltPrompt", "Example", "PlannedSample", "Sampling",
           "SettingChart", "Target", "setting_label"]
