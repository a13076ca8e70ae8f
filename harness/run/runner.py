"""Run a recipe: models × datasets × attacks → samples → judges → run log.

Per target model: each attack's ``variants`` (derived models, e.g. fine-tuning rounds),
``prepare`` (gradient-time artefacts, e.g. GCG suffixes) and ``plan`` (token-level prompts)
give planned samples; the generation cache answers what it can and an engine generates the
rest in chunks that are committed to the cache as they finish (a killed run resumes there).
When every model is done the judges score every sample and the run folder is rewritten as
one consistent log of exactly this recipe (see ``harness.run.store`` for the folder policy).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from tqdm.auto import tqdm

from harness import hardware
from harness.attack_api import Target
from harness.core import Example, PlannedSample, content_hash, dataset_hash, setting_label
from harness.data import load_dataset
from harness.engine import (Engine, EngineConfig, GenRequest, backend_record, engine_descriptor, engine_hash, make_engine,
                            resolve_config)
from harness.errors import RecipeError
from harness.kvcache import cache_root
from harness.models import ResolvedModel
from harness.names import check_name
from harness.prompts import PromptBuilder
from harness.recipes import ModelConfig, Recipe
from harness.run.finalize import finalize
from harness.run.provenance import git_commit, judge_entry, package_versions
from harness.run.store import (ARTIFACTS_DB, MANIFEST, ArtifactCache, GenerationCache, RunLock, append_history,
                               generation_key, now, sample_id, write_json)
from harness.runlog import EVAL_SCHEMA, Manifest, SampleRecord

log = logging.getLogger(__name__)
# Environment the engines ran with (thread binding), recorded in the manifest.
ENGINE_ENV = ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


class EnginePool:
    """Starts engines on demand; by default only one lives at a time (memory)."""

    def __init__(self, keep_all: bool = False) -> None:
        self.keep_all = keep_all
        self.engines: dict[tuple, Engine] = {}
        self.started = 0

    def get(self, model: ResolvedModel, config: EngineConfig) -> Engine:
        config = resolve_config(config, model.path)
        key = (str(model.path), model.fingerprint_id, engine_hash(config), config.max_model_len,
               config.data_parallel_size, config.seed, config.enforce_eager, config.kv_cache_gib)
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
    skipped: int = 0
    samples: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    label: str
    examples: list[Example]
    hash: str


@dataclass(frozen=True)
class Planned:
    """A planned sample with where it belongs in the run log."""

    kind: str  # attack | utility
    label: str  # attack or utility task label
    config_hash: str
    dataset: Dataset
    model: ResolvedModel  # the model that generates it (a derived one for model-transform attacks)
    variant: dict[str, Any]
    sample: PlannedSample


ModelResolver = Callable[[ModelConfig], ResolvedModel]


def default_resolver(m: ModelConfig) -> ResolvedModel:
    from harness.training.registry import resolve_any

    return resolve_any(m.ref)


class RunContext:
    """What attacks' ``variants`` and ``prepare`` hooks get (``harness.attack_api.AttackContext``)."""

    def __init__(self, artifacts: ArtifactCache, seed: int, progress: bool, work_dir: Path, pool: EnginePool,
                 results_root: Path) -> None:
        self.artifacts = artifacts
        self.seed = seed
        self.progress = progress
        self.work_dir = work_dir
        self.pool = pool
        self.results_root = results_root

    def free_engines(self) -> None:
        self.pool.close()

    def resolve(self, spec: str) -> ResolvedModel:
        from harness.training.registry import resolve_any

        return resolve_any(spec)


def run_recipe(
    recipe: Recipe,
    out_dir: Path | None = None,
    run_id: str | None = None,
    limit: int | None = None,
    engines: EnginePool | None = None,
    resolver: ModelResolver = default_resolver,
    progress: bool = True,
) -> RunResult:
    """Run ``recipe`` into ``<out_dir>/<run_id>`` (default ``results/<recipe name>``), which is
    locked for the run and rewritten from the caches at its end."""
    out_root = Path(out_dir or recipe.output_dir)
    if run_id is None:
        run_id = check_name(recipe.name, "recipe name", "the default run id: results/<name>/", RecipeError)
    run_dir = out_root / check_name(run_id, "run id", "the run folder results/<run-id>/")
    with RunLock(run_dir):
        return _run(recipe, out_root, run_dir, limit or recipe.limit, engines, resolver, progress)


def _run(recipe: Recipe, out_root: Path, run_dir: Path, limit: int | None, engines: EnginePool | None,
         resolver: ModelResolver, progress: bool) -> RunResult:
    started, t0 = now(), time.time()
    caches = cache_root(out_root)
    gen_cache = GenerationCache(caches / "generations.sqlite")
    artifacts = ArtifactCache(caches / ARTIFACTS_DB)
    own_pool = engines is None
    pool = engines or EnginePool()
    datasets = []
    for d in recipe.datasets:
        examples = load_dataset(d, backend=recipe.engine.backend)
        examples = examples[:limit] if limit else examples
        datasets.append(Dataset(d.label, examples, dataset_hash(examples)))
    utility = []
    for t in recipe.utility_tasks:
        examples = t.load()
        examples = examples[:limit] if limit else examples
        utility.append((t, Dataset(t.label, examples, dataset_hash(examples))))
    judges = [(c, c.make()) for c in recipe.judge_configs]
    result = RunResult(run_dir, pd.DataFrame())
    manifest = _manifest(recipe, run_dir, limit, datasets, utility, judges, started)
    timings: dict[str, float] = {}
    ctx = RunContext(artifacts, recipe.seed, progress, caches / "work", pool, out_root)
    records: list[SampleRecord] = []
    try:
        # Resolve (and, for trained models, build) every model before any engine starts:
        # bad specs fail early, and training never competes with a live engine.
        tick = time.time()
        resolved = {m.name: resolver(m) for m in recipe.models}
        timings["resolve_models_s"] = time.time() - tick
        for name, model in resolved.items():
            result.models[name] = manifest.models[name] = model.to_json()
        gen = Generator(recipe, gen_cache, pool, result, manifest, progress)
        for name, model in resolved.items():
            tick = time.time()
            model_records = _evaluate_model(recipe, name, model, datasets, utility, ctx, gen, judges[:1])
            records += model_records
            derived = {r["setting_label"]: gen.models[r["model_fingerprint"]] for r in model_records
                       if r["model_fingerprint"] != model.fingerprint_id}
            if derived:
                manifest.models[name]["derived"] = derived
            timings[f"evaluate_{name}_s"] = time.time() - tick
        if own_pool:
            pool.close()  # free the target engine before judges that start their own
        tick = time.time()
        manifest.status = "finalizing"
        write_json(run_dir / MANIFEST, manifest.dump())
        reducers = {a.label: a.reducers for a in recipe.attack_configs}
        result.summary = finalize(run_dir, records, judges, reducers, recipe.utility_tasks, progress,
                                  cache_path=caches / "judgments.sqlite")
        timings["judge_and_write_s"] = time.time() - tick
        result.samples = len(records)
        timings["total_s"] = time.time() - t0
        manifest.status, manifest.finished, manifest.counts = "complete", now(), _counts(result)
        manifest.timings = {k: round(v, 2) for k, v in timings.items()}
        manifest.engine_environment = {k: os.environ[k] for k in ENGINE_ENV if k in os.environ}
        write_json(run_dir / MANIFEST, manifest.dump())
    except BaseException as e:
        on_disk = manifest.status == "finalizing"  # else the folder holds the last complete run, untouched
        manifest.mark_failed(e)
        manifest.finished = now()
        if on_disk:
            write_json(run_dir / MANIFEST, manifest.dump())
        raise
    finally:
        gen_cache.close()
        artifacts.close()
        if own_pool:
            pool.close()
        append_history(run_dir, {"started": started, "finished": now(), "status": manifest.status,
                                 **({"error": manifest.error} if manifest.error else {}),
                                 "command": sys.argv, "recipe_hash": manifest.recipe_hash,
                                 "counts": _counts(result), "git": manifest.git})
    return result


def _counts(result: RunResult) -> dict[str, int]:
    return {"generated": result.generated, "from_cache": result.from_cache, "skipped": result.skipped,
            "samples": result.samples}


def _evaluate_model(recipe: Recipe, name: str, model: ResolvedModel, datasets: list[Dataset],
                    utility: list[tuple[Any, Dataset]], ctx: RunContext, gen: "Generator",
                    first_judge: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """Every record of one target model: each attack on each of its variants and datasets, in
    waves for adaptive attacks, then the utility tasks (also on derived models that ask for them)."""
    from transformers import AutoTokenizer

    target = Target(name, model, PromptBuilder(AutoTokenizer.from_pretrained(model.path), recipe.system_prompt))
    records: list[SampleRecord] = []
    for attack in recipe.attack_configs:
        ahash = attack.config_hash()
        for variant, vmodel in attack.variants(target, ctx):
            vt = target.derived(vmodel)
            for ds in datasets:
                artifacts = attack.prepare(ds.examples, vt, ctx)
                broken: set[str] = set()
                wave = 0
                while (samples := attack.plan_wave(ds.examples, vt, artifacts, recipe.seed, wave, broken)) is not None:
                    wave_records = gen.records(name, [Planned("attack", attack.label, ahash, ds, vmodel, variant, p)
                                                      for p in samples])
                    records += wave_records
                    if first_judge and wave_records:
                        broken |= _broken(wave_records, first_judge[0])
                    wave += 1
            if variant and attack.evaluates_utility:
                via = {"attack": attack.label, **variant}
                records += gen.records(name, [Planned("utility", t.label, t.config_hash(), ds, vmodel, via, p)
                                              for t, ds in utility for p in t.plan(ds.examples, vt.builder, recipe.seed)])
    records += gen.records(name, [Planned("utility", t.label, t.config_hash(), ds, model, {}, p)
                                  for t, ds in utility for p in t.plan(ds.examples, target.builder, recipe.seed)])
    return records


def _broken(records: list[SampleRecord], judge: tuple[Any, Any]) -> set[str]:
    """Ids of examples with a harmful sample among ``records`` (for adaptive attacks' next wave)."""
    from harness.run.finalize import judge_records

    judge_records(records, [judge], progress=False)
    return {r["example_id"] for r in records if (r.get("verdicts") or {}).get(judge[1].name, {}).get("label") == "harmful"}


def _base_record(name: str, pl: Planned, index: int) -> SampleRecord:
    p, ex = pl.sample, pl.sample.example
    setting = {**pl.variant, **p.setting}
    label = setting_label(setting)
    return dict(sample_id=sample_id(name, pl.dataset.label, ex.id, pl.label, label, index), kind=pl.kind, model=name,
                model_fingerprint=pl.model.fingerprint_id, dataset=pl.dataset.label, dataset_hash=pl.dataset.hash,
                example_id=ex.id, category=ex.category, cluster=ex.cluster or ex.id, attack=pl.label,
                attack_hash=pl.config_hash, setting=setting, setting_label=label, sample_index=index,
                prompt=ex.prompt, attack_info=p.info)


class Generator:
    """Turns planned samples into records: cached completions first, the engine for the rest."""

    def __init__(self, recipe: Recipe, cache: GenerationCache, pool: EnginePool, result: RunResult,
                 manifest: Manifest, progress: bool) -> None:
        self.recipe, self.cache, self.pool, self.result = recipe, cache, pool, result
        self.manifest, self.progress = manifest, progress
        self.models: dict[str, dict[str, Any]] = {}  # fingerprint id -> model, for the manifest

    def records(self, name: str, planned: list[Planned]) -> list[SampleRecord]:
        """Records for ``planned``, in plan order."""
        slots: list[tuple[Planned, str | None, str]] = []
        requests: dict[str, tuple[ResolvedModel, EngineConfig, GenRequest]] = {}
        for pl in planned:
            p = pl.sample
            self.models.setdefault(pl.model.fingerprint_id, pl.model.to_json())
            if p.prompt is None:
                slots.append((pl, None, ""))
                continue
            config = resolve_config(self.recipe.engine.engine_config(self.recipe.seed), pl.model.path)
            ehash = engine_hash(config)
            if ehash not in self.manifest.engines:
                self.manifest.engines[ehash] = engine_descriptor(config)
                self.manifest.engine_backend = backend_record(self.recipe.engine.backend)
            key = generation_key(pl.model.fingerprint_id, p.prompt.prompt_ids, p.sampling, ehash)
            slots.append((pl, key, ehash))
            requests.setdefault(key, (pl.model, config, GenRequest(p.prompt.prompt_ids, p.sampling)))
        completions = self.cache.get_many(requests)
        self.result.from_cache += len(completions)
        todo: dict[tuple[str, str], list[str]] = {}
        for key, (model, _, _) in requests.items():
            if key not in completions:
                todo.setdefault((str(model.path), model.fingerprint_id), []).append(key)
        for keys in todo.values():
            completions.update(self._generate(name, keys, requests))
        records = []
        for pl, key, ehash in slots:
            if key is None:
                self.result.skipped += 1
                records.append(dict(_base_record(name, pl, 0), skipped=pl.sample.skipped, verdicts={}))
                continue
            for i, comp in enumerate(completions[key]):
                records.append(dict(_base_record(name, pl, i), sampling=pl.sample.sampling.to_json(), engine_hash=ehash,
                                    cache_key=key, completion=comp.text, completion_tokens=len(comp.token_ids),
                                    finish_reason=comp.finish_reason, skipped=None, verdicts={}))
        return records

    def _generate(self, name: str, keys: list[str], requests: dict[str, tuple[ResolvedModel, EngineConfig, GenRequest]]):
        model, config, _ = requests[keys[0]]
        engine = self.pool.get(model, config)
        chunk = self.recipe.engine.chunk_size
        done: dict[str, Any] = {}
        with tqdm(total=len(keys), desc=f"generate {name}", unit="req", disable=not self.progress) as bar:
            for start in range(0, len(keys), chunk):
                part = keys[start:start + chunk]
                outs = dict(zip(part, engine.generate([requests[k][2] for k in part])))
                self.cache.put_many(outs)  # committed: a killed run resumes after this chunk
                done.update(outs)
                self.result.generated += len(part)
                bar.update(len(part))
        return done


def _manifest(recipe: Recipe, run_dir: Path, limit: int | None, datasets: list[Dataset],
              utility: list[tuple[Any, Dataset]], judges: list[tuple[Any, Any]], started: str) -> Manifest:
    dumped = recipe.model_dump(mode="json")
    return Manifest(
        schema=EVAL_SCHEMA,
        run_id=run_dir.name,
        status="running",
        started=started,
        command=sys.argv,
        recipe=dumped,
        recipe_hash=content_hash(dumped),
        limit=limit,
        seed=recipe.seed,
        models={},
        datasets={d.label: {"n": len(d.examples), "hash": d.hash} for d in datasets},
        attacks={a.label: {"type": a.type, "hash": a.config_hash(), "config": a.model_dump(mode="json")}
                 for a in recipe.attack_configs},
        utility={t.label: {"type": t.type, "hash": t.config_hash(), "n": len(d.examples), "dataset_hash": d.hash}
                 for t, d in utility},
        judges={j.name: judge_entry(c, j) for c, j in judges},
        engines={},
        hardware=hardware.describe(),
        packages=package_versions(),
        git=git_commit(),
    )
