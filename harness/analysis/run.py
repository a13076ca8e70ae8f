"""Running a ``kind: analyze`` recipe: ``results/<run-id>/`` gets, per analysis, ``<label>.csv``
and SVG charts, and ``manifest.json`` (the recipe, every model's fingerprint, dataset hashes,
settings, timings, packages, git commit). Models are loaded on first use and dropped after the
last analysis that needs them; the maths lives in ``harness.analysis.diagnostics``."""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.analysis.recipe import AnalyzeRecipe, GradAnalysis, KLAnalysis, RefusalAnalysis
from harness.core import Example, content_hash, dataset_hash
from harness.errors import HarnessError, ModelError, RecipeError
from harness.runlog import ANALYZE_SCHEMA, Manifest

__all__ = ["LoadedModel", "Models", "RUNNERS", "analysis_examples", "print_results", "resolve_device", "run_analysis"]

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
    from harness.analysis.diagnostics import encode_pairs, kl_by_position, pad_token_id
    from harness.analysis.output import write_kl

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
    from harness.analysis.diagnostics import encode_pairs, grad_by_position, pad_token_id
    from harness.analysis.output import write_grad

    results = {}
    for name in a.models:
        m = models.get(name)
        pairs = encode_pairs(examples, m.builder, a.field, a.max_tokens, source=a.data.label)
        results[name] = grad_by_position(m.model, pairs, pad_token_id(m.tokenizer), a.max_tokens, progress)
    return write_grad(out, a.label, results)


def _run_refusal(a: RefusalAnalysis, examples: list[Example], models: Models, out: Path, progress: bool) -> list[str]:
    from harness.analysis.diagnostics import refusal_by_depth, refusal_prefixes
    from harness.analysis.output import write_refusal

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


def analysis_examples(a: Any, limit: int | None) -> list[Example]:
    from harness.data import load_dataset

    caps = [n for n in (limit, a.data.limit, a.max_examples) if n is not None]
    return load_dataset(a.data.model_copy(update={"limit": min(caps)}) if caps else a.data)


def _clear_previous(run_dir: Path) -> None:
    """A run folder holds one analysis run: drop the files the previous one listed. A folder
    holding an evaluation run is refused rather than mixed with."""
    import json

    from harness.run.store import MANIFEST, SAMPLES

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


def _manifest(recipe: AnalyzeRecipe, run_dir: Path, limit: int | None, device: str, models: Models) -> Manifest:
    from harness import hardware
    from harness.run.provenance import git_commit, package_versions
    from harness.run.store import now

    dumped = recipe.model_dump(mode="json")
    return Manifest(schema=ANALYZE_SCHEMA, kind="analyze", run_id=run_dir.name, status="running", started=now(),
                    command=sys.argv, recipe=dumped, recipe_hash=content_hash(dumped), limit=limit,
                    device=device, dtype=recipe.dtype,
                    models={n: r.to_json() for n, r in models.resolved.items()}, analyses={}, files=[],
                    hardware=hardware.describe(), packages=package_versions(), git=git_commit())


def run_analysis(recipe: AnalyzeRecipe, run_dir: Path, limit: int | None = None,
                 progress: bool = True) -> Manifest:
    """Run every analysis of ``recipe`` into ``run_dir``; returns the manifest it wrote."""
    from harness.run.store import MANIFEST, RunLock, now, write_json

    run_dir = Path(run_dir)
    limit = limit or recipe.limit
    with RunLock(run_dir):
        _clear_previous(run_dir)
        device = resolve_device(recipe.device)
        models = Models(recipe, device, progress)
        manifest = _manifest(recipe, run_dir, limit, device, models)
        write_json(run_dir / MANIFEST, manifest.dump())
        try:
            for i, a in enumerate(recipe.analyses):
                start = time.perf_counter()
                examples = analysis_examples(a, limit)
                if progress:
                    print(f"{a.label}: {a.type} on {len(examples)} examples of {a.data.label}", file=sys.stderr)
                files = RUNNERS[a.type](a, examples, models, run_dir, progress)
                manifest.analyses[a.label] = {
                    "type": a.type, "config": a.model_dump(mode="json"), "files": files,
                    "dataset": {"label": a.data.label, "n": len(examples), "hash": dataset_hash(examples)},
                    "seconds": round(time.perf_counter() - start, 2)}
                manifest.files += files
                write_json(run_dir / MANIFEST, manifest.dump())
                models.keep_only({n for later in recipe.analyses[i + 1:] for n in later.model_names()})
            manifest.status = "complete"
        except BaseException as e:
            manifest.mark_failed(e)
            raise
        finally:
            manifest.finished = now()
            write_json(run_dir / MANIFEST, manifest.dump())
    return manifest


# --------------------------------------------------------------------------- printing


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def print_results(run_dir: Path, manifest: Manifest, max_rows: int = 12) -> None:
    """A short table per CSV: the first rows of each model (or pair)."""
    import csv

    for label, entry in manifest.analyses.items():
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
