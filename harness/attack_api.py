"""The attack-facing API below the plug-ins: the model under attack (``Target``) and what the
runner lends an attack's hooks (``AttackContext``, with its ``ArtifactStore``). Attacks import
it through ``attacks.base``; the runner implements it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.models import ResolvedModel
from harness.prompts import PromptBuilder

__all__ = ["ArtifactStore", "AttackContext", "Target"]


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
