"""The report's leaderboard: one row per model, merged across every run folder given.

Models are matched by their fingerprint (``manifest.models[name].fingerprint_id``; by name where
a run has none) and named by their name in the recipe; two different fingerprints under one name
get the fingerprint's first 8 characters after the name. Where several runs measured the same
model on the same column, the run given first on the command line fills the cell and the others
are named in its tooltip (every row is in the detail tables).

Columns: the depth summary (``harness.results.depth``), then per attack (× judge when the runs
have several): the worst case over the attack's settings (the highest per-setting ASR, setting
named in the tooltip) per dataset, and any-of-N where the attack reduces; then utility
(ROUGE-L) and over-refusal (the ``refused`` metric, e.g. XSTest). Every other utility metric is
in the utility table.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import pandas as pd

from harness.results.formatting import interval, number, pct, sort_key
from harness.results.rundir import RunDir
from harness.results.samples import SampleIndex, targets

__all__ = ["Column", "Leaderboard", "ModelId", "UTILITY_METRIC", "OVERREFUSAL_METRIC", "build_leaderboard",
           "make_cell", "model_ids", "shade"]

UTILITY_METRIC = "rougeL"
OVERREFUSAL_METRIC = "refused"
# cell shading: the colour of "bad" (ASR, over-refusal) and of "good" (utility, recovery), as r, g, b
BAD, GOOD = (213, 94, 0), (0, 114, 178)


@dataclass
class ModelId:
    """One leaderboard row: a model fingerprint (or a name where a run has no fingerprint)."""

    key: str
    name: str
    fingerprint: str
    runs: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # its names in the runs, first first
    base_name: str = ""  # its first name in a run (``name`` may add the fingerprint)


@dataclass(frozen=True)
class Column:
    key: str
    group: str  # the header above it
    label: str
    kind: str  # depth | recovery | asr | any | utility | overrefusal
    title: str = ""
    first: bool = False  # the first column of its group (a border on its left)


@dataclass
class Leaderboard:
    columns: list[Column]
    groups: list[dict[str, Any]]  # {label, span, title} in column order
    rows: list[dict[str, Any]]  # {model: ModelId, name, runs, rank, cells: {column key: cell}}


def _run_models(run: RunDir) -> list[str]:
    names = list(run.summary["model"]) if run.summary is not None else []
    names += list(run.utility["model"]) if run.utility is not None else []
    return list(dict.fromkeys(str(n) for n in names))


def model_ids(runs: Sequence[RunDir]) -> tuple[dict[tuple[str, str], ModelId], list[ModelId]]:
    """{(run label, model name): its row's ModelId}, and the ModelIds in first-seen order."""
    by_key: dict[str, ModelId] = {}
    where: dict[tuple[str, str], ModelId] = {}
    for run in runs:
        if run.kind != "eval":
            continue
        for name in _run_models(run):
            fp = str((run.manifest.models.get(name) or {}).get("fingerprint_id") or "")
            key = f"fp:{fp}" if fp else f"name:{name}"
            mid = by_key.setdefault(key, ModelId(key, name, fp, base_name=name))
            mid.runs += [run.label] if run.label not in mid.runs else []
            mid.names += [name] if name not in mid.names else []
            where[(run.label, name)] = mid
    ordered = list(by_key.values())
    clash = Counter(m.name for m in ordered)
    for m in ordered:
        if clash[m.name] > 1:
            m.name = f"{m.name} [{m.fingerprint[:8] or m.runs[0]}]"
    return where, ordered


def shade(value: Any, kind: str) -> str:
    """The cell's background (an inline style) for a rate in [0, 1]: orange for ASR and
    over-refusal, blue for utility and recovery, stronger for larger values."""
    v = number(value)
    if math.isnan(v):
        return ""
    r, g, b = GOOD if kind in ("utility", "recovery") else BAD
    return f"background: rgba({r}, {g}, {b}, {0.05 + 0.4 * min(max(v, 0.0), 1.0):.3f})"


def make_cell(value: Any, lo: Any, hi: Any, n: int, kind: str, run: str, target: str = "", unscored: int = 0,
              title: str = "") -> dict[str, Any]:
    """One leaderboard cell: the rate, its interval and n, shaded by ``kind``."""
    return {"text": pct(value), "sort": sort_key(value), "ci": interval(lo, hi), "n": n, "unscored": unscored,
            "target": target, "run": run, "title": title, "style": shade(value, kind), "also": [], "cmp": None,
            "value": number(value)}


def _asr_title(row: pd.Series, run: str, worst: bool) -> str:
    parts = [f"{pct(row['asr'])}% — 95% Wilson {interval(row['ci_low'], row['ci_high'])}, prompt-clustered "
             f"{interval(row['ci_low_clustered'], row['ci_high_clustered'])}", f"n = {int(row['n'])}"]
    if int(row["unscored"]):
        parts.append(f"{int(row['unscored'])} unscored (not in the ASR)")
    if worst:
        parts.append(f"worst setting: {row['setting']}")
    parts.append(f"run {run}")
    return " · ".join(parts)


def _put(cells: dict[str, dict[str, Any]], key: str, cell: dict[str, Any]) -> None:
    """The first run's cell stays; later runs' values are named in its tooltip."""
    if key in cells:
        cells[key]["also"].append(f"{cell['run']}: {cell['text']}%")
    else:
        cells[key] = cell


def _comparison(comparison: Mapping[tuple, dict[str, Any]] | None, key: tuple) -> dict[str, Any] | None:
    return None if comparison is None else comparison.get(key)


def build_leaderboard(runs: Sequence[RunDir], index: SampleIndex, depth: Any = None,
                      comparison: Mapping[tuple, dict[str, Any]] | None = None) -> Leaderboard:
    """``depth``: a ``harness.results.depth.DepthSummary`` (or None); ``comparison``: per-cell
    baseline verdicts keyed as ``harness.results.baseline.cell_key`` makes them."""
    where, ordered = model_ids(runs)
    cells: dict[str, dict[str, dict[str, Any]]] = {m.key: {} for m in ordered}
    attack_cols: dict[tuple[str, str], dict[str, list[str]]] = {}  # (attack, judge) -> {"asr": [...], "any": [...]}
    utility_cols: dict[str, Column] = {}
    judges = {j for run in runs if run.summary is not None for j in run.summary["judge"]}
    for run in runs:
        if run.kind != "eval":
            continue
        if run.summary is not None:
            for (model, dataset, attack, judge), g in run.summary.groupby(["model", "dataset", "attack", "judge"],
                                                                           sort=False):
                mid = where[(run.label, str(model))]
                cols = attack_cols.setdefault((attack, judge), {"asr": [], "any": []})
                samples = g[(g["reducer"] == "sample") & (g["n"] > 0)]
                if len(samples):
                    worst = samples.loc[samples["asr"].astype(float).idxmax()]
                    cell = make_cell(worst["asr"], worst["ci_low"], worst["ci_high"], int(worst["n"]), "asr", run.label,
                                 targets(index, run, worst), int(worst["unscored"]), _asr_title(worst, run.label, True))
                    cell["cmp"] = _comparison(comparison, (run.label, str(model), "asr", dataset, attack,
                                                           str(worst["setting"]), "sample", judge))
                    cols["asr"] += [dataset] if dataset not in cols["asr"] else []
                    _put(cells[mid.key], f"asr|{attack}|{judge}|{dataset}", cell)
                anys = g[(g["reducer"] == "any") & (g["setting"] == "any")]
                if len(anys):
                    row = anys.iloc[0]
                    cell = make_cell(row["asr"], row["ci_low"], row["ci_high"], int(row["n"]), "asr", run.label,
                                 targets(index, run, row), int(row["unscored"]), _asr_title(row, run.label, False))
                    cell["cmp"] = _comparison(comparison, (run.label, str(model), "asr", dataset, attack, "any", "any",
                                                           judge))
                    cols["any"] += [dataset] if dataset not in cols["any"] else []
                    _put(cells[mid.key], f"any|{attack}|{judge}|{dataset}", cell)
        if run.utility is not None:
            for _, u in run.utility[run.utility["setting"] == "default"].iterrows():
                if u["metric"] not in (UTILITY_METRIC, OVERREFUSAL_METRIC):
                    continue
                over = u["metric"] == OVERREFUSAL_METRIC
                kind = "overrefusal" if over else "utility"
                key = f"{kind}|{u['task']}"
                utility_cols.setdefault(key, Column(
                    key, "utility · over-refusal", f"over-refusal ({u['task']})" if over else f"ROUGE-L ({u['task']})",
                    kind, "share of benign prompts refused (lower is better)" if over else
                    "ROUGE-L against the reference answers (higher is better)"))
                cid = index.ids.get((run.label, "utility", u["model"], u["task"], "default"))
                title = (f"{pct(u['mean'])} — 95% {u['ci']} interval {interval(u['ci_low'], u['ci_high'])} · "
                         f"n = {int(u['n'])} · run {run.label}")
                cell = make_cell(u["mean"], u["ci_low"], u["ci_high"], int(u["n"]), kind, run.label,
                             "" if cid is None else str(cid), int(u["unscored"]), title)
                if over:
                    cell["cmp"] = _comparison(comparison, (run.label, str(u["model"]), "overrefusal", u["task"], "",
                                                           "default", "sample", OVERREFUSAL_METRIC))
                _put(cells[where[(run.label, str(u["model"]))].key], key, cell)

    columns: list[Column] = []
    groups: list[dict[str, Any]] = []
    if depth is not None:
        depth_cols = [Column("depth", "depth summary", "depth ASR", "depth", depth.definition),
                      Column("recovery", "depth summary", "recovery", "recovery", depth.recovery_definition)]
        columns += depth_cols
        groups.append({"label": "depth summary", "span": 2, "title": depth.where})
        for m in ordered:
            for col, cell in zip(depth_cols, depth.cells.get(m.key, ())):
                if cell is not None:
                    cells[m.key][col.key] = cell
    for (attack, judge), cols in attack_cols.items():
        group = attack if len(judges) < 2 else f"{attack} · {judge}"
        these = [Column(f"asr|{attack}|{judge}|{d}", group, d, "asr",
                        f"{attack} on {d}: the highest ASR over the attack's settings (judge {judge})")
                 for d in cols["asr"]]
        these += [Column(f"any|{attack}|{judge}|{d}", group, f"{d} any-of-N", "any",
                         f"{attack} on {d}: any-of-N ASR, a prompt counts if any setting or sample broke it")
                  for d in cols["any"]]
        columns += these
        groups.append({"label": group, "span": len(these), "title": f"judge {judge}"})
    util = sorted(utility_cols.values(), key=lambda c: (c.kind != "utility", c.key))
    if util:
        columns += util
        groups.append({"label": "utility · over-refusal", "span": len(util), "title": ""})

    columns = [replace(c, first=i == 0 or c.group != columns[i - 1].group) for i, c in enumerate(columns)]

    def rank_key(m: ModelId) -> tuple[float, str]:
        v = cells[m.key].get("depth", {}).get("value", math.nan)
        return (math.inf if math.isnan(v) else v, m.name)

    rows = []
    for rank, m in enumerate(sorted(ordered, key=rank_key), 1):
        rows.append({"model": m, "name": m.name, "rank": rank, "cells": cells[m.key],
                     "runs": ", ".join(m.runs), "fingerprint": m.fingerprint[:8],
                     "aliases": ", ".join(n for n in m.names if n != m.base_name)})
    return Leaderboard(columns, groups, rows)
