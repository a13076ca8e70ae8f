"""The report's charts, each drawn when its data exists (inline SVG from ``harness.results.plots``).

- ASR against a setting key, as each attack's ``charts`` ask (``harness.core.SettingChart``:
  prefill depth, decoding parameter, fine-tuning round…), one line per model × the rest of the
  setting;
- attack loss curves (GCG-style): a list of losses per optimisation step in the records'
  ``attack_info`` (keys ``LOSS_KEYS``), mean over prompts with a 95% band;
- diagnostics runs (``harness.analysis.diagnostics``): KL by position, refusal log-probability by prefill
  depth, per-position cross-entropy and gradient norm, from their CSVs.

ASR is in percent with its 95% Wilson interval as a band. Several runs: series are named
``model (run)``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Sequence

import pandas as pd

from harness.core import LOSS_KEYS, AttackConfig, SettingChart, info_loss_curve
from harness.intervals import mean_interval
from harness.registry import ATTACKS, attack_class
from harness.results.plots import line_chart
from harness.results.rundir import AnalysisTable, RunDir, parse_setting_label



@dataclass(frozen=True)
class Figure:
    """A chart for the report: ``svg`` is markup from harness.results.plots (all text escaped there)."""

    section: str
    title: str
    svg: str
    caption: str = ""


def _series_name(model: str, run: RunDir, several_runs: bool, extra: str = "") -> str:
    name = model + (f" · {extra}" if extra else "")
    return f"{name} ({run.label})" if several_runs else name


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _asr_rows(run: RunDir, attack_types: Collection[str]) -> pd.DataFrame:
    s = run.summary
    if s is None or s.empty:
        return pd.DataFrame()
    keep = [run.attack_type(a) in attack_types for a in s["attack"]]
    return s[(s["reducer"] == "sample") & pd.Series(keep, index=s.index)]


def _add_point(series: dict[str, list[tuple[float, float]]], bands: dict[str, list[tuple[float, float, float]]],
               name: str, x: float, row: pd.Series) -> None:
    if not _finite(float(row["asr"])):
        return
    series[name].append((x, 100 * float(row["asr"])))
    if _finite(float(row["ci_low"])) and _finite(float(row["ci_high"])):
        bands[name].append((x, 100 * float(row["ci_low"]), 100 * float(row["ci_high"])))


def _chart(section: str, title: str, series: dict[str, list[tuple[float, float]]],
           bands: dict[str, list[tuple[float, float, float]]], x_label: str, caption: str,
           y_label: str = "ASR % (95% Wilson interval)", y_range: tuple[float, float] | None = (0.0, 100.0)) -> Figure:
    ordered = {k: sorted(v) for k, v in series.items()}
    svg = line_chart(ordered, title=title, x_label=x_label, y_label=y_label,
                     bands={k: sorted(v) for k, v in bands.items() if v and k in ordered}, y_range=y_range,
                     width=640, height=360)
    return Figure(section, title, svg, caption)


def _x(value: Any, chart: SettingChart) -> float | int | None:
    if not _finite(value) or isinstance(value, bool):
        return None
    return float(value) if chart.as_float else value


def chart_figures(runs: Sequence[RunDir], attack_types: Collection[str], chart: SettingChart) -> list[Figure]:
    """The figures of one ``SettingChart`` from the rows of ``attack_types`` (see ``harness.core.SettingChart``)."""
    groups: dict[tuple[str, str, str, str], tuple[dict, dict]] = {}
    notes: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    several = len(runs) > 1
    for run in runs:
        for _, row in _asr_rows(run, attack_types).iterrows():
            setting = parse_setting_label(row["setting"])
            split = setting.get(chart.split) if chart.split else ""
            rest = ", ".join(f"{k}={v}" for k, v in setting.items() if k not in (chart.x, chart.split))
            name = _series_name(row["model"], run, several, rest)
            base = (row["dataset"], row["attack"], row["judge"])
            if chart.note and setting.get(chart.note[0]) == chart.note[1] and _finite(float(row["asr"])):
                notes[base].append(f"{name}: {100 * float(row['asr']):.1f}%")
            x = _x(setting.get(chart.x), chart)
            if x is None or (chart.split and split not in chart.split_values):
                continue
            series, bands = groups.setdefault(base + (str(split),), (defaultdict(list), defaultdict(list)))
            _add_point(series, bands, name, x, row)
    out = []
    for (dataset, attack, judge, split), (series, bands) in groups.items():
        note = notes.get((dataset, attack, judge)) if chart.note else None
        caption = chart.caption + (f" {chart.note[2]}: {'; '.join(note)}." if chart.note and note else "")
        if series:
            out.append(_chart(chart.section, f"{chart.title.format(split=split)} — {attack} on {dataset} (judge {judge})",
                              series, bands, chart.x_label.format(split=split), caption))
    return out


def setting_figures(runs: Sequence[RunDir]) -> list[Figure]:
    """Every chart the runs' attacks ask for (``AttackConfig.charts``): each attack's own charts,
    attacks in registry order, then the charts every attack shares (``AttackConfig.charts``, e.g.
    per fine-tuning round) over the rows of all the attacks that keep them."""
    present = {run.attack_type(a) for run in runs if run.summary is not None and not run.summary.empty
               for a in run.summary["attack"]}
    ordered = [t for t in ATTACKS.listed() if t in present] + sorted(present - set(ATTACKS.listed()))
    out = []
    for attack_type in ordered:
        for chart in attack_class(attack_type).charts:
            if chart not in AttackConfig.charts:
                out += chart_figures(runs, {attack_type}, chart)
    for chart in AttackConfig.charts:
        out += chart_figures(runs, {t for t in ordered if chart in attack_class(t).charts}, chart)
    return out


def loss_curve(info: dict[str, Any], artifacts: dict[tuple[int, ...], list[float]] | None = None) -> list[float] | None:
    """The per-step losses of an optimisation attack: a list in ``attack_info`` (keys
    ``LOSS_KEYS``; GCG records only the final ``loss`` there), else the curve of the artefact
    whose suffix the sample used (``attack_info.suffix_ids``) from ``artifacts``
    (``RunDir.artifact_curves``), else None."""
    curve = info_loss_curve(info)
    if curve is not None:
        return curve
    ids = info.get("suffix_ids")
    if artifacts and isinstance(ids, list):
        try:
            return artifacts.get(tuple(int(i) for i in ids))
        except (TypeError, ValueError):
            return None
    return None


def _mean_band(curves: list[list[float]]) -> tuple[list[tuple[float, float]], list[tuple[float, float, float]]]:
    points, band = [], []
    for step in range(max(map(len, curves))):
        vals = [c[step] for c in curves if step < len(c)]
        mean, low, high = mean_interval(vals)
        points.append((float(step), mean))
        if len(vals) > 1:
            band.append((float(step), low, high))
    return points, band


def loss_figures(runs: Sequence[RunDir]) -> list[Figure]:
    groups: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    several = len(runs) > 1
    for run in runs:
        seen: set[tuple[Any, ...]] = set()  # one curve per optimisation (a universal suffix serves every prompt)
        records = run.records()
        wants_cache = any(isinstance((r.get("attack_info") or {}).get("suffix_ids"), list) for r in records)
        artifacts = run.artifact_curves() if wants_cache else {}
        for r in records:
            curve = loss_curve(r.get("attack_info") or {}, artifacts)
            key = (r.get("model", ""), r.get("attack", ""), tuple(curve or ()))
            if curve is None or key in seen:
                continue
            seen.add(key)
            groups[r.get("attack", "")][_series_name(r.get("model", ""), run, several)].append(curve)
    out = []
    for attack, by_model in groups.items():
        series, bands = {}, {}
        for name, curves in by_model.items():
            series[name], bands[name] = _mean_band(curves)
        n = sum(len(c) for c in by_model.values())
        out.append(_chart("loss", f"Attack loss by optimisation step — {attack}", series, bands, "step",
                          f"Mean over prompts ({n} curves) with a 95% band.", y_label="loss", y_range=None))
    return out


def _analysis_chart(table: AnalysisTable, run: RunDir, several: bool, group: str, x: str, y: str, title: str,
                    x_label: str, y_label: str, band: bool = True) -> Figure:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    bands: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for row in table.rows:
        name = (f"KL({row['a']} ‖ {row['b']})" if group == "pair" else str(row[group]))
        name = f"{name} ({run.label})" if several else name
        if _finite(row.get(x)) and _finite(row.get(y)) and row.get("n", 1) != 0:
            series[name].append((row[x], row[y]))
            if band and _finite(row.get("ci95_low")) and _finite(row.get("ci95_high")) and row.get("n", 0) > 1:
                bands[name].append((row[x], row["ci95_low"], row["ci95_high"]))
    return _chart("diagnostics", title, series, bands, x_label, f"From {table.stem}.csv in {run.label}.",
                  y_label=y_label, y_range=None)


def analysis_figures(runs: Sequence[RunDir]) -> list[Figure]:
    several = len(runs) > 1
    out = []
    for run in runs:
        for t in run.analyses:
            if not t.rows:
                continue
            if t.kind == "kl":
                out.append(_analysis_chart(t, run, several, "pair", "position", "mean",
                                           f"KL by response position — {t.stem}", "response token position t",
                                           "mean per-token KL (nats)"))
            elif t.kind == "refusal":
                out.append(_analysis_chart(t, run, several, "model", "depth", "mean_logprob",
                                           f"Refusal log-probability by prefill depth — {t.stem}",
                                           "prefill depth k", "mean log P(refusal prefix)"))
            elif t.kind == "grad":
                out.append(_analysis_chart(t, run, several, "model", "position", "mean_ce",
                                           f"Cross-entropy on attack data by position — {t.stem}",
                                           "response token position t", "mean cross-entropy (nats)", band=False))
                out.append(_analysis_chart(t, run, several, "model", "position", "grad_norm",
                                           f"Gradient norm of the per-position loss — {t.stem}",
                                           "response token position t", "‖∇θ CE_t‖₂", band=False))
    return out


def all_figures(runs: Sequence[RunDir]) -> list[Figure]:
    out: list[Figure] = []
    for make in (setting_figures, loss_figures, analysis_figures):
        out += make(runs)
    return out


__all__: Iterable[str] = ["Figure", "LOSS_KEYS", "all_figures", "loss_curve"]
