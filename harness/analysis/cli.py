"""`harness analyze kl|grad|refusal` and `harness run|validate` on ``kind: analyze`` recipes (the
CLI layer of the depth diagnostics): the commands build a recipe (``harness.analysis.recipe``)
from their flags and run it (``harness.analysis.run``) into ``--out``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from harness.analysis.recipe import analyze_recipe_from_dict, load_analyze_recipe
from harness.analysis.run import analysis_examples, print_results, run_analysis
from harness.errors import HarnessError, RecipeError
from harness.names import check_name

# --------------------------------------------------------------------------- commands


def run_analyze_recipe(args: argparse.Namespace) -> int:
    """`harness run` on a ``kind: analyze`` recipe: results/<run-id>/ (``--out`` is the results
    root, ``--run-id`` the folder, default the recipe name; ``--limit`` caps examples)."""
    recipe = load_analyze_recipe(args.recipe, getattr(args, "set", None))
    run_id = recipe.name if args.run_id is None else check_name(args.run_id, "--run-id", "results/<run-id>/")
    run_dir = Path(args.out or recipe.output_dir) / run_id
    manifest = run_analysis(recipe, run_dir, limit=getattr(args, "limit", None))
    print_results(run_dir, manifest)
    print(f"\n{run_dir}: {', '.join(manifest.files)}, manifest.json")
    return 0


def validate_analyze_recipe(path: str, overrides: list[str] | None = None) -> int:
    """`harness validate` for ``kind: analyze`` recipes: schema, references, datasets and the
    models' specs (a trained model's recipe and name; nothing is built or loaded)."""
    from harness.training.config import load_train_recipe
    from harness.training.registry import find_recipe, is_trained_ref

    recipe = load_analyze_recipe(path, overrides)
    for i, m in enumerate(recipe.models):
        if is_trained_ref(m.ref):
            train_path, _, name = m.ref.partition("#")
            try:
                load_train_recipe(find_recipe(train_path)).model(name)
            except HarnessError as e:
                raise RecipeError(f"{path}: invalid recipe\n  models.{i}.spec: {e}") from None
            print(f"model {m.name}: {m.ref} (trained; built on first run if missing)")
        else:
            print(f"model {m.name}: {m.ref}")
    for a in recipe.analyses:
        print(f"analysis {a.label}: {a.type} over {', '.join(a.model_names())}; "
              f"{len(analysis_examples(a, recipe.limit))} examples ({a.data.label})")
    print(f"{path}: OK — models: {', '.join(m.name for m in recipe.models)}")
    return 0


def _model_name(spec: str) -> str:
    """A label for a model given on the command line: the part after '#', or the file/folder name."""
    base = spec.partition("#")[2] or Path(spec.rstrip("/")).name.removesuffix(".gguf")
    return re.sub(r"[^\w.-]+", "-", base).strip("-") or "model"


def _named_models(values: list[str]) -> list[dict[str, str]]:
    """``[NAME=]SPEC`` arguments as recipe models with distinct names."""
    out: list[dict[str, str]] = []
    for v in values:
        name, sep, spec = v.partition("=")
        if not sep:
            name, spec = _model_name(v), v
        taken = {m["name"] for m in out}
        unique, i = name, 2
        while unique in taken:
            unique, i = f"{name}-{i}", i + 1
        out.append({"name": unique, "spec": spec})
    return out


def _data(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {"format": args.data, "path": args.path, "limit": args.limit}.items() if v is not None}


def _common(args: argparse.Namespace, models: list[dict[str, str]], analysis: dict[str, Any]) -> int:
    source = f"harness analyze {analysis['type']}"
    raw = {"kind": "analyze", "name": f"analyze-{analysis['type']}", "models": models, "analyses": [analysis],
           "device": args.device, "dtype": args.dtype, "system_prompt": args.system_prompt}
    recipe = analyze_recipe_from_dict(raw, source)
    out = Path(args.out or Path("results") / recipe.name)
    manifest = run_analysis(recipe, out)
    print_results(out, manifest)
    print(f"\n{out}: {', '.join(manifest.files)}, manifest.json")
    return 0


def _cmd_kl(args: argparse.Namespace) -> int:
    models = _named_models([args.a, args.b])
    if _model_name(args.a) == _model_name(args.b) and "=" not in args.a + args.b:
        models = [{"name": "a", "spec": args.a}, {"name": "b", "spec": args.b}]
    analysis = {"type": "kl", "pairs": [[models[0]["name"], models[1]["name"]]], "data": _data(args),
                "field": args.field, "max_tokens": args.max_tokens, "batch_size": args.batch_size}
    return _common(args, models, analysis)


def _cmd_grad(args: argparse.Namespace) -> int:
    models = _named_models(args.model)
    analysis = {"type": "grad", "models": [m["name"] for m in models], "data": _data(args), "field": args.field,
                "max_tokens": args.max_tokens, "batch_size": args.batch_size}
    return _common(args, models, analysis)


def _depths(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--depths: expected comma-separated integers, got {text!r}") from None


def _cmd_refusal(args: argparse.Namespace) -> int:
    models = _named_models(args.model)
    prefix: Any = "example" if not args.prefix or args.prefix == ["example"] else args.prefix
    analysis = {"type": "refusal", "models": [m["name"] for m in models], "data": _data(args), "depths": args.depths,
                "prefix": prefix, "prefix_tokens": args.prefix_tokens, "harmful_field": args.field,
                "batch_size": args.batch_size}
    return _common(args, models, analysis)


def _add_shared(p: argparse.ArgumentParser, data: str, field: str, batch_size: int,
                field_help: str = "example field scored as the response", fields: tuple[str, ...] = (
                    "response", "target", "refusal")) -> None:
    p.add_argument("--data", default=data, help=f"dataset format (see `harness list`; default {data})")
    p.add_argument("--path", help="dataset file (for jsonl/csv/advbench/… formats), e.g. "
                                  "/work/shared/data/advbench/harmful_behaviors.csv with --data advbench")
    p.add_argument("--limit", type=int, help="first N examples")
    p.add_argument("--field", default=field, choices=fields,
                   help=f"{field_help} (default {field}; AdvBench has only target)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--system-prompt", help="system prompt (default: the chat template's)")
    p.add_argument("--out", type=Path, help="output folder (default results/analyze-<command>)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("analyze", help="depth diagnostics: KL by position, gradient norm by position, "
                                       "refusal probability by prefill depth")
    asub = a.add_subparsers(dest="analyze_command", required=True)

    kl = asub.add_parser("kl", help="per-token KL(a ‖ b) by response position, teacher-forced",
                         description="Per-token KL(a ‖ b) at response positions 1..N, teacher-forced on (prompt, "
                                     "response) pairs; each model reads the prompt through its own chat template. "
                                     "Writes OUT/kl.csv (a, b, position, n, mean, std, ci95_low, ci95_high), "
                                     "OUT/kl.svg and OUT/manifest.json.")
    kl.add_argument("--a", required=True, metavar="SPEC", help="model a (e.g. recipes/align.yaml#smollm2-shallow)")
    kl.add_argument("--b", required=True, metavar="SPEC", help="model b, the reference (e.g. smollm2-135m-instruct)")
    kl.add_argument("--max-tokens", type=int, default=32, help="response positions 1..N (default 32)")
    _add_shared(kl, "demo", "response", 8)
    kl.set_defaults(func=_cmd_kl)

    g = asub.add_parser("grad", help="per-position cross-entropy and gradient norm on one batch of attack pairs",
                        description="Cross-entropy at response positions 1..N and the norm of its gradient over "
                                    "all parameters, on one batch (the first --batch-size examples) of harmful "
                                    "prompt → harmful response pairs: a fine-tuning attack's first step. Writes "
                                    "OUT/grad.csv (model, position, n, mean_ce, std_ce, grad_norm), "
                                    "OUT/grad_ce.svg, OUT/grad_grad_norm.svg and OUT/manifest.json.")
    g.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC", help="repeatable")
    g.add_argument("--max-tokens", type=int, default=16, help="positions 1..N, one backward pass each (default 16)")
    _add_shared(g, "harmful-train", "response", 8, "example field used as the attack's target")
    g.set_defaults(func=_cmd_grad)

    r = asub.add_parser("refusal", help="log P(refusal prefix | prompt, k harmful tokens) by prefill depth k",
                        description="log P(refusal prefix | prompt, first k tokens of the harmful response) for "
                                    "each depth k, teacher-forced (examples shorter than k are skipped). Writes "
                                    "OUT/refusal.csv (model, depth, n, skipped, mean_logprob, std_logprob, "
                                    "ci95_low, ci95_high, mean_prob), OUT/refusal.svg and OUT/manifest.json.")
    r.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC", help="repeatable")
    r.add_argument("--depths", type=_depths, default=[0, 5, 10, 20, 40], help="e.g. 0,5,10,20,40")
    r.add_argument("--prefix", action="append", metavar="TEXT",
                   help="a refusal opening to score (repeatable, e.g. --prefix 'I cannot' --prefix \"I'm sorry\"); "
                        "default: each example's own refusal")
    r.add_argument("--prefix-tokens", type=int, default=8, help="tokens of the example's refusal (default 8)")
    _add_shared(r, "demo", "response", 16, "example field prefilled as the harmful text", ("response", "target"))
    r.set_defaults(func=_cmd_refusal)
