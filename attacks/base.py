"""What attacks see and produce.

An attack is a config class (``harness.core.AttackConfig``) whose hooks the runner calls for
each target model: ``variants`` (models derived from the target, e.g. fine-tuning rounds),
``prepare`` (per-example artefacts computed with gradient access, e.g. GCG suffixes) and
``plan`` (token-level prompts and sampling settings). The runner owns generation, caching,
judging and the run log, so an attack never touches an engine or a file directly. How its
samples read in the report and the export is the attack's too: ``threat_model``,
``describe_edit`` and ``charts`` (``SettingChart``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.core import AttackConfig, BuiltPrompt, Example, PlannedSample, Sampling, setting_label
from harness.core import SettingChart
from harness.models import ResolvedModel
from harness.prompts import PromptBuilder

__all__ = ["AttackConfig", "AttackContext", "BuiltPrompt", "Example", "PlannedSample", "Sampling", "SettingChart",
           "Target", "setting_label"]


@dataclass(frozen=True)
class Target:
    """The model under attack: its recipe name, its resolved files, and its prompt builder
    (tokenizer + chat template + the recipe's system prompt)."""

    name: str
    model: ResolvedModel
    builder: PromptBuilder

    def derived(self, model: ResolvedModel) -> "Target":
        """The same target on a derived model (same tokenizer and template by construction)."""
        return Target(self.name, model, self.builder)


class ArtifactStore(Protocol):
    """Content-addressed JSON artefacts (e.g. optimised suffixes), shared across runs."""

    def get(self, key: str) -> Any | None: ...

    def put(self, key: str, value: Any) -> None: ...


class AttackContext(Protocol):
    """What the runner lends an attack's ``variants`` and ``prepare`` hooks."""

    artifacts: ArtifactStore
    seed: int
    progress: bool
    work_dir: Path  # under the results root's cache: trained rounds, logs

    def free_engines(self) -> None:
        """Close live engines before heavy torch work (training, gradients)."""
        ...

    def resolve(self, spec: str) -> ResolvedModel:
        """Resolve any model spec (alias, folder, hub id, ``recipe.yaml#model``)."""
        ...

