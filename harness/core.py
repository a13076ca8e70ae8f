"""The dependency-free core: shared types, config bases, content hashes and plug-in registries.

Every other module of the project may import this one; it imports nothing of the project but
``harness.errors``. Plug-ins (attacks, judges, utility tasks, dataset formats) are named in
tables of ``"module:attr"`` strings and imported on first use, as lm-evaluation-harness does:
registering a plug-in never imports the code that uses the registry, so there are no import
cycles. Third-party plug-ins add themselves through entry points (group ``harness.<kind>``,
e.g. ``harness.attacks``) or with ``REGISTRY.register(name)``.

Data flows one way: recipe → dataset (``Example``) → attack (``PlannedSample``) → engine
(``Completion``) → judges (``Verdict``) → run log → report / regress.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, Iterable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.errors import RecipeError

T = TypeVar("T")


# --------------------------------------------------------------------------- hashing


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), as ``length`` hex digits."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def set_dotted(root: dict[str, Any], key: str, value: Any) -> None:
    """``root[a][b][0] = value`` for the dotted ``key`` "a.b.0" (recipe ``--set`` overrides, judge
    specs): missing sections become mappings, a number indexes an existing list. A ``ValueError``
    names the part of the path that does not fit."""
    parts = key.split(".")
    cur: Any = root
    for j, part in enumerate(parts):
        if isinstance(cur, list):
            if not re.match(r"^\d+$", part) or int(part) >= len(cur):
                raise ValueError(f"{'.'.join(parts[:j]) or '(top)'} is a list of {len(cur)}; {part!r} is not an "
                                 "index in it")
            idx: Any = int(part)
        elif isinstance(cur, dict):
            idx = part
        else:
            raise ValueError(f"{'.'.join(parts[:j])} is a value, not a section")
        if j == len(parts) - 1:
            cur[idx] = value
        else:
            if isinstance(cur, dict) and idx not in cur:
                cur[idx] = {}
            cur = cur[idx]


# --------------------------------------------------------------------------- configs


class StrictModel(BaseModel):
    """Pydantic base: unknown keys are errors that list the allowed keys."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(cls.model_fields)}")
        return data


class LabelledConfig(StrictModel):
    """A typed plug-in config: ``type`` picks the class, ``name`` labels it in results."""

    type: str
    name: str | None = Field(None, description="label in results; defaults to the type")

    @property
    def label(self) -> str:
        return self.name or self.type

    def config_hash(self) -> str:
        """Hash of every setting that changes what this config produces (its label excluded)."""
        return content_hash(self.model_dump(mode="json", exclude={"name"}))


# --------------------------------------------------------------------------- shared types


@dataclass(frozen=True)
class Example:
    """One dataset row. ``cluster`` groups near-duplicate rows (e.g. a shared template) for
    clustered intervals; empty means the row is its own cluster."""

    id: str
    prompt: str
    category: str = ""
    target: str | None = None
    response: str | None = None
    refusal: str | None = None
    cluster: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def content(self) -> dict[str, Any]:
        """What an evaluation reads of the row (hashed into the dataset hash)."""
        return {"id": self.id, "prompt": self.prompt, "category": self.category, "target": self.target,
                "response": self.response, "refusal": self.refusal, "cluster": self.cluster}


def dataset_hash(examples: Iterable[Example]) -> str:
    return content_hash([e.content() for e in examples])


@dataclass(frozen=True)
class Sampling:
    """Per-request decoding settings. ``top_k=0`` and ``top_p=1`` mean off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 64
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def key(self) -> dict[str, Any]:
        """What determines the output: greedy decoding ignores top-p, top-k and the seed."""
        d = self.to_json()
        if self.greedy:
            d.update(top_p=1.0, top_k=0, seed=None)
        return d


def with_preset(raw: Any, presets: dict[str, dict[str, Any]]) -> Any:
    """A config's raw dict with its named ``preset``'s values filled in; keys set next to the
    preset win (sampling and training presets)."""
    if isinstance(raw, dict) and raw.get("preset") in presets:
        return {**presets[raw["preset"]], **raw}
    return raw


# Named decoding presets; keys a recipe sets next to the preset win.
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0, "top_p": 1.0, "top_k": 0},
    # Qi et al. 2025, official eval_safety.py: do_sample, temperature 0.9, top-p 0.6, top-k 50,
    # 512 new tokens; the paper averages 3 runs (here: n = 3 samples per prompt).
    "paper": {"temperature": 0.9, "top_p": 0.6, "top_k": 50, "max_tokens": 512, "n": 3},
}


class SamplingConfig(StrictModel):
    preset: Literal["greedy", "paper"] | None = Field(None, description="greedy | paper (Qi et al.'s evaluation "
                                                                         "sampling); explicit keys override it")
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = off")
    max_tokens: int = Field(64, ge=1)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, description="defaults to the recipe seed")
    stop: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return with_preset(data, SAMPLING_PRESETS)

    def to_sampling(self, default_seed: int) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k, self.max_tokens, self.n,
                        self.seed if self.seed is not None else default_seed, tuple(self.stop))


@dataclass(frozen=True)
class BuiltPrompt:
    """Token-exact prompt: the target's chat template with the attack's token-level edits.
    ``prompt_ids`` is the whole sequence the engine continues (prefill included)."""

    prompt_ids: tuple[int, ...]
    prefill_ids: tuple[int, ...] = ()
    prefill_text: str = ""


@dataclass(frozen=True)
class PlannedSample:
    """One planned generation (or a recorded skip) for an example under one attack setting.

    ``setting`` identifies the setting in tables (e.g. ``{"depth": 5}``); ``info`` records
    what the attack did to this sample (prefill text and token count, suffix and its loss,
    system prompt on/off, …) and goes into the record's ``attack_info``."""

    example: Example
    setting: dict[str, Any]
    sampling: Sampling
    prompt: BuiltPrompt | None  # None when skipped
    skipped: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return setting_label(self.setting)


def setting_label(setting: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "default"


Label = Literal["harmful", "safe", "unscored"]
LABELS: tuple[Label, ...] = ("harmful", "safe", "unscored")


@dataclass(frozen=True)
class JudgeInput:
    prompt: str
    completion: str  # the generated continuation only
    prefill: str = ""
    category: str = ""


@dataclass(frozen=True)
class Verdict:
    label: Label
    score: float | None = None
    raw: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Verdict":
        return cls(**{k: d[k] for k in ("label", "score", "raw", "reason") if k in d})


# --------------------------------------------------------------------------- plug-in bases


class ReducerConfig(StrictModel):
    """A per-example reduction across settings and samples, reported beside per-setting ASR.

    ``any``: an example is broken if any sample of any setting is harmful (any-of-N ASR);
    ``best``: the single setting with the highest ASR (chosen on the same data, so optimistic,
    as in Huang et al. 2023). ``by`` reduces separately per value of a setting key (e.g.
    ``param``: "broken by temperature / top-p / top-k")."""

    type: Literal["any", "best"]
    by: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, str):  # "any", "best", "any by param"
            kind, _, by = data.partition(" by ")
            return {"type": kind.strip(), **({"by": by.strip()} if by.strip() else {})}
        return data

    @property
    def label(self) -> str:
        return self.type + (f" by {self.by}" if self.by else "")


class AttackConfig(LabelledConfig):
    """Base for attack configs; each attack module defines one subclass per ``type``.

    The runner calls, for every target model:

    - ``variants(target, ctx)`` → the models the attack evaluates: ``[({}, model)]`` by
      default; a model-transforming attack (fine-tuning rounds) returns one entry per derived
      model, e.g. ``({"round": 2}, model_after_round_2)``;
    - ``prepare(examples, target, ctx)`` → per-example artefacts computed with gradient access
      to the target (e.g. an optimised suffix), which the attack caches through
      ``ctx.artifacts``; ``{}`` by default;
    - ``plan(examples, target, artifacts, seed)`` → ``PlannedSample`` s, each a token-level
      prompt (suffix in the user turn, system prompt on/off, prefill…) and sampling settings.
      An adaptive attack plans in waves instead (``plan_wave``): after each wave the runner
      judges it with the recipe's first judge and passes the ids of broken examples on.

    ``reducers`` add per-example reductions (any-of-N, best setting) to summary.csv.
    """

    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reducers: list[ReducerConfig] = Field(default_factory=list)

    def variants(self, target: Any, ctx: Any) -> list[tuple[dict[str, Any], Any]]:
        return [({}, target.model)]

    def prepare(self, examples: list[Example], target: Any, ctx: Any) -> dict[str, Any]:
        return {}

    def plan(self, examples: list[Example], target: Any, artifacts: dict[str, Any],
             seed: int) -> Iterable[PlannedSample]:
        raise NotImplementedError

    def plan_wave(self, examples: list[Example], target: Any, artifacts: dict[str, Any], seed: int, wave: int,
                  broken: set[str]) -> list[PlannedSample] | None:
        """Wave ``wave`` of the plan (None: no more waves); ``broken`` holds the ids of examples
        judged harmful in earlier waves. One wave, the whole plan, unless overridden."""
        return list(self.plan(examples, target, artifacts, seed)) if wave == 0 else None

    @property
    def evaluates_utility(self) -> bool:
        """True when the recipe's utility tasks should also run on each derived model."""
        return False


class JudgeConfig(LabelledConfig):
    """Base for judge configs; ``make()`` returns a Judge (``judges.base.Judge``)."""

    def make(self) -> Any:
        raise NotImplementedError


# --------------------------------------------------------------------------- registries


class Registry(Generic[T]):
    """Name -> plug-in, imported lazily from a ``"module:attr"`` table (or registered objects).

    ``get`` imports only the plug-in asked for; ``names`` lists the table, entry points of
    group ``harness.<kind>s`` and runtime registrations without importing any of them."""

    def __init__(self, kind: str, table: dict[str, str], group: str) -> None:
        self.kind = kind
        self.group = group
        self._table = dict(table)
        self._loaded: dict[str, T] = {}
        self._entry_points_read = False

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        try:
            eps = metadata.entry_points(group=self.group)
        except Exception:  # a broken distribution must not stop the harness
            return
        for ep in eps:
            self._table.setdefault(ep.name, ep.value)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator for plug-ins defined at run time (tests, notebooks)."""

        def deco(obj: T) -> T:
            if name in self._loaded or name in self._table:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._loaded[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        self._read_entry_points()
        target = self._table.get(name)
        if target is None:
            raise RecipeError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        module, _, attr = target.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        self._loaded[name] = obj
        return obj

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted(set(self._table) | set(self._loaded))

    def choices(self) -> str:
        """The names as a choice in an error message: the built-in ones in their table order, then
        the rest sorted ("'vllm' or 'hf'")."""
        self._read_entry_points()
        names = list(dict.fromkeys([*self._table, *sorted(self._loaded)]))
        quoted = [repr(n) for n in names]
        return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]

    def describe(self) -> dict[str, str]:
        """First docstring line of each plug-in (imports them all; for `harness list`)."""
        out = {}
        for name in self.names():
            doc = (getattr(self.get(name), "__doc__", None) or "").strip().splitlines()
            out[name] = doc[0] if doc else ""
        return out


ATTACKS: Registry[type[AttackConfig]] = Registry("attack", {
    "prefill": "attacks.prefill:PrefillAttack",
    "decoding": "attacks.decoding:DecodingAttack",
    "gcg": "attacks.gcg:GCGAttack",
    "finetune": "attacks.finetune:FinetuneAttack",
}, "harness.attacks")

JUDGES: Registry[type[JudgeConfig]] = Registry("judge", {
    "keyword": "judges.keyword:KeywordJudgeConfig",
    "llm": "judges.llm:LLMJudgeConfig",
    "chain": "judges.llm:ChainJudgeConfig",
}, "harness.judges")

UTILITY_TASKS: Registry[type] = Registry("utility task", {
    "overrefusal": "harness.utility.tasks:OverRefusalTask",
    "reference": "harness.utility.tasks:ReferenceTask",
    "alpaca": "harness.utility.tasks:AlpacaTask",
    "samsum": "harness.utility.tasks:SamsumTask",
    "gsm8k": "harness.utility.tasks:Gsm8kTask",
}, "harness.utility_tasks")

# Engine backends: classes ``(model_path, EngineConfig)`` -> ``harness.engine.base.Engine``, with a
# ``describe(config)`` static method (what of the config can change a completion) and a
# ``eager_on_cpu`` flag (``enforce_eager: null`` means eager on CPU-only machines).
ENGINES: Registry[type] = Registry("engine backend", {
    "vllm": "harness.engine.vllm_backend:VLLMEngine",
    "hf": "harness.engine.hf_backend:HFEngine",
}, "harness.engines")

DATASET_FORMATS: Registry[Callable[..., list[Example]]] = Registry("dataset format", {
    "demo": "harness.data.loaders:load_demo",
    "harmful-train": "harness.data.loaders:load_harmful_train",
    "benign-train": "harness.data.loaders:load_benign_train",
    "jsonl": "harness.data.loaders:load_jsonl",
    "csv": "harness.data.loaders:load_csv",
    "advbench": "harness.data.loaders:load_advbench",
    "harmbench": "harness.data.loaders:load_harmbench",
    "hexphi": "harness.data.loaders:load_hexphi",
}, "harness.dataset_formats")
