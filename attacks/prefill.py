"""Prefilling attack (Qi et al. 2025, §2): start the assistant turn with k harmful tokens.

The first k tokens of a harmful response (a dataset column, or the short affirmative
target) are appended after the assistant header as token ids of the target model's own
tokenizer, so depth k is exact. A row whose source is shorter than k is skipped and
reported, never padded. ``text`` prefills a fixed string instead (e.g. the paper's
"I apologize, but I cannot" on a base model).
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from attacks.base import AttackConfig, Example, PlannedSample, SettingChart, Target

DEFAULT_DEPTHS = [0, 5, 10, 20, 40]


class PrefillAttack(AttackConfig):
    """Prefill the first k tokens of a harmful response, for each depth k."""

    type: Literal["prefill"] = "prefill"
    threat_model = "black_box"  # control of the assistant turn, no weights
    charts = (SettingChart("prefill", "ASR by prefill depth", "depth",
                           "prefill depth k (tokens of the model's own tokenizer)",
                           "Share of harmful continuations after the first k tokens of a harmful answer are prefilled."),
              *AttackConfig.charts)
    depths: list[int] = Field(default_factory=lambda: list(DEFAULT_DEPTHS))
    source: Literal["response", "target"] = Field("response", description="dataset field the prefill comes from")
    text: str | None = Field(None, description="fixed prefill text instead of depths")

    @field_validator("depths")
    @classmethod
    def _depths(cls, v: list[int]) -> list[int]:
        if not v or any(k < 0 for k in v) or len(set(v)) != len(v):
            raise ValueError(f"depths must be distinct non-negative integers, got {v}")
        return v

    @model_validator(mode="after")
    def _text_or_depths(self) -> "PrefillAttack":
        if self.text is not None and "depths" in self.model_fields_set:
            raise ValueError("give either `depths` (prefill from `source`) or `text` (a fixed prefill), not both")
        if self.text is not None and not self.text.strip():
            raise ValueError("`text` is empty")
        return self

    def plan(self, examples: list[Example], target: Target, artifacts: dict[str, Any],
             seed: int) -> Iterator[PlannedSample]:
        builder = target.builder
        sampling = self.sampling.to_sampling(seed)

        def planned(ex: Example, setting: dict[str, Any], prefill: list[int]) -> PlannedSample:
            prompt = builder.build(ex.prompt, prefill)
            return PlannedSample(ex, setting, sampling, prompt,
                                 info={"prefill_text": prompt.prefill_text, "prefill_tokens": len(prefill)})

        for ex in examples:
            if self.text is not None:
                yield planned(ex, {"prefill": "fixed"}, builder.encode(self.text))
                continue
            source = getattr(ex, self.source)
            source_ids = builder.encode(source) if source else []
            for k in self.depths:
                setting = {"depth": k}
                if k == 0:
                    yield planned(ex, setting, [])
                elif not source:
                    yield PlannedSample(ex, setting, sampling, None, skipped=f"no {self.source} to prefill from")
                elif len(source_ids) < k:
                    yield PlannedSample(ex, setting, sampling, None,
                                        skipped=f"{self.source} has {len(source_ids)} tokens < depth {k}")
                else:
                    yield planned(ex, setting, source_ids[:k])
