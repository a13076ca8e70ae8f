"""YAML recipes validated into typed configs; every error names the file and key.

A recipe lists models × datasets × attacks × judges. Attacks and judges are validated
by the config class registered for their ``type``, so new attack kinds (decoding
sweeps, GCG, fine-tuning rounds) plug in without touching this schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from harness.core import AttackConfig, JudgeConfig, StrictModel, set_dotted
from harness.data.base import DatasetConfig
from harness.engine.base import EngineSettings
from harness.errors import RecipeError
from harness.names import PlainName
from harness.registry import ATTACKS, DATASET_FORMATS, JUDGES, UTILITY_TASKS, Registry


class ModelConfig(StrictModel):
    name: str = Field(description="label in results tables")
    spec: str | None = Field(None, description="alias, HF folder, .gguf file, hub id, or a trained model "
                                                "'recipes/align.yaml#smollm2-deep'")
    train: str | None = Field(None, description="a model a training recipe builds: 'recipes/align.yaml#smollm2-deep'")

    @property
    def ref(self) -> str:
        """The model spec, whichever key gave it."""
        return self.spec if self.spec is not None else str(self.train)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if (self.spec is None) == (self.train is None):
            raise ValueError("give exactly one of `spec` or `train`")
        return self


class Recipe(StrictModel):
    name: PlainName = Field(pattern=r"^[A-Za-z0-9][\w.-]*$", description="the default run id: results/<name>/")
    description: str = ""
    seed: int = 0
    system_prompt: str | None = Field(None, description="None keeps the chat template's default")
    models: list[ModelConfig] = Field(min_length=1)
    datasets: list[DatasetConfig] = Field(default_factory=list)
    attacks: list[Any] = Field(default_factory=list)
    judges: list[Any] = Field(default_factory=lambda: [{"type": "keyword"}])
    utility: list[Any] = Field(default_factory=list, description="over-refusal and utility tasks, run for every model")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limit: int | None = Field(None, ge=1, description="examples per dataset (for smoke runs)")
    output_dir: str = "results"

    @model_validator(mode="after")
    def _unique_names(self) -> "Recipe":
        if not self.attacks and not self.utility:
            raise ValueError("nothing to run: give `attacks` (with `datasets`) and/or `utility`")
        if self.attacks and not self.datasets:
            raise ValueError("`attacks` need `datasets` to attack")
        for what, names in (("models", [m.name for m in self.models]),
                            ("datasets", [d.label for d in self.datasets])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate name(s) {dupes}")
        return self

    @property
    def attack_configs(self) -> list[AttackConfig]:
        return self.attacks  # typed by load_recipe

    @property
    def judge_configs(self) -> list[JudgeConfig]:
        return self.judges

    @property
    def utility_tasks(self) -> list[Any]:
        return self.utility


def format_errors(source: str, err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        loc = prefix + loc if loc else prefix.rstrip(".") or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return f"{source}: invalid recipe\n" + "\n".join(lines)


def typed_list(source: str, raw: list[Any], key: str, registry: Registry) -> list[Any]:
    """Each item of a recipe's plug-in list (``attacks``, ``judges``, ``utility``) as the config
    class its ``type`` names in ``registry``; errors name the file and the key, labels must be unique."""
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "type" not in item:
            raise RecipeError(f"{source}: invalid recipe\n  {key}.{i}: needs a `type`; allowed: {registry.names()}")
        try:
            cls = registry.get(item["type"])
        except RecipeError as e:
            raise RecipeError(f"{source}: invalid recipe\n  {key}.{i}.type: {e}") from None
        try:
            out.append(cls.model_validate(item))
        except ValidationError as e:
            raise RecipeError(format_errors(source, e, f"{key}.{i}.")) from None
    labels = [c.label for c in out]
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes:
        raise RecipeError(f"{source}: invalid recipe\n  {key}: duplicate label(s) {dupes}; set `name` to tell them apart")
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub.0=value`` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected key=value (e.g. engine.backend=hf)")
        try:
            set_dotted(raw, key, yaml.safe_load(value))
        except ValueError as e:
            raise RecipeError(f"--set {key}: {e}") from None
    return raw


def read_recipe_kind(path: str | Path) -> str:
    """"train" for training recipes (``kind: train``), "analyze" for ``kind: analyze``, else "eval"."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "eval"  # load_recipe reports the problem with its location
    kind = raw.get("kind") if isinstance(raw, dict) else None
    return kind if kind in ("train", "analyze") else "eval"


def read_recipe_yaml(path: str | Path, overrides: list[str] | None = None, what: str = "recipe") -> dict[str, Any]:
    """The recipe file as a mapping, with ``--set`` overrides applied; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a {what} is a YAML mapping with keys name, models, …")
    return apply_overrides(raw, overrides or [])


def follow_engine(judge: Any, engine: EngineSettings) -> Any:
    """``judge`` with its local engine on the recipe's backend where the recipe names one and
    the judge does not (a recipe on ``hf`` never starts vLLM for a judge); chains member by member."""
    if "backend" not in engine.model_fields_set:
        return judge
    update: dict[str, Any] = {}
    own = getattr(judge, "engine", None)
    if isinstance(own, EngineSettings) and "backend" not in own.model_fields_set:
        update["engine"] = own.model_copy(update={"backend": engine.backend})
    members = getattr(judge, "judges", None)
    if isinstance(members, list) and members and all(isinstance(m, JudgeConfig) for m in members):
        update["judges"] = [follow_engine(m, engine) for m in members]
    return judge.model_copy(update=update) if update else judge


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    return recipe_from_dict(read_recipe_yaml(path, overrides), str(path))


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_errors(source, e)) from None
    recipe.attacks = typed_list(source, recipe.attacks, "attacks", ATTACKS)
    recipe.judges = [follow_engine(j, recipe.engine) for j in typed_list(source, recipe.judges, "judges", JUDGES)]
    recipe.utility = typed_list(source, recipe.utility, "utility", UTILITY_TASKS)
    for i, d in enumerate(recipe.datasets):
        if d.format not in DATASET_FORMATS.names():
            raise RecipeError(f"{source}: invalid recipe\n  datasets.{i}.format: unknown format {d.format!r}; "
                              f"allowed: {DATASET_FORMATS.names()}")
    return recipe
