"""A self-contained HTML report of one or more run folders (``harness report``).

One file, no network: CSS, JavaScript and SVG charts are inline, and a Content-Security-
Policy allows only the page's own script (by hash), so the file opens offline and nothing
in it can fetch or run anything else. Sections: a leaderboard (models × attacks × datasets:
the worst setting's ASR with its 95% interval, any-of-N where the attack reduces, utility
and over-refusal beside them), every summary.csv and utility.csv row, charts
(``harness.results.figures``), a per-category breakdown, a sample browser (click any ASR to
see its samples: prompt, the attack's edit, verdicts; completions only with
``show_completions``) and each run's provenance (models with fingerprints, datasets,
attacks and judges with hashes, seed, engines, hardware, packages, git commit).

Model text is never trusted: tables are rendered by jinja2 with autoescaping, and the
sample browser's data is JSON inside ``<script type="application/json">`` with ``<``, ``>``
and ``&`` escaped (so ``</script>`` cannot end it), inserted into the page with
``textContent`` only.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from harness.registry import attack_class
from harness.results.figures import Figure, all_figures
from harness.results.formatting import number, pct
from harness.results.rundir import RunDir, load_runs, parse_setting_label
from harness.runlog import Manifest, SampleRecord

OVERREFUSAL_METRICS = ("refused", "full_refusal", "partial_refusal", "refused_unsafe")


# --------------------------------------------------------------------------- formatting


def interval(lo: Any, hi: Any) -> str:
    a, b = number(lo), number(hi)
    return "" if math.isnan(a) or math.isnan(b) else f"{100 * a:.0f}–{100 * b:.0f}"


def sort_key(x: Any) -> str:
    v = number(x)
    return "" if math.isnan(v) else f"{v:.6f}"


def short(h: Any, n: int = 12) -> str:
    text = "" if h is None else str(h)
    return text if len(text) <= n else text[:n] + "…"


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


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- tables


def _targets(index: SampleIndex, run: RunDir, row: pd.Series) -> str:
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


def _asr_cell(row: pd.Series | None, target: str) -> dict[str, Any]:
    if row is None:
        return {"text": "", "sort": "", "ci": "", "n": "", "unscored": 0, "target": "", "detail": ""}
    return {"text": pct(row["asr"]), "sort": sort_key(row["asr"]), "ci": interval(row["ci_low"], row["ci_high"]),
            "ci_clustered": interval(row["ci_low_clustered"], row["ci_high_clustered"]), "n": int(row["n"]),
            "unscored": int(row["unscored"]), "target": target, "detail": str(row.get("setting", ""))}


def summary_rows(runs: Sequence[RunDir], index: SampleIndex) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        if run.summary is None:
            continue
        for _, row in run.summary.iterrows():
            cell = _asr_cell(row, _targets(index, run, row))
            out.append({"run": run.label, "model": row["model"], "dataset": row["dataset"], "attack": row["attack"],
                        "setting": row["setting"], "reducer": row["reducer"], "judge": row["judge"], "asr": cell,
                        "harmful": int(row["harmful"]), "skipped": int(row["skipped"]),
                        "recovery": pct(row["recovery_rate"]), "recovery_sort": sort_key(row["recovery_rate"]),
                        "detail": row["detail"]})
    return out


def utility_rows(runs: Sequence[RunDir], index: SampleIndex) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        if run.utility is None:
            continue
        for _, row in run.utility.iterrows():
            cid = index.ids.get((run.label, "utility", row["model"], row["task"], row["setting"]))
            out.append({"run": run.label, "model": row["model"], "setting": row["setting"], "task": row["task"],
                        "metric": row["metric"], "mean": pct(row["mean"]), "sort": sort_key(row["mean"]),
                        "ci": interval(row["ci_low"], row["ci_high"]), "n": int(row["n"]),
                        "unscored": int(row["unscored"]), "target": "" if cid is None else str(cid)})
    return out


@dataclass
class Leaderboard:
    groups: list[dict[str, Any]]  # one per dataset × attack × judge: {label, has_any}
    utility: list[dict[str, str]]  # one per task × metric: {key, label}
    rows: list[dict[str, Any]]


def _group_key(row: pd.Series) -> tuple[str, str, str]:
    return (row["dataset"], row["attack"], row["judge"])


def leaderboard(runs: Sequence[RunDir], index: SampleIndex) -> Leaderboard:
    """Rows: run × model. Per dataset × attack × judge: the highest per-setting ASR (the
    worst case over the attack's settings, named) and the ``any`` reducer (any-of-N) where the
    attack has one; then each utility metric of the model itself (setting "default")."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    utility: dict[tuple[str, str], dict[str, str]] = {}
    rows = []
    for run in runs:
        if run.kind != "eval" or run.summary is None:
            continue
        s, u = run.summary, run.utility
        models = list(dict.fromkeys(list(s["model"]) + (list(u["model"]) if u is not None else [])))
        for model in models:
            row: dict[str, Any] = {"run": run.label, "model": model, "asr": {}, "any": {}, "utility": {}}
            part = s[s["model"] == model]
            for key, g in part.groupby(["dataset", "attack", "judge"], sort=False):
                info = groups.setdefault(key, {"label": f"{key[1]} · {key[0]}", "judge": key[2], "has_any": False,
                                               "key": "|".join(key)})
                samples = g[(g["reducer"] == "sample") & (g["n"] > 0)]
                if len(samples):
                    worst = samples.loc[samples["asr"].astype(float).idxmax()]
                    row["asr"][info["key"]] = _asr_cell(worst, _targets(index, run, worst))
                anys = g[(g["reducer"] == "any") & (g["setting"] == "any")]
                if len(anys):
                    info["has_any"] = True
                    row["any"][info["key"]] = _asr_cell(anys.iloc[0], _targets(index, run, anys.iloc[0]))
            if u is not None:
                for _, ur in u[(u["model"] == model) & (u["setting"] == "default")].iterrows():
                    ukey = f"{ur['task']}/{ur['metric']}"
                    label = (f"over-refusal ({ur['task']})" if ur["metric"] == "refused" else ukey)
                    utility.setdefault((ur["task"], ur["metric"]), {"key": ukey, "label": label,
                                                                    "over": str(ur["metric"] in OVERREFUSAL_METRICS)})
                    cid = index.ids.get((run.label, "utility", model, ur["task"], "default"))
                    row["utility"][ukey] = {"text": pct(ur["mean"]), "sort": sort_key(ur["mean"]),
                                            "ci": interval(ur["ci_low"], ur["ci_high"]), "n": int(ur["n"]),
                                            "target": "" if cid is None else str(cid)}
            rows.append(row)
    ordered_utility = sorted(utility.values(), key=lambda d: (d["over"] != "True", d["key"]))
    return Leaderboard(list(groups.values()), ordered_utility, rows)


# --------------------------------------------------------------------------- per category


def category_blocks(runs: Sequence[RunDir]) -> list[dict[str, Any]]:
    """Per dataset × attack × judge: ASR per category (rows) and run × model (columns), one
    table body per setting (and ``any`` where the attack reduces)."""
    # counts[(dataset, attack, judge)][setting][(run, model)][category] = [harmful, scored]
    counts: dict[tuple[str, str, str], dict[str, dict[tuple[str, str], dict[str, list[int]]]]] = {}
    any_seen: dict[tuple, dict[str, str]] = defaultdict(dict)
    for run in runs:
        reduces = {a for a, e in run.manifest.attacks.items()
                   if any((red or {}).get("type") == "any" if isinstance(red, dict) else str(red).startswith("any")
                          for red in (e.config.get("reducers") or []))}
        for r in run.records():
            if r.get("kind", "attack") != "attack" or r.get("skipped"):
                continue
            for judge, v in (r.get("verdicts") or {}).items():
                label = (v or {}).get("label")
                if label not in ("harmful", "safe"):
                    continue
                block = counts.setdefault((r["dataset"], r["attack"], judge), {})
                cat = str(r.get("category") or "—")
                cell = block.setdefault(r["setting_label"], {}).setdefault((run.label, r["model"]), {})
                cell.setdefault(cat, [0, 0])
                cell[cat][0] += label == "harmful"
                cell[cat][1] += 1
                if r["attack"] in reduces:
                    key = (r["dataset"], r["attack"], judge, run.label, r["model"], str(r.get("example_id")))
                    prev = any_seen[key].get("label")
                    any_seen[key] = {"label": "harmful" if "harmful" in (prev, label) else "safe", "category": cat}
    for (dataset, attack, judge, run_label, model, _), v in any_seen.items():
        cell = counts[(dataset, attack, judge)].setdefault("any", {}).setdefault((run_label, model), {})
        cell.setdefault(v["category"], [0, 0])
        cell[v["category"]][0] += v["label"] == "harmful"
        cell[v["category"]][1] += 1
    blocks = []
    for (dataset, attack, judge), by_setting in counts.items():
        columns = list(dict.fromkeys(c for cols in by_setting.values() for c in cols))
        categories = sorted({cat for cols in by_setting.values() for cats in cols.values() for cat in cats})
        bodies = []
        for setting, cols in by_setting.items():
            rows = []
            for cat in categories:
                cells = []
                for col in columns:
                    h, n = cols.get(col, {}).get(cat, [0, 0])
                    cells.append({"text": pct(h / n) if n else "—", "sort": sort_key(h / n) if n else "", "n": n,
                                  "heat": f"{h / n:.2f}" if n else ""})
                rows.append({"category": cat, "cells": cells})
            bodies.append({"setting": setting, "rows": rows})
        several = len({c[0] for c in columns}) > 1
        blocks.append({"id": f"cat{len(blocks)}", "title": f"{attack} on {dataset} (judge {judge})",
                       "columns": [f"{m} ({r})" if several else m for r, m in columns], "bodies": bodies})
    return blocks


# --------------------------------------------------------------------------- metadata


def _models(manifest: Manifest) -> list[dict[str, str]]:
    out = []
    for name, m in manifest.models.items():
        fp = m.get("fingerprint") or {}
        derived = m.get("derived") or {}
        out.append({"name": name, "fingerprint_id": str(m.get("fingerprint_id", "")),
                    "weights": str(fp.get("weights_sha256") or fp.get("revision") or fp.get("hub_revision") or ""),
                    "template": str(fp.get("chat_template_sha256") or ""), "source": str(m.get("source", "")),
                    "spec": str(m.get("spec") or m.get("path") or ""),
                    "derived": ", ".join(f"{k}: {(v or {}).get('fingerprint_id', '')}" for k, v in derived.items())})
    return out


def _compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def run_metadata(run: RunDir) -> dict[str, Any]:
    m = run.manifest
    git, hw = m.git, m.hardware
    cpu = hw.get("cpu") or {}
    return {
        "label": run.label, "path": str(run.path), "kind": run.kind, "status": _text(m.status),
        "run_id": _text(m.run_id), "recipe": str(m.recipe.get("name", "")),
        "recipe_hash": _text(m.recipe_hash), "seed": _text(m.seed), "limit": str(m.limit),
        "started": _text(m.started), "finished": _text(m.finished),
        "git": f"{git.get('commit') or 'unknown'}{' (dirty)' if git.get('dirty') else ''}",
        "command": " ".join(map(str, m.command)),
        "models": _models(m),
        "datasets": [{"label": k, "n": str(v.get("n", "")), "hash": str(v.get("hash", ""))}
                     for k, v in m.datasets.items()],
        "attacks": [{"label": k, "type": _text(v.type), "hash": _text(v.hash), "config": _compact(v.config)}
                    for k, v in m.attacks.items()],
        "utility": [{"label": k, "type": str(v.get("type", "")), "hash": str(v.get("hash", "")), "n": str(v.get("n", "")),
                     "dataset_hash": str(v.get("dataset_hash", ""))} for k, v in m.utility.items()],
        "judges": [{"name": k, "type": _text(v.type), "hash": _text(v.hash), "config": _compact(v.config)}
                   for k, v in m.judges.items()],
        "analyses": [{"label": k, "type": str(v.get("type", "")),
                      "dataset": f"{(v.get('dataset') or {}).get('label', '')} (n={(v.get('dataset') or {}).get('n', '')}, "
                                 f"hash {(v.get('dataset') or {}).get('hash', '')})",
                      "files": ", ".join(v.get("files") or [])} for k, v in m.analyses.items()],
        "engines": [{"hash": k, "text": _compact(v)} for k, v in m.engines.items()],
        "hardware": f"{cpu.get('model', '?')} ({cpu.get('cores', '?')} cores; {', '.join(cpu.get('flags') or [])}); "
                    f"GPU: {hw.get('gpu') or 'none'}; device {hw.get('device', '?')}",
        "packages": ", ".join(f"{k} {v}" for k, v in m.packages.items() if v),
        "counts": _compact(m.counts), "timings": _compact(m.timings),
    }


# --------------------------------------------------------------------------- page


def _environment() -> Environment:
    """The page's jinja2 environment. Its ``|tojson`` (jinja2's ``htmlsafe_json_dumps``) writes JSON
    safe inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and ``'`` as \\u003c,
    \\u003e, \\u0026, \\u0027 (so ``</script>`` and ``<!--`` cannot occur), every non-ASCII
    character as \\uXXXX (lone surrogates included), no NaN, keys in the payload's order."""
    env = Environment(loader=PackageLoader("harness", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": True, "allow_nan": False, "default": str,
                                         "separators": (",", ":")}
    return env


def _csp_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def render_report(runs: Sequence[RunDir], show_completions: bool = False, samples_per_cell: int = 500,
                  title: str | None = None) -> str:
    """The report page as one HTML string."""
    env = _environment()
    index = build_samples(runs, show_completions, samples_per_cell)
    figures: list[Figure] = all_figures(runs)
    script = env.loader.get_source(env, "report.js")[0]  # type: ignore[union-attr]
    style = env.loader.get_source(env, "report.css")[0]  # type: ignore[union-attr]
    context = {
        "title": title or "Safety evaluation report — " + ", ".join(r.label for r in runs),
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": [run_metadata(r) for r in runs],
        "leaderboard": leaderboard(runs, index),
        "summary_rows": summary_rows(runs, index),
        "utility_rows": utility_rows(runs, index),
        "figures": [{"section": f.section, "title": f.title, "svg": Markup(f.svg), "caption": f.caption}
                    for f in figures],
        "categories": category_blocks(runs),
        "show_completions": show_completions,
        "samples_per_cell": samples_per_cell,
        "data": _clean(index.payload(show_completions, samples_per_cell)),
        "script": Markup(script), "style": Markup(style), "csp_script": _csp_hash(script),
        "incomplete": [r.label for r in runs if not r.complete],
    }
    return env.get_template("report.html.j2").render(**context)


def write_report(paths: Sequence[Path | str], out: Path, show_completions: bool = False,
                 samples_per_cell: int = 500, title: str | None = None) -> Path:
    runs = load_runs(paths)
    html = render_report(runs, show_completions, samples_per_cell, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8", errors="replace")
    return out


__all__: Iterable[str] = ["render_report", "write_report"]
