"""`kind: analyze` recipes: the schema of the depth diagnostics and its loading (errors name the
file and the key).

A ``kind: analyze`` recipe names models and a list of analyses::

    kind: analyze
    name: diagnostics
    models:
      - {name: base, spec: smollm2-135m-instruct}
      - {name: deep, spec: recipes/align.yaml#smollm2-deep}
    analyses:
      - {type: kl, pairs: [[deep, base]], data: {format: demo}}        # KL(deep ‖ base) by position
      - {type: refusal, models: [base, deep], depths: [0, 5, 10, 20, 40]}
      - {type: grad, models: [deep], data: {format: harmful-train}}

``harness.analysis.run`` runs one, ``harness.analysis.cli`` holds the commands and the maths
lives in ``harness.analysis.diagnostics``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator

from harness.core import StrictModel
from harness.data.base import DatasetConfig
from harness.errors import RecipeError
from harness.names import PlainName
from harness.recipes import ModelConfig, format_errors, read_recipe_yaml
from harness.registry import DATASET_FORMATS

__all__ = ["AnalyzeRecipe", "Analysis", "GradAnalysis", "KLAnalysis", "RefusalAnalysis", "analyze_recipe_from_dict",
           "load_analyze_recipe"]

_NAME = r"^[A-Za-z0-9][\w.-]*$"


# --------------------------------------------------------------------------- recipe schema


class _Analysis(StrictModel):
    name: PlainName | None = Field(None, pattern=_NAME, description="label and file stem; defaults to the type")
    batch_size: int = Field(8, ge=1)

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def model_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def max_examples(self) -> int | None:
        """At most this many examples are used (None: all the dataset gives)."""
        return None


class KLAnalysis(_Analysis):
    """KL(π_a ‖ π_b) by response position, teacher-forced on (prompt, response) pairs."""

    type: Literal["kl"]
    pairs: list[tuple[str, str]] = Field(min_length=1, description="[a, b] model names, for KL(a ‖ b)")
    data: DatasetConfig = Field(default_factory=lambda: DatasetConfig(format="demo"))
    field: Literal["response", "target", "refusal"] = Field("response", description="the scored response")
    max_tokens: int = Field(32, ge=1, description="response positions t = 1..max_tokens")

    def model_names(self) -> list[str]:
        return [n for pair in self.pairs for n in pair]


class GradAnalysis(_Analysis):
    """Per-position cross-entropy and its gradient norm on one batch of attack pairs."""

    type: Literal["grad"]
    models: list[str] = Field(min_length=1)
    data: DatasetConfig = Field(default_factory=lambda: DatasetConfig(format="harmful-train"))
    field: Literal["response", "target", "refusal"] = Field("response", description="the attack's target")
    max_tokens: int = Field(16, ge=1, description="positions t = 1..max_tokens (one backward pass each)")
    batch_size: int = Field(8, ge=1, description="attack pairs in the batch (the first batch_size examples)")

    def model_names(self) -> list[str]:
        return list(self.models)

    @property
    def max_examples(self) -> int | None:
        return self.batch_size


class RefusalAnalysis(_Analysis):
    """log P(refusal prefix | x, h≤k) by prefill depth k."""

    type: Literal["refusal"]
    models: list[str] = Field(min_length=1)
    data: DatasetConfig = Field(default_factory=lambda: DatasetConfig(format="demo"))
    depths: list[int] = Field(default_factory=lambda: [0, 5, 10, 20, 40], min_length=1)
    prefix: Union[Literal["example"], list[str]] = Field(
        "example", description="'example': the example's own refusal; or refusal openings, e.g. [I cannot, I'm sorry]")
    prefix_tokens: int = Field(8, ge=1, description="tokens of the example's refusal (prefix: example)")
    harmful_field: Literal["response", "target"] = Field("response", description="the prefilled harmful text h")
    batch_size: int = Field(16, ge=1)

    @field_validator("depths")
    @classmethod
    def _depths(cls, v: list[int]) -> list[int]:
        if any(k < 0 for k in v) or len(set(v)) != len(v):
            raise ValueError(f"depths must be distinct and ≥ 0, got {v}")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(not s.strip() for s in v)):
            raise ValueError("a prefix list needs at least one non-empty string")
        return v

    def model_names(self) -> list[str]:
        return list(self.models)


Analysis = Annotated[Union[KLAnalysis, GradAnalysis, RefusalAnalysis], Field(discriminator="type")]


class AnalyzeRecipe(StrictModel):
    kind: Literal["analyze"]
    name: PlainName = Field(pattern=_NAME)
    description: str = ""
    system_prompt: str | None = Field(None, description="None keeps the chat template's default")
    models: list[ModelConfig] = Field(min_length=1)
    analyses: list[Analysis] = Field(min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights; KL is always fp32")
    limit: int | None = Field(None, ge=1, description="examples per analysis (smoke runs)")
    output_dir: str = "results"


def _check_references(recipe: AnalyzeRecipe, source: str) -> None:
    """Names that must exist or be unique; errors name the key."""
    def fail(key: str, msg: str) -> None:
        raise RecipeError(f"{source}: invalid recipe\n  {key}: {msg}")

    names = [m.name for m in recipe.models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        fail("models", f"duplicate name(s) {dupes}")
    labels = [a.label for a in recipe.analyses]
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes:
        fail("analyses", f"duplicate label(s) {dupes}; set `name` to tell them apart")
    for i, a in enumerate(recipe.analyses):
        key = "pairs" if isinstance(a, KLAnalysis) else "models"
        for j, n in enumerate(a.model_names()):
            if n not in names:
                where = f"analyses.{i}.pairs.{j // 2}.{j % 2}" if key == "pairs" else f"analyses.{i}.models.{j}"
                fail(where, f"unknown model {n!r}; models: {names}")
        if a.data.format not in DATASET_FORMATS.names():
            fail(f"analyses.{i}.data.format", f"unknown format {a.data.format!r}; allowed: {DATASET_FORMATS.names()}")


def analyze_recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> AnalyzeRecipe:
    try:
        recipe = AnalyzeRecipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_errors(source, e)) from None
    _check_references(recipe, source)
    return recipe


def load_analyze_recipe(path: str | Path, overrides: list[str] | None = None) -> AnalyzeRecipe:
    """A ``kind: analyze`` recipe with ``--set`` overrides; errors name the file and the key."""
    return analyze_recipe_from_dict(read_recipe_yaml(path, overrides, "analysis recipe"), str(path))
