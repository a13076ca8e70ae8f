"""Utility tables: per model × task × metric means with 95% intervals, and the scorecard.

``utility.csv``: one row per model × task × metric: mean over scored records, n (scored),
unscored (None values), and a 95% interval: Wilson for 0/1 metrics (refusal, exact
match), the normal approximation mean ± 1.96·sd/√n for continuous ones (ROUGE), clipped
to [0, 1] since every metric here is a rate or an F-measure. A metric a record does not
have (exact_match on a long answer) is not counted for it.

``scorecard.csv``: one row per model, the cost of safety beside its benefit: ASR at each
dataset/attack/setting (and reducer: ``any``, ``best``) for the first judge
(``asr/<dataset>/<attack>/<setting>``), then each utility metric (``<task>/<metric>``:
over-refusal rates, ROUGE, exact match; ``…@<setting>`` on a derived model). The pseudo-task
``turns/fabricated_turn`` is the share of all the model's completions (attacks and utility)
that run on into a made-up next turn (``harness.turns``); it should be 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from harness.intervals import mean_interval, wilson
from harness.runlog import SampleRecord
from harness.turns import has_fabricated_turn

UTILITY_CSV = "utility.csv"
SCORECARD_CSV = "scorecard.csv"
TURNS_TASK = "turns"  # pseudo-task: share of all a model's completions with a fabricated next turn
UTILITY_COLUMNS = ["model", "setting", "task", "metric", "n", "mean", "unscored", "ci_low", "ci_high", "ci"]


def is_binary(metric: str, values: list[float]) -> bool:
    """0/1 metrics get Wilson intervals; ROUGE is continuous even when every score is 0 or 1."""
    if metric.startswith("rouge"):
        return False
    return all(v in (0.0, 1.0) for v in values)


def normal_ci(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    _, low, high = mean_interval(values)
    return max(0.0, low), min(1.0, high)


def utility_table(records: Iterable[SampleRecord]) -> pd.DataFrame:
    """Per model × setting × task × metric summary of utility records that have ``metrics``.
    ``setting`` is "default" for the model itself, or names a derived model (a fine-tuning round)."""
    cells: dict[tuple[str, str, str, str], list[float | None]] = {}
    for r in records:
        if isinstance(r.get("completion"), str) and not r.get("skipped"):  # every completion of the model
            cells.setdefault((r["model"], "default", TURNS_TASK, "fabricated_turn"), []).append(
                float(has_fabricated_turn(r["completion"])))
        if r.get("kind") != "utility" or r.get("skipped") or not isinstance(r.get("metrics"), dict):
            continue
        for metric, value in r["metrics"].items():
            cells.setdefault((r["model"], r.get("setting_label") or "default", r["attack"], metric), []).append(value)
    rows = []
    for (model, setting, task, metric), values in cells.items():
        scored = [float(v) for v in values if v is not None]
        n = len(scored)
        binary = is_binary(metric, scored)
        if binary:
            lo, hi = wilson(round(sum(scored)), n)
        else:
            lo, hi = normal_ci(scored)
        rows.append(dict(model=model, setting=setting, task=task, metric=metric, n=n, mean=sum(scored) / n if n else float("nan"),
                         unscored=len(values) - n, ci_low=lo, ci_high=hi, ci="wilson" if binary else "normal"))
    return pd.DataFrame(rows, columns=UTILITY_COLUMNS)


def scorecard(summary: pd.DataFrame, utility: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """One row per model: ASR per dataset/attack/setting (first judge), then utility metrics."""
    models: list[str] = []
    cols: dict[str, dict[str, float]] = {}
    if not summary.empty:
        judge = judge if judge is not None and judge in set(summary["judge"]) else summary["judge"].iloc[0]
        for _, r in summary[summary["judge"] == judge].iterrows():
            models.append(r["model"])
            col = f"asr/{r['dataset']}/{r['attack']}/{r['setting']}"
            cols.setdefault(col, {})[r["model"]] = r["asr"]
    for _, r in utility.iterrows():
        models.append(r["model"])
        suffix = "" if r["setting"] == "default" else f"@{r['setting']}"
        cols.setdefault(f"{r['task']}/{r['metric']}{suffix}", {})[r["model"]] = r["mean"]
    models = list(dict.fromkeys(models))
    out = pd.DataFrame({"model": models, "judge": [judge or ""] * len(models)})
    for col, by_model in cols.items():
        out[col] = [by_model.get(m, float("nan")) for m in models]
    return out


def write_tables(run_dir: Path, records: Iterable[SampleRecord], summary: pd.DataFrame,
                 judge: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write utility.csv (when there are utility records) and scorecard.csv into ``run_dir``."""
    utility = utility_table(records)
    if not utility.empty:
        utility.to_csv(Path(run_dir) / UTILITY_CSV, index=False)
    card = scorecard(summary, utility, judge)
    card.to_csv(Path(run_dir) / SCORECARD_CSV, index=False)
    return utility, card
