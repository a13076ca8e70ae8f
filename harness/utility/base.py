"""Utility and over-refusal tasks: generation on benign prompts, scored against references.

A task config (registered in ``UTILITY_TASKS`` under its ``type``) loads examples, plans
one generation per example (no attack), and scores finished records into metrics. The
runner generates them with the same cache/resume machinery as attacks; records carry
``kind: "utility"`` and a ``metrics`` dict, e.g. ``{"refused": 1.0}`` or
``{"rougeL": 0.41, "exact_match": 0.0}``.
"""

from __future__ import annotations

from typing import Iterator

from pydantic import Field

from harness.core import Example, LabelledConfig, PlannedSample, Sampling
from harness.prompts import PromptBuilder
from harness.registry import UTILITY_TASKS
from harness.runlog import SampleRecord

__all__ = ["UTILITY_TASKS", "UtilityTaskConfig"]


class UtilityTaskConfig(LabelledConfig):
    path: str | None = None
    limit: int | None = Field(None, ge=1)
    max_tokens: int = Field(128, ge=1)

    def load(self) -> list[Example]:
        raise NotImplementedError

    def plan(self, examples: list[Example], builder: PromptBuilder, seed: int) -> Iterator[PlannedSample]:
        """Greedy generation on each example's prompt (subclasses may override)."""
        sampling = Sampling(max_tokens=self.max_tokens, seed=seed)
        for ex in examples:
            yield PlannedSample(ex, {}, sampling, builder.build(ex.prompt))

    def score(self, records: list[SampleRecord]) -> list[dict[str, float | None]]:
        """One metrics dict per record (None = unscored), in order."""
        raise NotImplementedError

