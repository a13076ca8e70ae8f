"""What an attack produces: one planned generation (or a recorded skip) per example × setting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.data.base import Example
from harness.engine.base import Sampling
from harness.prompts import BuiltPrompt


def setting_label(setting: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "default"


@dataclass(frozen=True)
class PlannedSample:
    example: Example
    setting: dict[str, Any]
    sampling: Sampling
    prompt: BuiltPrompt | None  # None when skipped
    skipped: str | None = None

    @property
    def label(self) -> str:
        return setting_label(self.setting)
