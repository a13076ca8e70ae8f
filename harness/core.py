"""The dependency-free core: shared types, config bases (with the hooks plug-ins implement) and
content hashes; the plug-in registries are in ``harness.registry``.

Every other module of the project may import this one; it imports nothing of the project but
``harness.errors``.

Data flows one way: recipe → dataset (``Example``) → attack (``PlannedSample``) → engine
(``Completion``) → judges (``Verdict``) → run log → report / regress.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    # keys added after hashes were recorded: left out of the hash while None, so configs that do
    # not use them keep the hash (and the caches) they had before the key existed
    unhashed_when_none: ClassVar[tuple[str, ...]] = ()

    @property
    def label(self) -> str:
        return self.name or self.type

    def config_hash(self) -> str:
        """Hash of every setting that changes what this config produces (its label excluded)."""
        exclude = {"name"} | {k for k in self.unhashed_when_none if getattr(self, k) is None}
        return content_hash(self.model_dump(mode="json", exclude=exclude))


def with_reference_mode(data: Any, modes: dict[str, dict[str, Any]], what: str,
                        defaults: dict[str, dict[str, Any]] | None = None) -> Any:
    """A plug-in config's raw data with its ``reference`` mode's fixed keys filled in; a key the
    recipe sets to another value is an error naming it (a reference mode is all or nothing).
    ``defaults``: per mode, keys the mode changes the default of but the recipe may still set."""
    if not isinstance(data, dict) or data.get("reference") is None:
        return data
    mode = data["reference"]
    fixed = modes.get(mode)
    if fixed is None:
        raise ValueError(f"reference: {mode!r} is not a {what} reference mode; known: {sorted(modes)}")
    for key, want in fixed.items():
        have = data.get(key, want)
        if (list(have) if isinstance(have, tuple) else have) != want:
            raise ValueError(f"reference: {mode} fixes {key} to {want!r}; got {key}: {have!r} (drop {key})")
    return {**(defaults or {}).get(mode, {}), **data, **fixed}


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


# --------------------------------------------------------------------------- presentation
# How an attack's samples read in the report and the export, as data the attack owns (hooks on
# ``AttackConfig``); the results layer draws what these describe.

LOSS_KEYS = ("losses", "loss_curve", "loss_history", "loss_trace", "loss")
EDIT_SKIP = {"prefill_text", "prefill_tokens"}  # shown as the prefill itself
SUFFIX_KEYS = ("suffix", "adv_suffix", "adv_string")


@dataclass(frozen=True)
class SettingChart:
    """A report chart of ASR against one key of an attack's settings, one per (dataset, attack,
    judge) — and per value of ``split`` when set — with one line per model × the other setting
    keys. ``title``, ``x_label`` may name the split value as ``{split}``; the figure's title
    ends with " — <attack> on <dataset> (judge <judge>)". ``note``: (key, value, label) — rows
    whose setting has key = value are listed in the caption as "<label>: <model>: <ASR>%"."""

    section: str
    title: str
    x: str
    x_label: str
    caption: str
    split: str | None = None
    split_values: tuple[str, ...] = ()
    as_float: bool = False  # x drawn as a float (else as recorded)
    note: tuple[str, str, str] | None = None


# Every attack's rows on derived models (``AttackConfig.variants``: ``{"round": r}``, fine-tuning
# rounds) are drawn per round; an attack's own ``charts`` add to this one.
ROUND_CHART = SettingChart("finetune", "ASR per fine-tuning round", "round",
                           "fine-tuning round (0: the model before the attack)",
                           "Each round's checkpoint evaluated on the recipe's datasets.")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def info_loss_curve(info: dict[str, Any]) -> list[float] | None:
    """The per-step losses an attack recorded in a sample's ``attack_info`` (the first of
    ``LOSS_KEYS`` holding a list of finite numbers), else None."""
    for key in LOSS_KEYS:
        value = info.get(key)
        if isinstance(value, list) and value and all(_finite(v) for v in value):
            return [float(v) for v in value]
    return None


def edit_text(info: dict[str, Any]) -> str:
    """What the attack did to a sample, for display: prefill, suffix, or its settings."""
    parts = []
    if info.get("prefill_text"):
        parts.append(f"prefill ({info.get('prefill_tokens', '?')} tokens): {info['prefill_text']}")
    for key in SUFFIX_KEYS:
        if info.get(key):
            parts.append(f"suffix: {info[key]}")
    curve = info_loss_curve(info)
    final = curve[-1] if curve else info.get("loss")
    if isinstance(final, (int, float)) and not isinstance(final, bool) and math.isfinite(final):
        parts.append(f"final loss {final:.4g}")
    rest = [f"{k}={v}" for k, v in info.items() if k not in EDIT_SKIP and not k.startswith(("suffix", "adv_"))
            and isinstance(v, (str, int, float, bool)) and v is not None and k != "prefill_text"]
    if rest and not parts:
        parts.append(", ".join(rest))
    return "; ".join(parts)


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

    Presentation (the report and the export read these, never the attack's type):
    ``threat_model`` (JailbreakBench's attack type: ``white_box`` needs weights or gradients,
    ``black_box`` queries; also ``transfer``, ``manual``), ``describe_edit(info)`` (one line on
    what the attack did to a sample, from its ``attack_info``) and ``charts`` (ASR against a
    setting key, drawn from the attack's summary rows; every attack's rows on derived models are
    drawn per round).
    """

    threat_model: ClassVar[str] = "black_box"
    charts: ClassVar[tuple[SettingChart, ...]] = (ROUND_CHART,)  # subclasses add theirs before it

    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reducers: list[ReducerConfig] = Field(default_factory=list)

    @classmethod
    def describe_edit(cls, info: dict[str, Any]) -> str:
        """What the attack did to a sample (its ``attack_info``), in one line: the prefill, the
        suffix and its final loss, else its settings (``edit_text``)."""
        return edit_text(info)

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
