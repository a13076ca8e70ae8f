"""Build trained models on demand, cached by the content of what made them.

A model is named ``<training recipe>#<model name>`` (e.g. ``recipes/align.yaml#smollm2-deep``).
Its folder is ``<cache>/trained/<name>-<key>/`` where ``key`` hashes the model's training
spec, the effective training settings, the base model's fingerprint, the training data
and the anchor responses, so editing any of them builds a new model and an unchanged
recipe reuses the old one.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.core import Example
from harness.data import load_dataset
from harness.errors import RecipeError
from harness.models import ResolvedModel, cache_dir, resolve_model
from harness.prompts import PromptBuilder
from harness.training.config import TrainModelSpec, TrainRecipe, content_key, load_train_recipe
from harness.training.data import TrainPair, assert_disjoint, build_pairs, save_jsonl
from harness.turns import end_of_turn_id

TRAINING_CODE_VERSION = 3  # bump when a change to the trainer changes what a recipe builds
ROOT = Path(__file__).resolve().parents[2]


def _examples_key(examples: list[Example]) -> str:
    return content_key([(e.id, e.prompt, e.response, e.refusal, e.target) for e in examples])


def find_recipe(path: str) -> Path:
    p = Path(path)
    for candidate in (p, ROOT / p):
        if candidate.is_file():
            return candidate
    raise RecipeError(f"training recipe {path!r} not found (looked in . and {ROOT})")


def anchor_pairs(recipe: TrainRecipe, spec: TrainModelSpec, base: ResolvedModel, builder: PromptBuilder,
                 end_id: int, progress: bool = True) -> list[TrainPair]:
    """Utility anchors; with ``responses: self`` the base model writes them (cached)."""
    if spec.anchor is None:
        return []
    examples = load_dataset(spec.anchor, backend=recipe.engine.backend)
    if spec.anchor.responses == "self":
        key = content_key({"base": base.fingerprint, "data": _examples_key(examples), "max_tokens": spec.anchor.max_tokens,
                           "system": recipe.system_prompt})
        path = cache_dir() / "anchors" / f"{spec.anchor.label}-{key}.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            responses = [(r["response"], r["finished"]) for r in rows]
        else:
            from harness.synth import generate_responses

            responses = generate_responses(base, [e.prompt for e in examples], recipe.engine, spec.anchor.max_tokens,
                                           system_prompt=recipe.system_prompt, progress=progress)
            save_jsonl(path, [{"id": e.id, "prompt": e.prompt, "response": r, "finished": f}
                              for e, (r, f) in zip(examples, responses)])
        # a cut-off answer kept (keep_unfinished) is trained without an end token
        examples = [Example(e.id, e.prompt, e.category, response=r, meta={"finished": f})
                    for e, (r, f) in zip(examples, responses) if r and (f or spec.anchor.keep_unfinished)]
    pairs = build_pairs(examples, builder, "response", end_id, with_harmful=False, source=spec.anchor.label)
    # a row longer than max_length would lose its end token to truncation: it would teach going on
    max_length = recipe.settings_for(spec).max_length
    fits = [p for p in pairs if len(p.prompt_ids) + len(p.target_ids) <= max_length]
    if progress and len(fits) < len(pairs):
        print(f"{spec.name}: {len(pairs) - len(fits)} of {len(pairs)} anchors exceed max_length {max_length}; left out")
    if not fits:
        raise RecipeError(f"{spec.name}: no utility anchor fits in training.max_length {max_length} "
                          f"(anchor.max_tokens {spec.anchor.max_tokens}); raise max_length")
    return fits


def model_key(recipe: TrainRecipe, spec: TrainModelSpec, base: ResolvedModel,
              save_steps: tuple[int, ...] = ()) -> str:
    main = load_dataset(spec.data, backend=recipe.engine.backend)
    anchor = load_dataset(spec.anchor, backend=recipe.engine.backend) if spec.anchor else []
    # Only what the recipe sets is hashed, so a new option with a default never invalidates
    # existing builds; a change of behaviour bumps TRAINING_CODE_VERSION instead.
    return content_key({
        "spec": spec.model_dump(mode="json", exclude={"training"}, exclude_defaults=True),
        # the preset's values are in the fields; its name alone changes nothing, nor does chunking
        "settings": recipe.settings_for(spec).model_dump(mode="json", exclude_defaults=True,
                                                               exclude={"preset", "chunk_tokens"}),
        "system_prompt": recipe.system_prompt,
        "base": base.fingerprint,
        "data": _examples_key(main),
        "anchor": _examples_key(anchor),
        "code": TRAINING_CODE_VERSION,
        **({"save_steps": sorted(save_steps)} if save_steps else {}),
    })


def build_model(recipe: TrainRecipe, spec: TrainModelSpec, recipe_path: Path | None = None,
                progress: bool = True, force: bool = False, save_steps: tuple[int, ...] | list[int] = ()
                ) -> ResolvedModel:
    """Train ``spec`` unless a finished build with the same key is cached; resumes a partial one.

    With ``save_steps`` the intermediate models after those optimizer steps are kept too
    (``build_rounds`` returns them)."""
    save_steps = tuple(sorted(set(save_steps)))
    from transformers import AutoTokenizer

    from harness.data.base import DatasetConfig
    from harness.training.trainer import Trainer

    base = resolve_any(recipe.base)
    key = model_key(recipe, spec, base, save_steps)
    work = cache_dir() / "trained" / f"{spec.name}-{key}"
    done = work / "provenance.json"
    if done.exists() and not force:
        return _resolved(recipe, spec, work)
    if force and done.exists():
        done.unlink()
    assert_disjoint(load_dataset(spec.data, backend=recipe.engine.backend), load_dataset(DatasetConfig(format="demo")),
                    f"{spec.name}: data")
    tok = AutoTokenizer.from_pretrained(base.path)
    builder = PromptBuilder(tok, recipe.system_prompt)
    anchors = anchor_pairs(recipe, spec, base, builder, end_of_turn_id(tok), progress)
    if progress:
        print(f"building {spec.name} ({spec.objective}) from {recipe.base} into {work}")
    Trainer(recipe, spec, base, work, anchors, progress).train(save_steps=save_steps)
    provenance = {
        "name": spec.name, "key": key, "recipe": str(recipe_path) if recipe_path else None,
        "recipe_name": recipe.name, "base": base.to_json(), "spec": spec.model_dump(mode="json"),
        "settings": recipe.settings_for(spec).model_dump(mode="json"),
        "data": {"main": spec.data.model_dump(mode="json"), "main_file": "train_data.jsonl",
                 "anchor": spec.anchor.model_dump(mode="json") if spec.anchor else None,
                 "anchor_file": "anchor_data.jsonl"},
        "code_version": TRAINING_CODE_VERSION,
    }
    (work / "model" / "harness_provenance.json").write_text(json.dumps(provenance, indent=2))
    done.write_text(json.dumps(provenance, indent=2))
    return _resolved(recipe, spec, work)


def _resolved(recipe: TrainRecipe, spec: TrainModelSpec, work: Path, folder: str = "model",
              suffix: str = "") -> ResolvedModel:
    m = resolve_model(str(work / folder))
    return ResolvedModel(spec=f"{recipe.name}#{spec.name}{suffix}", path=m.path, source="trained",
                         fingerprint=m.fingerprint)


def build_rounds(recipe: TrainRecipe, spec: TrainModelSpec, save_steps: list[int] | tuple[int, ...],
                 progress: bool = True) -> list[ResolvedModel]:
    """The models after each of ``save_steps`` optimizer steps of one training run (built if
    missing, cached like any build); the last is the finished model when it is the last step."""
    final = build_model(recipe, spec, progress=progress, save_steps=save_steps)
    work = final.path.parent
    steps = recipe.settings_for(spec).steps
    return [final if n == steps else _resolved(recipe, spec, work, f"rounds/step-{n:06d}", f"@step{n}")
            for n in sorted(set(save_steps))]


def build_all(recipe_path: str | Path, names: list[str] | None = None, progress: bool = True,
              force: bool = False, overrides: list[str] | None = None) -> dict[str, ResolvedModel]:
    path = find_recipe(str(recipe_path))
    recipe = load_train_recipe(path, overrides)
    specs = [recipe.model(n) for n in names] if names else recipe.models
    return {s.name: build_model(recipe, s, path, progress, force) for s in specs}


def resolve_trained(ref: str) -> ResolvedModel:
    """``recipes/align.yaml#smollm2-deep`` -> the built model (building it if missing)."""
    path, sep, name = ref.partition("#")
    if not sep or not name:
        raise RecipeError(f"train: {ref!r} should look like 'recipes/align.yaml#model-name'")
    return build_all(path, [name])[name]


def is_trained_ref(spec: str) -> bool:
    path, sep, name = spec.partition("#")
    return bool(sep) and path.endswith((".yaml", ".yml"))


def resolve_any(spec: str) -> ResolvedModel:
    """Any model spec: an alias, HF folder, .gguf, hub id, or ``recipe.yaml#model`` (built if missing)."""
    return resolve_trained(spec) if is_trained_ref(spec) else resolve_model(spec)


def evaluation_recipe(recipe: TrainRecipe, path: Path, names: list[str]):
    """The recipe's `evaluate:` body as an eval recipe over base + the built models."""
    from harness.recipes import recipe_from_dict

    body = dict(recipe.evaluate or {})
    body.setdefault("name", recipe.name)
    body.setdefault("models", [{"name": "base", "spec": recipe.base}]
                    + [{"name": n, "train": f"{path}#{n}"} for n in names])
    return recipe_from_dict(body, f"{path}: evaluate")


def validate_train_recipe(recipe_path: str, overrides: list[str] | None = None) -> int:
    """`harness validate` for training recipes: schema, data, disjointness, evaluate body."""
    from harness.data.base import DatasetConfig

    path = find_recipe(recipe_path)
    recipe = load_train_recipe(path, overrides)
    demo = load_dataset(DatasetConfig(format="demo"))
    for spec in recipe.models:
        recipe.settings_for(spec)
        main = load_dataset(spec.data, synth=False)  # validate loads no model; synth runs at build time
        assert_disjoint(main, demo, f"{spec.name}: data")
        anchor = len(load_dataset(spec.anchor, synth=False)) if spec.anchor else 0
        print(f"model {spec.name}: {spec.objective}, {len(main)} examples ({spec.data.label}), {anchor} anchors")
    if recipe.evaluate:
        ev = evaluation_recipe(recipe, path, [m.name for m in recipe.models])
        for t in ev.utility_tasks:
            print(f"evaluate utility {t.label}: {len(t.load())} examples")
    print(f"{recipe_path}: OK — builds {', '.join(m.name for m in recipe.models)} from {recipe.base}")
    return 0
