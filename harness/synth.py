"""Generate text with a model through the engine: anchors, harmful h, synthesised dataset columns.

``synthesize_column`` writes one column of a dataset (e.g. the harmful response h of AdvBench
prompts, sampled from the unaligned base model) and caches it in
``<harness cache>/synth/<key>.jsonl``, keyed on the model fingerprint, the prompts and the
generation settings, so every recipe that names the same synthesised dataset reads one file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Sequence

from harness.core import Example, content_hash
from harness.engine import GenRequest, Sampling, make_engine
from harness.errors import RecipeError
from harness.models import ResolvedModel, cache_dir, resolve_model
from harness.names import check_name
from harness.prompts import PromptBuilder
from harness.registry import JUDGES


def generate(model: ResolvedModel, prompts: Sequence[str], engine_settings: Any, sampling: Sampling,
             system_prompt: str | None = None, progress: bool = True) -> list[tuple[str, bool]]:
    """One response of ``model`` per prompt (chat template applied), in order, each with whether
    it finished (False: cut off at ``max_tokens``)."""
    from transformers import AutoTokenizer

    builder = PromptBuilder(AutoTokenizer.from_pretrained(model.path), system_prompt)
    engine = make_engine(model.path, engine_settings.engine_config(sampling.seed or 0))
    try:
        outs = engine.generate([GenRequest(builder.build(p).prompt_ids, sampling) for p in prompts], progress=progress)
    finally:
        engine.close()
    return [(o[0].text.strip(), o[0].finish_reason == "stop") for o in outs]


def generate_responses(model: ResolvedModel, prompts: Sequence[str], engine_settings: Any, max_tokens: int = 160,
                       seed: int = 0, system_prompt: str | None = None,
                       progress: bool = True) -> list[tuple[str, bool]]:
    """Greedy responses (utility anchors, `harness data synth`)."""
    return generate(model, prompts, engine_settings, Sampling(max_tokens=max_tokens, seed=seed), system_prompt,
                    progress)


def synthesize_column(examples: list[Example], cfg: Any, label: str, progress: bool = True,
                      backend: str | None = None) -> list[Example]:
    """``examples`` with ``cfg.field`` written by ``cfg.model`` (a ``harness.data.base.SynthConfig``),
    through ``cfg.backend``, else ``backend`` (the recipe's engine), else ``auto``; the cache key
    names the resolved backend."""
    from harness.engine import resolve_backend
    from harness.engine.base import EngineSettings

    check_name(label, "dataset label", "the synth cache file <label>-<key>.jsonl", RecipeError)
    model = resolve_model(cfg.model)
    cfg = cfg.model_copy(update={"backend": resolve_backend(cfg.backend or backend or "auto")})
    settings = cfg.model_dump(mode="json", exclude={"model"})
    key = content_hash({"model": model.fingerprint, "prompts": [e.prompt for e in examples], "settings": settings})
    path = cache_dir() / "synth" / f"{label}-{key}.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        sampling = Sampling(cfg.temperature, cfg.top_p, 0, cfg.max_tokens, 1, cfg.seed)
        if progress:
            print(f"synthesising {cfg.field} of {len(examples)} {label} prompts with {cfg.model}")
        texts = generate(model, [e.prompt for e in examples], EngineSettings(backend=cfg.backend), sampling,
                         cfg.system_prompt, progress)
        rows = [{"id": e.id, "text": t, "finished": f} for e, (t, f) in zip(examples, texts)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
    by_id = {r["id"]: r for r in rows}
    refusal = None
    if cfg.drop_refusals:  # the keyword judge's refusal phrases, through its registry entry
        refusal = JUDGES.get("keyword")(type="keyword").make()
    out = []
    for e in examples:
        r = by_id[e.id]
        if not r["text"] or (not r["finished"] and not cfg.keep_unfinished):
            continue
        if refusal is not None and refusal.match(r["text"]) is not None:
            continue
        out.append(replace(e, **{cfg.field: r["text"]}, meta={**e.meta, "synth": {"model": cfg.model,
                                                                                 "finished": r["finished"]}}))
    return out
