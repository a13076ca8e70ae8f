"""`harness analyze kl|grad|refusal` and `kind: analyze` recipes (CLI layer): depth diagnostics.

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

``harness run`` writes ``results/<run-id>/``: per analysis ``<label>.csv`` and SVG charts,
and ``manifest.json`` (the recipe, every model's fingerprint, dataset hashes, settings,
timings, packages, git commit). The ``harness analyze`` commands build the same recipe from
their flags and write into ``--out``. The maths lives in ``harness.analyze``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import Field, ValidationError, field_validator

from harness.core import DATASET_FORMATS, Example, StrictModel, content_hash, dataset_hash
from harness.data.base import DatasetConfig
from harness.errors import HarnessError, ModelError, RecipeError
from harness.names import PlainName, check_name
from harness.recipes import ModelConfig, format_errors, read_recipe_yaml

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


# --------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    name: str
    resolved: Any  # ResolvedModel
    model: Any  # torch.nn.Module
    tokenizer: Any
    builder: Any  # PromptBuilder


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device: cuda was asked for but torch sees no GPU; use device: auto or cpu")
    return device


class Models:
    """The recipe's models: resolved up front (fingerprints; trained ones built if missing),
    weights loaded on first use and dropped after the last analysis that needs them."""

    def __init__(self, recipe: AnalyzeRecipe, device: str, progress: bool = True) -> None:
        from harness.training.registry import resolve_any

        used = {n for a in recipe.analyses for n in a.model_names()}
        self.resolved = {m.name: resolve_any(m.ref) for m in recipe.models if m.name in used}
        self.device, self.dtype, self.system_prompt = device, recipe.dtype, recipe.system_prompt
        self.progress = progress
        self._loaded: dict[str, LoadedModel] = {}

    def get(self, name: str) -> LoadedModel:
        if name not in self._loaded:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from harness.prompts import PromptBuilder

            r = self.resolved[name]
            try:
                tok = AutoTokenizer.from_pretrained(r.path)
                model = AutoModelForCausalLM.from_pretrained(r.path, dtype=getattr(torch, self.dtype))
            except (OSError, ValueError) as e:
                raise ModelError(f"model {name} ({r.spec}): cannot load {r.path}: {e}") from e
            model.to(self.device).eval()
            self._loaded[name] = LoadedModel(name, r, model, tok, PromptBuilder(tok, self.system_prompt))
        return self._loaded[name]

    def keep_only(self, names: set[str]) -> None:
        for n in [n for n in self._loaded if n not in names]:
            del self._loaded[n]


def _same_vocabulary(a: LoadedModel, b: LoadedModel) -> None:
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise ModelError(f"KL({a.name} ‖ {b.name}): the two models' tokenizers differ; a per-token KL needs one "
                         "vocabulary")
    if a.resolved.fingerprint.get("chat_template_sha256") != b.resolved.fingerprint.get("chat_template_sha256"):
        print(f"note: {a.name} and {b.name} have different chat templates; each model reads the prompts "
              "through its own", file=sys.stderr)


# --------------------------------------------------------------------------- running analyses


Runner = Callable[[Any, list[Example], Models, Path, bool], list[str]]


def _run_kl(a: KLAnalysis, examples: list[Example], models: Models, out: Path, progress: bool) -> list[str]:
    from harness.analyze import encode_pairs, kl_by_position, pad_token_id, write_kl

    results = {}
    for name_a, name_b in a.pairs:
        ma, mb = models.get(name_a), models.get(name_b)
        _same_vocabulary(ma, mb)
        # each model reads the prompt through its own chat template; the response ids are shared
        pairs = encode_pairs(examples, ma.builder, a.field, a.max_tokens, source=a.data.label)
        pairs_b = encode_pairs(examples, mb.builder, a.field, a.max_tokens, source=a.data.label)
        results[(name_a, name_b)] = kl_by_position(ma.model, mb.model, pairs, pad_token_id(ma.tokenizer),
                                                   a.max_tokens, a.batch_size, progress,
                                                   pairs_b=None if pairs_b == pairs else pairs_b)
    return write_kl(out, a.label, results)


def _run_grad(a: GradAnalysis, examples: list[Example], models: Models, out: Path, progress: bool) -> list[str]:
    from harness.analyze import encode_pairs, grad_by_position, pad_token_id, write_grad

    results = {}
    for name in a.models:
        m = models.get(name)
        pairs = encode_pairs(examples, m.builder, a.field, a.max_tokens, source=a.data.label)
        results[name] = grad_by_position(m.model, pairs, pad_token_id(m.tokenizer), a.max_tokens, progress)
    return write_grad(out, a.label, results)


def _run_refusal(a: RefusalAnalysis, examples: list[Example], models: Models, out: Path, progress: bool) -> list[str]:
    from harness.analyze import refusal_by_depth, refusal_prefixes, write_refusal

    results = {}
    for name in a.models:
        m = models.get(name)
        try:  # a prefix set is checked once tokenized: one prefix may be a token-prefix of another
            refusal_prefixes(examples, m.builder, a.prefix, a.prefix_tokens, a.data.label)
        except ValueError as e:
            raise RecipeError(f"analysis {a.label}: prefix: {e}") from None
        results[name] = refusal_by_depth(m.model, examples, m.builder, a.depths, a.prefix, a.prefix_tokens,
                                         a.harmful_field, a.batch_size, progress, source=a.data.label)
    return write_refusal(out, a.label, results)


RUNNERS: dict[str, Runner] = {"kl": _run_kl, "grad": _run_grad, "refusal": _run_refusal}


def _examples(a: Any, limit: int | None) -> list[Example]:
    from harness.data import load_dataset

    caps = [n for n in (limit, a.data.limit, a.max_examples) if n is not None]
    return load_dataset(a.data.model_copy(update={"limit": min(caps)}) if caps else a.data)


def _clear_previous(run_dir: Path) -> None:
    """A run folder holds one analysis run: drop the files the previous one listed. A folder
    holding an evaluation run is refused rather than mixed with."""
    import json

    from harness.store import MANIFEST, SAMPLES

    path = run_dir / MANIFEST
    if (run_dir / SAMPLES).exists():
        raise HarnessError(f"{run_dir} holds an evaluation run; write the analysis elsewhere (--run-id or --out)")
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        old = {}
    for name in old.get("files", []) if old.get("kind") == "analyze" else []:
        if isinstance(name, str) and re.fullmatch(r"[\w.-]+", name):
            (run_dir / name).unlink(missing_ok=True)


def _manifest(recipe: AnalyzeRecipe, run_dir: Path, limit: int | None, device: str, models: Models) -> dict[str, Any]:
    from harness import hardware
    from harness.runner import git_commit, package_versions
    from harness.store import now

    dumped = recipe.model_dump(mode="json")
    return {"schema": 1, "kind": "analyze", "run_id": run_dir.name, "status": "running", "started": now(),
            "command": sys.argv, "recipe": dumped, "recipe_hash": content_hash(dumped), "limit": limit,
            "device": device, "dtype": recipe.dtype,
            "models": {n: r.to_json() for n, r in models.resolved.items()}, "analyses": {}, "files": [],
            "hardware": hardware.describe(), "packages": package_versions(), "git": git_commit()}


def run_analysis(recipe: AnalyzeRecipe, run_dir: Path, limit: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run every analysis of ``recipe`` into ``run_dir``; returns the manifest it wrote."""
    from harness.store import MANIFEST, RunLock, now, write_json

    run_dir = Path(run_dir)
    limit = limit or recipe.limit
    with RunLock(run_dir):
        _clear_previous(run_dir)
        device = resolve_device(recipe.device)
        models = Models(recipe, device, progress)
        manifest = _manifest(recipe, run_dir, limit, device, models)
        write_json(run_dir / MANIFEST, manifest)
        try:
            for i, a in enumerate(recipe.analyses):
                start = time.perf_counter()
                examples = _examples(a, limit)
                if progress:
                    print(f"{a.label}: {a.type} on {len(examples)} examples of {a.data.label}", file=sys.stderr)
                files = RUNNERS[a.type](a, examples, models, run_dir, progress)
                manifest["analyses"][a.label] = {
                    "type": a.type, "config": a.model_dump(mode="json"), "files": files,
                    "dataset": {"label": a.data.label, "n": len(examples), "hash": dataset_hash(examples)},
                    "seconds": round(time.perf_counter() - start, 2)}
                manifest["files"] += files
                write_json(run_dir / MANIFEST, manifest)
                models.keep_only({n for later in recipe.analyses[i + 1:] for n in later.model_names()})
            manifest.update(status="complete")
        except BaseException as e:
            manifest.update(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            manifest.update(finished=now())
            write_json(run_dir / MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------- printing


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def print_results(run_dir: Path, manifest: dict[str, Any], max_rows: int = 12) -> None:
    """A short table per CSV: the first rows of each model (or pair)."""
    import csv

    for label, entry in manifest["analyses"].items():
        table = next(f for f in entry["files"] if f.endswith(".csv"))
        with open(run_dir / table, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        print(f"\n{label} ({entry['type']}, n = {entry['dataset']['n']} from {entry['dataset']['label']}): "
              f"{run_dir / table}")
        cols = [c for c in rows[0] if c not in ("ci95_low", "ci95_high")]
        groups: dict[str, list[dict[str, str]]] = {}
        for r in rows:
            groups.setdefault(" ‖ ".join(r[c] for c in ("model", "a", "b") if c in r), []).append(r)
        for group, grows in groups.items():
            print(f"  {group}")
            print("    " + "  ".join(f"{c:>12}" for c in cols if c not in ("model", "a", "b")))
            for r in grows[:max_rows]:
                cells = [_fmt(float(r[c])) if c not in ("position", "depth", "n", "skipped") else r[c]
                         for c in cols if c not in ("model", "a", "b")]
                print("    " + "  ".join(f"{c:>12}" for c in cells))


# --------------------------------------------------------------------------- commands


def run_analyze_recipe(args: argparse.Namespace) -> int:
    """`harness run` on a ``kind: analyze`` recipe: results/<run-id>/ (``--out`` is the results
    root, ``--run-id`` the folder, default the recipe name; ``--limit`` caps examples)."""
    recipe = load_analyze_recipe(args.recipe, getattr(args, "set", None))
    run_id = recipe.name if args.run_id is None else check_name(args.run_id, "--run-id", "results/<run-id>/")
    run_dir = Path(args.out or recipe.output_dir) / run_id
    manifest = run_analysis(recipe, run_dir, limit=getattr(args, "limit", None))
    print_results(run_dir, manifest)
    print(f"\n{run_dir}: {', '.join(manifest['files'])}, manifest.json")
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
              f"{len(_examples(a, recipe.limit))} examples ({a.data.label})")
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
    print(f"\n{out}: {', '.join(manifest['files'])}, manifest.json")
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
