"""`harness` command line: run, validate, list."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from harness.errors import HarnessError

# Modules with `add_commands(subparsers)`; each registers its own sub-commands.
COMMAND_MODULES: list[str] = ["harness.training.cli", "judges.cli", "harness.analysis.cli", "harness.results.cli"]


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.names import check_name
    from harness.recipes import load_recipe, read_recipe_kind
    from harness.run.runner import run_recipe
    from harness.run.summary import print_scorecard_file, print_tables

    if args.run_id is not None:  # before any work: a training recipe builds its models first
        check_name(args.run_id, "--run-id", "the run folder results/<run-id>/")
    if read_recipe_kind(args.recipe) == "train":
        from harness.training.cli import run_train_recipe

        return run_train_recipe(args)
    if read_recipe_kind(args.recipe) == "analyze":
        from harness.analysis.cli import run_analyze_recipe

        return run_analyze_recipe(args)
    recipe = load_recipe(args.recipe, args.set)
    result = run_recipe(recipe, out_dir=args.out, run_id=args.run_id, limit=args.limit)
    print_tables(result.summary)
    print_scorecard_file(result.run_dir)
    print(f"\n{result.run_dir}: {result.samples} samples ({result.generated} generated, {result.from_cache} "
          f"from cache, {result.skipped} skipped)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from harness.data import load_dataset
    from harness.recipes import load_recipe, read_recipe_kind

    if read_recipe_kind(args.recipe) == "train":
        from harness.training.registry import validate_train_recipe

        return validate_train_recipe(args.recipe, args.set)
    if read_recipe_kind(args.recipe) == "analyze":
        from harness.analysis.cli import validate_analyze_recipe

        return validate_analyze_recipe(args.recipe, args.set)
    recipe = load_recipe(args.recipe, args.set)
    for d in recipe.datasets:
        n = len(load_dataset(d, synth=False))
        synth = f"; column {d.synth.field} to be written by {d.synth.model}" if d.synth else ""
        print(f"dataset {d.label}: {n} examples ({d.format}{synth})")
    for t in recipe.utility_tasks:
        print(f"utility {t.label}: {len(t.load())} examples ({t.type})")
    models = ", ".join(m.name for m in recipe.models)
    attacks = ", ".join(a.label for a in recipe.attack_configs)
    judges = ", ".join(j.label for j in recipe.judge_configs)
    print(f"{args.recipe}: OK — models: {models}; attacks: {attacks}; judges: {judges}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from harness.models import known_models
    from harness.registry import ATTACKS, DATASET_FORMATS, ENGINES, JUDGES, UTILITY_TASKS

    sections = [
        ("models (aliases; also: an HF folder, a .gguf file, a hub id org/name[@rev], or recipe.yaml#model)",
         known_models()),
        ("datasets (recipe `datasets[].format`)", DATASET_FORMATS.describe()),
        ("attacks (recipe `attacks[].type`)", ATTACKS.describe()),
        ("judges (recipe `judges[].type`)", JUDGES.describe()),
        ("utility tasks (recipe `utility[].type`)", UTILITY_TASKS.describe()),
        ("engine backends (recipe `engine.backend`)", ENGINES.describe()),
    ]
    for title, items in sections:
        print(title)
        for name, doc in items.items():
            print(f"  {name:<24} {doc}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Safety-depth evaluation and attack harness.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run a recipe and write results/<run-id>/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a recipe (or build a training recipe's models and evaluate them).",
        epilog="Run folders: results/<run-id>/ (default run id: the recipe name) holds exactly one\n"
               "evaluation, the one its last invocation planned. It is locked while a run writes it and\n"
               "rewritten at the end from the content-addressed caches in results/.cache/, so a changed\n"
               "recipe, --limit or --set replaces its tables instead of mixing with them, and a\n"
               "repeated or resumed run regenerates nothing. history.jsonl lists every invocation.\n"
               "Keep two configurations side by side with two --run-id values.")
    run.add_argument("recipe", help="recipe YAML, e.g. recipes/prefill.yaml")
    run.add_argument("--limit", type=int, help="examples per dataset (smoke runs)")
    run.add_argument("--out", type=Path, help="results root (default: the recipe's output_dir, 'results')")
    run.add_argument("--run-id", help="results sub-folder (default: the recipe name), a plain name (no / or \\, not "
                                      ". or ..); re-running the same recipe resumes from the caches, a different "
                                      "one replaces its tables")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe key, e.g. --set engine.backend=hf --set attacks.0.depths=[0,5]")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser("validate", help="check a recipe and its datasets without running")
    val.add_argument("recipe")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for run")
    val.set_defaults(func=_cmd_validate)

    ls = sub.add_parser("list", help="list model aliases, dataset formats, attacks and judges")
    ls.set_defaults(func=_cmd_list)

    for module in COMMAND_MODULES:  # each adds its own sub-commands
        importlib.import_module(module).add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:  # vLLM logs every weight load; keep the console for progress and tables
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        return args.func(args)
    except HarnessError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
