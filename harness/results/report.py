"""A self-contained HTML report of one or more run folders (``harness report``).

One file, no network: CSS, JavaScript and SVG charts are inline, and a Content-Security-
Policy allows only the page's own script (by hash), so the file opens offline and nothing
in it can fetch or run anything else. Layout (docs/report.md): the leaderboard, one row per
model merged across the runs (``harness.results.leaderboard``) with the depth summary
(``harness.results.depth``) and, given a baseline, the regress verdict per cell
(``harness.results.baseline``); the ASR-by-depth plot of every model right under it; the other
charts as small multiples (``harness.results.figures``), each downloadable as SVG; the judge
agreement where two judges scored the same samples; then, collapsed, every summary.csv and
utility.csv row, the per-category breakdown and the baseline comparison; the sample browser
(click any number to see its samples: prompt, the attack's edit, verdicts; completions only
with ``show_completions``) and each run's provenance (models with fingerprints, datasets,
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
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from harness.results.baseline import BaselineComparison, compare_with_baseline
from harness.results.depth import DEPTH_DEFINITION, RECOVERY_DEFINITION, depth_summary
from harness.results.figures import Figure, all_figures
from harness.results.formatting import interval, pct, sort_key
from harness.results.judge_table import agreement_rows
from harness.results.leaderboard import build_leaderboard, model_ids
from harness.results.rundir import RunDir, load_run, load_runs, run_labels
from harness.results.samples import SampleIndex, build_samples, clean, targets
from harness.runlog import Manifest


# --------------------------------------------------------------------------- formatting


def short(h: Any, n: int = 12) -> str:
    text = "" if h is None else str(h)
    return text if len(text) <= n else text[:n] + "…"


# --------------------------------------------------------------------------- tables


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
            cell = _asr_cell(row, targets(index, run, row))
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
                  title: str | None = None, baseline: RunDir | None = None, depth_dataset: str | None = None) -> str:
    """The report page as one HTML string; ``baseline``: a run to compare every cell with
    (``harness.results.baseline``); ``depth_dataset``: the dataset of the depth summary."""
    env = _environment()
    index = build_samples(runs, show_completions, samples_per_cell)
    where, ordered = model_ids(runs)
    depth = depth_summary(runs, where, ordered, depth_dataset)
    comparison: BaselineComparison | None = compare_with_baseline(baseline, runs) if baseline is not None else None
    board = build_leaderboard(runs, index, depth, comparison.cells if comparison is not None else None)
    figures: list[Figure] = all_figures(runs)
    script = env.loader.get_source(env, "report.js")[0]  # type: ignore[union-attr]
    style = env.loader.get_source(env, "report.css")[0]  # type: ignore[union-attr]

    def fig(f: Figure) -> dict[str, Any]:
        return {"section": f.section, "title": f.title, "svg": Markup(f.svg), "caption": f.caption}

    context = {
        "title": title or "Safety evaluation report — " + ", ".join(r.label for r in runs),
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": [run_metadata(r) for r in runs],
        "leaderboard": board,
        "depth": depth,
        "depth_figure": fig(depth.figure) if depth is not None and depth.figure is not None else None,
        "definitions": {"depth": DEPTH_DEFINITION, "recovery": RECOVERY_DEFINITION},
        "comparison": comparison,
        "agreement": agreement_rows(runs),
        "summary_rows": summary_rows(runs, index),
        "utility_rows": utility_rows(runs, index),
        "figures": [fig(f) for f in figures],
        "categories": category_blocks(runs),
        "show_completions": show_completions,
        "samples_per_cell": samples_per_cell,
        "data": clean(index.payload(show_completions, samples_per_cell)),
        "script": Markup(script), "style": Markup(style), "csp_script": _csp_hash(script),
        "incomplete": [r.label for r in runs if not r.complete],
    }
    return env.get_template("report.html.j2").render(**context)


def write_report(paths: Sequence[Path | str], out: Path, show_completions: bool = False,
                 samples_per_cell: int = 500, title: str | None = None, baseline: Path | str | None = None,
                 depth_dataset: str | None = None) -> Path:
    runs = load_runs(paths)
    base = None
    if baseline is not None:
        base = load_run(baseline, run_labels([*paths, baseline])[-1])
    html = render_report(runs, show_completions, samples_per_cell, title, base, depth_dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8", errors="replace")
    return out


__all__: Iterable[str] = ["render_report", "write_report"]
