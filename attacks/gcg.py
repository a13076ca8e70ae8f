"""The GCG attack plug-in (``type: gcg``): ``prepare`` optimises a suffix per example (or one
universal suffix) with ``attacks.gcg_optim.run``, caches it as an artefact keyed by everything
that determines it, and ``plan`` inserts the suffix ids at the end of the user turn."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch
from pydantic import Field, field_validator, model_validator

from attacks.base import AttackConfig, Example, PlannedSample, Target
from attacks.gcg_optim import GCGConfig, GCGResult, GCGSettings, ProbeSamplingConfig, load_model, run
from attacks.gcg_problem import UNHASHED_WHEN_NONE
from harness.core import StrictModel, content_hash
from harness.prompts import Segments

__all__ = ["GCGAttack", "ProbeSamplingSpec"]


# =========================================================================== the harness attack


class ProbeSamplingSpec(StrictModel):
    """Probe sampling in a recipe: the draft is any model spec sharing the target's tokenizer."""

    draft_model: str = Field(description="model spec (alias, folder, hub id, recipe.yaml#model)")
    r: int = Field(8, ge=1)
    sampling_factor: int = Field(16, ge=1)


@dataclass(frozen=True)
class _Job:
    """One optimisation: the examples it serves, what it optimises on, and its artefact key."""

    key: str
    examples: tuple[Example, ...]  # the examples whose prompts it is planned into
    train: tuple[Example, ...]  # the examples it optimises on
    segments: tuple[Segments, ...]
    targets: tuple[str, ...]


class GCGAttack(AttackConfig, GCGSettings):
    """GCG adversarial suffix (Zou et al. 2023), optimised on the target's weights, judged through the engine."""

    type: Literal["gcg"] = "gcg"
    threat_model = "white_box"  # gradients of the target's weights
    unhashed_when_none = UNHASHED_WHEN_NONE + ("source_model",)
    mode: Literal["individual", "universal"] = Field(
        "individual", description="individual: one suffix per prompt; universal: one suffix for all prompts")
    universal_train: int | None = Field(
        None, ge=1, description="universal: optimise on the first N prompts (all when unset); every prompt is "
                                "evaluated, attack_info.train says which were optimised on")
    ensemble: list[str] = Field(
        default_factory=list, description="more model specs (sharing the target's tokenizer) the suffix is optimised "
                                          "on too, as llm-attacks' multi-model universal GCG; evaluated on the target")
    source_model: str | None = Field(
        None, description="transfer (HarmBench's GCG-Transfer): optimise on this model spec's weights, which must "
                          "share the target's tokenizer, and plan that suffix into every model's prompts; unset: "
                          "each model's own weights (white-box)")
    target_field: str = Field("target", description="dataset column with the target (\"Sure, here is…\")")
    separator: str = Field(" ", description="text between the user's request and the suffix")
    system: str = Field("default", description="default (the recipe's / template's) | none | a system prompt text")
    baseline: bool = Field(False, description="also plan each prompt without a suffix (setting suffix=none)")
    # --- the optimiser's settings come from GCGSettings (nanoGCG 0.3.0's defaults; `reference: nanogcg`
    # for its semantics too)
    probe_sampling: ProbeSamplingSpec | None = None
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("optim_str_init")
    @classmethod
    def _init(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("optim_str_init is empty")
        return v

    @model_validator(mode="after")
    def _check(self) -> "GCGAttack":
        if self.universal_train is not None and self.mode != "universal":
            raise ValueError("`universal_train` needs `mode: universal`")
        return self

    # -- settings -------------------------------------------------------------------------
    def algorithm(self) -> dict[str, Any]:
        """Every setting that changes the optimised suffix (hashed into the artefact key): the
        optimiser's settings but the seed (keyed separately), probe sampling and the dtype; the
        reference-mode keys only when set (older artefact keys stay valid)."""
        keep = (set(GCGSettings.model_fields) - {"seed"}) | {"probe_sampling", "dtype"}
        keep -= {k for k in UNHASHED_WHEN_NONE if getattr(self, k) is None}
        return self.model_dump(mode="json", include=keep)

    def gcg_config(self, seed: int, draft: Any = None) -> GCGConfig:
        probe = None
        if self.probe_sampling is not None:
            probe = ProbeSamplingConfig(draft, self.probe_sampling.r, self.probe_sampling.sampling_factor)
        shared = {key: getattr(self, key) for key in GCGSettings.model_fields}
        return GCGConfig(**{**shared, "seed": seed}, probe_sampling=probe)

    def _device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def target_text(self, ex: Example) -> str | None:
        value = getattr(ex, self.target_field, None) if self.target_field in Example.__dataclass_fields__ \
            else ex.meta.get(self.target_field)
        return str(value) if value else None

    # -- jobs and artefacts ---------------------------------------------------------------
    def jobs(self, examples: list[Example], target: Target, seed: int, draft_id: str | None = None,
             ensemble_ids: Sequence[str] = (), source_id: str | None = None) -> list[_Job]:
        """The optimisations ``examples`` need, each keyed by the fingerprint of the model optimised
        on (the target's, or ``source_id``'s: a transfer suffix is shared by every target), the prompt
        and target texts, the prompt's token segments (template, system prompt, separator), the
        algorithm settings, the seed and the mode."""
        with_target = [ex for ex in examples if self.target_text(ex)]
        if self.mode == "individual":
            groups = [((ex,), (ex,)) for ex in with_target]
        else:
            train = with_target[: self.universal_train] if self.universal_train else with_target
            groups = [(tuple(with_target), tuple(train))] if train else []
        jobs = []
        for served, train in groups:
            segs = tuple(target.builder.segments(ex.prompt, self.separator, self.system) for ex in train)
            texts = tuple(self.target_text(ex) or "" for ex in train)
            key = "gcg:" + content_hash({
                "model": source_id or target.model.fingerprint_id, "draft": draft_id, "ensemble": list(ensemble_ids), "prompts": [ex.prompt for ex in train],
                "targets": list(texts), "segments": content_hash([[s.before, s.after] for s in segs]),
                "config": self.algorithm(), "seed": seed, "mode": self.mode, "separator": self.separator,
                "system": self.system}, 32)
            jobs.append(_Job(key, served, train, segs, texts))
        return jobs

    @staticmethod
    def artefact(result: GCGResult) -> dict[str, Any]:
        return {"suffix": result.best_string, "suffix_ids": result.best_ids, "loss": result.best_loss,
                "init_loss": result.init_loss, "steps": result.steps, "matched": result.matched,
                "matched_per_prompt": result.matched_per_prompt, "stop_reason": result.stop_reason,
                "wall_time_s": round(result.wall_time_s, 3), "losses": [round(x, 5) for x in result.losses]}

    # -- hooks ----------------------------------------------------------------------------
    def prepare(self, examples: list[Example], target: Target, ctx: Any) -> dict[str, Any]:
        """Look up or optimise every suffix ``examples`` need; each is committed to the artefact
        store as soon as it is found, so a killed run resumes at the next prompt. The model is
        loaded (and live engines freed) only when something is missing."""
        from tqdm.auto import tqdm

        seed = self.seed if self.seed is not None else ctx.seed
        draft_model = ctx.resolve(self.probe_sampling.draft_model) if self.probe_sampling else None
        extra = [ctx.resolve(spec) for spec in self.ensemble]
        source = ctx.resolve(self.source_model) if self.source_model else target.model
        jobs = self.jobs(examples, target, seed, draft_model.fingerprint_id if draft_model else None,
                         [m.fingerprint_id for m in extra], source.fingerprint_id)
        found = {job.key: ctx.artifacts.get(job.key) for job in jobs}
        missing = [job for job in jobs if found[job.key] is None]
        if missing:
            ctx.free_engines()  # gradient work never competes with a live engine
            device = self._device()
            if self.source_model:
                _same_tokenizer(source, target)
            model = load_model(source.path, self.dtype, device)
            draft = load_model(draft_model.path, self.dtype, device) if draft_model else None
            models = [model] + [load_model(m.path, self.dtype, device) for m in extra]
            config = self.gcg_config(seed, draft)
            tokenizer = target.builder.tokenizer
            with tqdm(missing, desc=f"gcg {target.name}", unit="suffix", disable=not ctx.progress) as bar:
                for job in bar:
                    config.progress = ctx.progress
                    result = run(models, tokenizer, list(job.segments), list(job.targets), config)
                    art = self.artefact(result)
                    ctx.artifacts.put(job.key, art)
                    found[job.key] = art
                    bar.set_postfix(loss=f"{result.best_loss:.3f}", steps=result.steps, matched=result.matched)
            del model, models, draft
            gc.collect()
        out: dict[str, Any] = {}
        for job in jobs:
            train_ids = {ex.id for ex in job.train}
            for ex in job.examples:
                out[ex.id] = {**found[job.key], "train": ex.id in train_ids}
        return out

    def plan(self, examples: list[Example], target: Target, artifacts: dict[str, Any],
             seed: int) -> Iterator[PlannedSample]:
        builder = target.builder
        sampling = self.sampling.to_sampling(seed)
        setting = {"suffix": "gcg" if self.mode == "individual" else "gcg-universal"}
        for ex in examples:
            if self.baseline:
                yield PlannedSample(ex, {"suffix": "none"}, sampling, builder.build(ex.prompt, system=self.system),
                                    info={"suffix": "", "suffix_tokens": 0})
            art = artifacts.get(ex.id)
            if art is None:
                reason = f"no {self.target_field} to optimise towards" if not self.target_text(ex) else "no suffix"
                yield PlannedSample(ex, setting, sampling, None, skipped=reason)
                continue
            prompt = builder.build(ex.prompt, suffix_ids=art["suffix_ids"], separator=self.separator,
                                   system=self.system)
            info = {k: art[k] for k in ("suffix", "suffix_ids", "loss", "steps", "matched", "wall_time_s")}
            info.update(suffix_tokens=len(art["suffix_ids"]), init_loss=art.get("init_loss"),
                        stop_reason=art.get("stop_reason"), mode=self.mode)
            if self.source_model:  # loss and steps are the source model's
                info["source_model"] = self.source_model
            if self.mode == "universal":
                info["train"] = art.get("train", True)
            yield PlannedSample(ex, setting, sampling, prompt, info=info)


def _same_tokenizer(source: Any, target: Target) -> None:
    """A transfer suffix is a list of token ids: it means the same text only under one vocabulary."""
    from transformers import AutoTokenizer

    theirs, ours = AutoTokenizer.from_pretrained(source.path).get_vocab(), target.builder.tokenizer.get_vocab()
    if theirs != ours:
        raise ValueError(f"gcg source_model {source.spec!r} does not share {target.name!r}'s tokenizer "
                         f"({len(theirs)} vs {len(ours)} tokens): a transfer "
                         "suffix needs the same vocabulary")
