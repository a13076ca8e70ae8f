"""The report's sample cells: every run × model × dataset × attack × setting (utility: run ×
model × task × setting) with its samples, as the JSON the page's sample browser reads, and the
ids of the cells behind a summary row (``targets``)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from harness.registry import attack_class
from harness.results.rundir import RunDir, parse_setting_label
from harness.runlog import SampleRecord

__all__ = ["SampleIndex", "build_samples", "clean", "edit_text", "targets"]


# --------------------------------------------------------------------------- sample browser data


@dataclass
class SampleIndex:
    """Sample cells (run × model × dataset × attack × setting; utility: run × model × task ×
    setting) and the JSON the page's sample browser reads."""

    cells: list[dict[str, Any]] = field(default_factory=list)
    ids: dict[tuple[str, ...], int] = field(default_factory=dict)
    examples: list[list[Any]] = field(default_factory=list)
    example_ids: dict[tuple[str, ...], int] = field(default_factory=dict)
    samples: list[list[Any]] = field(default_factory=list)
    truncated: dict[int, int] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def cell(self, key: tuple[str, ...], info: dict[str, Any]) -> int:
        if key not in self.ids:
            self.ids[key] = len(self.cells)
            self.cells.append(info)
        return self.ids[key]

    def example(self, r: SampleRecord) -> int:
        key = (str(r.get("dataset")), str(r.get("example_id")), str(r.get("prompt")))
        if key not in self.example_ids:
            self.example_ids[key] = len(self.examples)
            self.examples.append([r.get("prompt") or "", r.get("category") or "", r.get("example_id") or ""])
        return self.example_ids[key]

    def payload(self, show_completions: bool, limit: int) -> dict[str, Any]:
        return {"cells": self.cells, "examples": self.examples, "samples": self.samples,
                "show_completions": show_completions, "limit": limit,
                "truncated": {str(k): v for k, v in self.truncated.items()}}


def _verdicts(r: SampleRecord) -> dict[str, list[str]]:
    out = {}
    for judge, v in (r.get("verdicts") or {}).items():
        if isinstance(v, dict):
            out[str(judge)] = [str(v.get("label") or "unscored"), str(v.get("reason") or v.get("raw") or "")]
    return out


def edit_text(run: RunDir, r: SampleRecord) -> str:
    """What the record's attack did to its sample, in the attack's words (``describe_edit``)."""
    return attack_class(run.attack_type(str(r.get("attack", "")))).describe_edit(r.get("attack_info") or {})


def build_samples(runs: Sequence[RunDir], show_completions: bool, limit: int) -> SampleIndex:
    index = SampleIndex()
    for run in runs:
        for r in run.records():
            kind = r.get("kind", "attack")
            if kind == "utility":
                key = (run.label, "utility", r["model"], r["attack"], r.get("setting_label") or "default")
                info = {"run": run.label, "kind": "utility", "model": r["model"], "dataset": r["attack"],
                        "attack": "", "setting": r.get("setting_label") or "default"}
            else:
                key = (run.label, "attack", r["model"], r["dataset"], r["attack"], r["setting_label"])
                info = {"run": run.label, "kind": "attack", "model": r["model"], "dataset": r["dataset"],
                        "attack": r["attack"], "setting": r["setting_label"]}
            cell = index.cell(key, info)
            index.counts[cell] += 1
            if index.counts[cell] > limit:
                index.truncated[cell] = index.counts[cell] - limit
                continue
            metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else None
            index.samples.append([cell, index.example(r), int(r.get("sample_index") or 0),
                                  edit_text(run, r), _verdicts(r),
                                  (r.get("completion") or "") if show_completions else None,
                                  r.get("skipped") or None, metrics])
    return index


def clean(obj: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def targets(index: SampleIndex, run: RunDir, row: pd.Series) -> str:
    """Sample-cell ids behind a summary row (a reducer row: the settings it reduces)."""
    base = (run.label, "attack", row["model"], row["dataset"], row["attack"])
    if row["reducer"] == "sample":
        cid = index.ids.get(base + (row["setting"],))
        return "" if cid is None else str(cid)
    if row["reducer"] == "best":
        cid = index.ids.get(base + (row["detail"],))
        return "" if cid is None else str(cid)
    group = row["setting"][4:-1] if row["setting"].startswith("any[") else ""
    by, _, value = group.partition("=")
    ids = []
    for key, cid in index.ids.items():
        if key[:5] != base:
            continue
        setting = parse_setting_label(key[5])
        if not by or str(setting.get(by, "")) == value:
            ids.append(str(cid))
    return ",".join(ids)
