"""Training recipes: which models to build from which base, with which objective and data.

    name: align
    base: smollm2-135m-instruct
    training: {steps: 40, lr: 1e-4, ...}          # defaults for every model
    models:
      - name: smollm2-shallow
        objective: sft                            # x -> r
        data: {format: harmful-train}
        target: refusal
        anchor: {format: benign-train}
      - name: smollm2-deep
        objective: augmented                      # (x, h<=k) -> r
        data: {format: harmful-train}
        anchor: {format: benign-train}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from harness.core import StrictModel, content_hash, with_preset
from harness.data.base import DatasetConfig
from harness.engine.base import EngineSettings
from harness.errors import RecipeError


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field("all-linear", description="peft target_modules")


# Named training settings; keys a recipe sets next to the preset win (as for sampling presets).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Qi et al. 2025's alignment runs (official code): lr 2e-5, linear decay, no warm-up, 10 epochs,
    # 16 safety + 64 utility rows per step, one token mean over both parts. Sized for a GPU.
    "paper": {"lr": 2e-5, "scheduler": "linear", "warmup_steps": 0, "epochs": 10, "batch_size": 16,
              "anchor_batch_size": 64, "mix": "token_mean"},
    # its fine-tuning attacks: the same lr with the official 10 warm-up steps, linear decay, AdamW β1 0.5
    "paper-attack": {"lr": 2e-5, "scheduler": "linear", "warmup_steps": 10, "adam_beta1": 0.5},
    # what a 2-core CPU affords (recipes/align.yaml; README "CPU budget")
    "cpu": {"steps": 60, "batch_size": 2, "anchor_batch_size": 8, "lr": 1e-4, "scheduler": "constant",
            "warmup_steps": 0, "chunk_tokens": 640},
}


class TrainSettings(StrictModel):
    preset: Literal["paper", "paper-attack", "cpu"] | None = Field(None, description=(
        "paper: the paper's alignment budget (lr 2e-5, linear, 10 epochs, 16+64 rows, token-mean mix); "
        "paper-attack: its fine-tuning attacks' lr, 10 warm-up steps and linear decay; cpu: 60 steps of 2+8 rows "
        "at lr 1e-4. Keys set next to the preset win"))
    steps: int = Field(40, ge=1, description="optimizer steps (unless `epochs` is set)")
    epochs: float | None = Field(None, gt=0, description=(
        "passes over `data`: steps = ceil(epochs * rows / (batch_size * grad_accum * processes)); wins over steps"))
    mix: Literal["weighted", "token_mean"] | None = Field(None, description="overrides each model's `mix`")
    batch_size: int = Field(8, ge=1, description="rows of `data` (safety-recovery triples in align recipes) "
                                                  "per micro-batch")
    anchor_batch_size: int = Field(8, ge=0, description="utility-anchor rows per micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW β1 (the paper's fine-tuning attacks: 0.5)")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(320, ge=16)
    chunk_tokens: int = Field(0, ge=0, description=(
        "forward/backward each micro-batch in length-sorted chunks of at most this many padded positions "
        "(same gradient, less padding: faster on CPUs); 0 = the whole micro-batch at once (GPUs)"))
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="auto: bf16 where the GPU/CPU supports it natively")
    lora: LoraSettings | None = None
    checkpoint_every: int = Field(10, ge=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, raw: Any) -> Any:
        return with_preset(raw, TRAIN_PRESETS)

    def steps_for(self, rows: int, processes: int = 1) -> int:
        """Optimizer steps: ``steps``, or ``epochs`` passes over ``rows`` examples."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * rows / (self.batch_size * self.grad_accum * processes)))


class AugmentationSettings(StrictModel):
    p_zero: float = Field(0.5, ge=0.0, le=1.0, description="P(k = 0)")
    max_k: int = Field(100, ge=1, description="k ~ U{1..min(max_k, |h|)} otherwise")


class ContrastSettings(StrictModel):
    """Benign contrast rows (not in the paper): utility anchors cut at a depth drawn as for the
    data rows, (x_b, b<=k) -> the next `window` tokens of b, in the data term beside the
    turn-arounds. Without them the turn-around is learned from harmful rows alone, and a small
    model learns "refuse a few tokens in" for benign answers too (README, "Depth without
    over-refusal")."""

    rows: int = Field(2, ge=1, description="contrast rows per micro-batch (drawn from `anchor`)")
    window: int = Field(32, ge=1, description="tokens of the benign answer supervised after the cut")
    p_zero: float | None = Field(None, ge=0.0, le=1.0, description=(
        "P(k = 0) for contrast rows (default: the augmentation's). k = 0 repeats what the anchors teach; "
        "the turn-arounds inside benign answers happen at k > 0"))
    max_k: int | None = Field(None, ge=1, description=(
        "k ~ U{1..min(max_k, |b| - 1)} otherwise (default: the augmentation's max_k)"))
    unlikelihood: float = Field(0.0, ge=0.0, description=(
        "weight of −log(1 − π(refusal opening)) at each contrast position, the refusal opening being the "
        "first tokens of the refusal targets: pushes down turn-arounds inside benign answers (0: off)"))


class ConstraintSettings(StrictModel):
    beta: float = Field(0.1, gt=0)
    bias_factor: float = Field(20.0, gt=0)
    first_token_bias_factor: float = Field(5.0, gt=0)
    bias_length: int = Field(5, ge=0)
    weight_floor: float = Field(1e-3, ge=0.0, description="per-token weight 2σ(βΔ) is clamped below at this "
                                                           "(official code: 1e-3)")


class AnchorSettings(DatasetConfig):
    """Utility anchor data: benign prompts with responses."""

    responses: Literal["dataset", "self"] = Field(
        "self", description="self: generated by the base model (anchors utility to its own behaviour)")
    max_tokens: int = Field(160, ge=1, description="for responses: self")
    keep_unfinished: bool = Field(False, description=(
        "train on self-written answers cut off at max_tokens too (without an end token). Off: anchors are "
        "complete answers, so every anchor teaches where a turn ends"))


class TrainModelSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$")
    objective: Literal["sft", "augmented", "constrained"]
    data: DatasetConfig
    target: Literal["refusal", "response"] = Field(
        "refusal", description="the supervised field (sft/constrained); augmented always learns the refusal")
    refusals: Literal["column", "templates"] = Field(
        "column", description="where refusals r come from: the dataset's refusal column, or built-in templates")
    anchor: AnchorSettings | None = None
    safety_weight: float = Field(0.2, gt=0.0, le=1.0, description=(
        "α of the paper's Eqn 2: loss = α·(loss on `data`) + (1-α)·(loss on `anchor`), each a token mean "
        "(mix: weighted)"))
    mix: Literal["weighted", "token_mean"] = Field("weighted", description=(
        "weighted: α·data + (1-α)·anchor; token_mean: one token mean over both parts, as the official "
        "code does (the weight then follows the batch sizes and lengths)"))
    augmentation: AugmentationSettings = Field(default_factory=AugmentationSettings)
    contrast: ContrastSettings | None = Field(None, description=(
        "benign contrast rows in the data term (needs `anchor`; not with `constrained`)"))
    constraint: ConstraintSettings = Field(default_factory=ConstraintSettings)
    training: dict[str, Any] = Field(default_factory=dict, description="overrides of the recipe's `training`")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "anchor_weight" in raw:
            raise ValueError("`anchor_weight` was removed: it weighted the anchor term, the reverse of the paper's α. "
                             f"Use `safety_weight` (α on the `data` term; anchor_weight {raw['anchor_weight']} "
                             f"meant safety_weight {1 - float(raw['anchor_weight']):g})")
        return raw

    @model_validator(mode="after")
    def _check(self) -> "TrainModelSpec":
        if self.objective == "augmented" and self.target != "refusal":
            raise ValueError("objective `augmented` learns the refusal after a harmful prefix; `target` must be refusal")
        if self.contrast is not None and self.anchor is None:
            raise ValueError("`contrast` rows are drawn from the utility anchors: set `anchor` too")
        if self.contrast is not None and self.objective == "constrained":
            raise ValueError("`contrast` is for objectives sft and augmented (the constrained loss has no "
                             "reference log-probs for benign rows)")
        return self


class TrainRecipe(StrictModel):
    kind: Literal["train"] = "train"
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$")
    description: str = ""
    base: str = Field(description="model spec of the base model: alias, folder, .gguf, hub id, or a model "
                                  "another training recipe builds ('recipes/align.yaml#smollm2-deep')")
    system_prompt: str | None = None
    training: TrainSettings = Field(default_factory=TrainSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings, description="for generating anchor responses")
    models: list[TrainModelSpec] = Field(min_length=1)
    evaluate: dict[str, Any] | None = Field(
        None, description="an eval recipe body (datasets/attacks/utility…) run over base + built models")

    def model(self, name: str) -> TrainModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise RecipeError(f"training recipe {self.name!r} has no model {name!r}; it builds {[m.name for m in self.models]}")

    def settings_for(self, spec: TrainModelSpec) -> TrainSettings:
        merged = {**self.training.model_dump(), **spec.training}
        try:
            return TrainSettings.model_validate(merged)
        except ValidationError as e:
            raise RecipeError(f"models.{spec.name}.training: {e.errors()[0]['msg']}") from None


def is_train_recipe(raw: dict[str, Any]) -> bool:
    return raw.get("kind") == "train"


def load_train_recipe(path: str | Path, overrides: list[str] | None = None) -> TrainRecipe:
    """A training recipe, with ``--set key=value`` overrides applied (e.g. training.steps=10)."""
    from harness.recipes import format_errors, read_recipe_yaml

    raw = read_recipe_yaml(path, overrides, what="training recipe")
    if not is_train_recipe(raw):
        raise RecipeError(f"{path}: not a training recipe (it needs `kind: train`)")
    try:
        return TrainRecipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_errors(str(path), e)) from None


def content_key(obj: Any) -> str:
    return content_hash(obj)
