"""`harness train`, `harness data synth`, and `harness run` on a training recipe (CLI layer)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from harness.training.registry import build_all

    built = build_all(args.recipe, args.model or None, force=args.force, overrides=args.set)
    for name, m in built.items():
        print(f"{name}: {m.path}  (fingerprint {m.fingerprint_id})")
    return 0


def run_train_recipe(args: argparse.Namespace) -> int:
    """`harness run` on a training recipe: build every model (with ``--set`` overrides), then run
    its `evaluate:` body (if any) over the base and the built models."""
    from harness.run.runner import run_recipe
    from harness.run.summary import print_scorecard_file, print_tables
    from harness.training.config import load_train_recipe
    from harness.training.registry import build_all, evaluation_recipe, find_recipe

    path = find_recipe(args.recipe)
    recipe = load_train_recipe(path, args.set)
    built = build_all(path, overrides=args.set)
    for name, m in built.items():
        print(f"{name}: {m.path}")
    if not recipe.evaluate:
        return 0
    if args.set:  # the evaluation names the built models directly, so it sees the overridden builds
        evaluation = evaluation_recipe(recipe, path, [])
        from harness.recipes import ModelConfig

        evaluation.models += [ModelConfig(name=n, spec=str(m.path)) for n, m in built.items()]
    else:
        evaluation = evaluation_recipe(recipe, path, list(built))
    result = run_recipe(evaluation, out_dir=args.out, run_id=args.run_id, limit=args.limit)
    print_tables(result.summary)
    print_scorecard_file(result.run_dir)
    print(f"\n{result.run_dir}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from harness.data import load_dataset
    from harness.data.base import DatasetConfig
    from harness.models import resolve_model
    from harness.engine.base import EngineSettings
    from harness.synth import generate_responses
    from harness.training.data import save_jsonl

    examples = load_dataset(DatasetConfig(format=args.format, path=args.path, limit=args.limit))
    model = resolve_model(args.model)
    engine = EngineSettings(backend=args.backend)
    texts = generate_responses(model, [e.prompt for e in examples], engine, args.max_tokens)
    rows = []
    for e, (t, finished) in zip(examples, texts):
        row = {"id": e.id, "prompt": e.prompt, "category": e.category, args.field: t, "finished": finished}
        if e.refusal and args.field != "refusal":
            row["refusal"] = e.refusal
        rows.append(row)
    save_jsonl(Path(args.out), rows)
    print(f"wrote {len(rows)} rows to {args.out} ({args.field} from {args.model}); "
          f"use it as {{format: jsonl, path: {args.out}}}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="build the models of a training recipe (cached by content)")
    t.add_argument("recipe", help="training recipe (kind: train), e.g. recipes/align.yaml")
    t.add_argument("--model", action="append", help="build only this model (repeatable)")
    t.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training-recipe key, e.g. --set training.steps=10")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("data", help="build data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="generate a response column with a model (e.g. harmful h from an unaligned model)")
    s.add_argument("--model", required=True, help="model spec that writes the responses")
    s.add_argument("--format", required=True, help="dataset format of the prompts (see `harness list`)")
    s.add_argument("--path", help="dataset path (for non-bundled formats)")
    s.add_argument("--limit", type=int)
    s.add_argument("--field", default="response", help="column to write (default: response)")
    s.add_argument("--max-tokens", type=int, default=160)
    s.add_argument("--backend", default="auto", choices=["auto", "vllm", "hf"])
    s.add_argument("--out", required=True, help="output JSONL")
    s.set_defaults(func=_cmd_synth)
