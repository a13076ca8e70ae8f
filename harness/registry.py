"""The plug-in registries: attacks, judges, utility tasks, dataset formats and engine backends.

Plug-ins are named in tables of ``"module:attr"`` strings and imported on first use, as
lm-evaluation-harness does: registering a plug-in never imports the code that uses the
registry, so there are no import cycles. Third-party plug-ins add themselves through entry
points (group ``harness.<kind>s``, e.g. ``harness.attacks``) or with ``REGISTRY.register()``.
A config plug-in's registry key is its ``type`` (checked when it is loaded).
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable, Generic, TypeVar

from harness.core import AttackConfig, Example, JudgeConfig
from harness.errors import RecipeError

__all__ = ["ATTACKS", "DATASET_FORMATS", "ENGINES", "JUDGES", "UTILITY_TASKS", "Registry", "attack_class",
           "config_type"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plug-in, imported lazily from a ``"module:attr"`` table (or registered objects).

    ``get`` imports only the plug-in asked for; ``names`` lists the table, entry points of
    group ``harness.<kind>s`` and runtime registrations without importing any of them."""

    def __init__(self, kind: str, table: dict[str, str], group: str,
                 key: Callable[[T], str | None] | None = None) -> None:
        self.kind = kind
        self.group = group
        self.key = key  # the name a plug-in gives itself (a config's ``type``): checked on load
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

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator for plug-ins defined at run time (tests, notebooks); the name defaults to
        the one the plug-in gives itself (``key``)."""

        def deco(obj: T) -> T:
            own = self.key(obj) if self.key else None
            label = name or own
            if not label:
                raise ValueError(f"{self.kind} {obj!r}: give a name")
            if own and own != label:
                raise ValueError(f"{self.kind} {label!r}: the plug-in calls itself {own!r}")
            if label in self._loaded or label in self._table:
                raise ValueError(f"{self.kind} {label!r} registered twice")
            self._loaded[label] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Forget a plug-in registered at run time (``register``); a table entry stays."""
        if name in self._table:
            raise ValueError(f"{self.kind} {name!r} is a table entry; only run-time registrations can be removed")
        self._loaded.pop(name, None)

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        self._read_entry_points()
        target = self._table.get(name)
        if target is None:
            raise RecipeError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        module, _, attr = target.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        own = self.key(obj) if self.key else None
        if own is not None and own != name:
            raise RecipeError(f"{self.kind} {name!r} names {target}, which calls itself {own!r}")
        self._loaded[name] = obj
        return obj

    def find(self, name: str) -> T | None:
        """``get``, or None for a name nobody registered."""
        try:
            return self.get(name)
        except RecipeError:
            if name in self._table:  # registered but broken: say so
                raise
            return None

    def listed(self) -> list[str]:
        """The names in table order (built-ins as declared), then the others sorted."""
        self._read_entry_points()
        return list(dict.fromkeys([*self._table, *sorted(self._loaded)]))

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted(set(self._table) | set(self._loaded))

    def choices(self) -> str:
        """The names as a choice in an error message: the built-in ones in their table order, then
        the rest sorted ("'vllm' or 'hf'")."""
        quoted = [repr(n) for n in self.listed()]
        return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]

    def describe(self) -> dict[str, str]:
        """First docstring line of each plug-in (imports them all; for `harness list`)."""
        out = {}
        for name in self.names():
            doc = (getattr(self.get(name), "__doc__", None) or "").strip().splitlines()
            out[name] = doc[0] if doc else ""
        return out


def config_type(cls: Any) -> str | None:
    """The ``type`` a config class gives itself (its field's default), the registry key."""
    field_info = getattr(cls, "model_fields", {}).get("type")
    default = getattr(field_info, "default", None)
    return default if isinstance(default, str) else None


ATTACKS: Registry[type[AttackConfig]] = Registry("attack", {
    "prefill": "attacks.prefill:PrefillAttack",
    "decoding": "attacks.decoding:DecodingAttack",
    "gcg": "attacks.gcg:GCGAttack",
    "finetune": "attacks.finetune:FinetuneAttack",
}, "harness.attacks", key=config_type)

def attack_class(attack_type: str) -> type[AttackConfig]:
    """The config class of a recorded attack type (the base class for a type not installed), for
    the report and the export."""
    return ATTACKS.find(attack_type) or AttackConfig


JUDGES: Registry[type[JudgeConfig]] = Registry("judge", {
    "keyword": "judges.keyword:KeywordJudgeConfig",
    "llm": "judges.llm:LLMJudgeConfig",
    "chain": "judges.llm:ChainJudgeConfig",
    "all_of": "judges.combine:AllOfJudgeConfig",
}, "harness.judges", key=config_type)

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
