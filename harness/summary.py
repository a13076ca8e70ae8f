"""ASR tables: per model × dataset × attack × setting × judge, with Wilson 95% intervals.

ASR = harmful / (harmful + safe). Unscored samples are excluded from ASR and counted;
skipped samples (e.g. a prefill source shorter than the depth) are counted too.
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

KEYS = ["model", "dataset", "attack", "setting"]
COLUMNS = KEYS + ["judge", "n", "harmful", "safe", "unscored", "skipped", "asr", "ci_low", "ci_high"]


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (scipy's implementation)."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def summarize(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows: dict[tuple, dict[str, Any]] = {}
    skipped: dict[tuple, int] = {}
    judges: list[str] = []
    order: list[tuple] = []
    for r in records:
        base = (r["model"], r["dataset"], r["attack"], r["setting_label"])
        if base not in skipped:
            skipped[base] = 0
            order.append(base)
        if r.get("skipped"):
            skipped[base] += 1
            continue
        for judge, v in (r.get("verdicts") or {}).items():
            if judge not in judges:
                judges.append(judge)
            row = rows.setdefault(base + (judge,), {"harmful": 0, "safe": 0, "unscored": 0})
            row[v["label"]] += 1
    out = []
    for base in order:
        for judge in judges or [""]:
            c = rows.get(base + (judge,), {"harmful": 0, "safe": 0, "unscored": 0})
            n = c["harmful"] + c["safe"]
            lo, hi = wilson(c["harmful"], n)
            out.append(dict(zip(KEYS, base), judge=judge, n=n, **c, skipped=skipped[base],
                            asr=c["harmful"] / n if n else float("nan"), ci_low=lo, ci_high=hi))
    return pd.DataFrame(out, columns=COLUMNS)


def _cell(row: pd.Series, show_n: bool) -> str:
    if row["n"] == 0:
        return "—"
    n = f" n={row['n']}" if show_n else ""
    unscored = f" u{row['unscored']}" if row["unscored"] else ""
    return f"{100 * row['asr']:.1f} ({100 * row['ci_low']:.0f}–{100 * row['ci_high']:.0f}){n}{unscored}"


def print_tables(summary: pd.DataFrame) -> None:
    """One table per dataset × attack × judge: models down, settings across."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if summary.empty:
        console.print("no samples")
        return
    for (dataset, attack, judge), part in summary.groupby(["dataset", "attack", "judge"], sort=False):
        settings = list(dict.fromkeys(part["setting"]))
        ns = set(part["n"])
        show_n = len(ns) > 1
        title = f"ASR % (95% CI) — {attack} on {dataset}, judge: {judge}" + ("" if show_n else f", n={ns.pop()} each")
        table = Table(title=title, title_justify="left")
        table.add_column("model")
        for s in settings:
            table.add_column(s, justify="right")
        for model, mpart in part.groupby("model", sort=False):
            by_setting = {r["setting"]: _cell(r, show_n) for _, r in mpart.iterrows()}
            table.add_row(model, *[by_setting.get(s, "") for s in settings])
        console.print(table)
        skipped = int(part["skipped"].sum())
        if skipped:
            console.print(f"  ({skipped} samples skipped: prefill source shorter than the depth; see samples.jsonl)")
        unscored = int(part["unscored"].sum())
        if unscored:
            console.print("  (uN: N unscored samples, excluded from ASR)")


def print_scorecard(card: pd.DataFrame) -> None:
    """The scorecard (scorecard.csv), ×100: ASR beside over-refusal and utility; metrics down,
    models across (fits a terminal for a handful of models)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if card.empty:
        console.print("no scorecard")
        return
    metrics = [c for c in card.columns if c not in ("model", "judge")]
    asr = [c.split("/", 3)[1:] for c in metrics if c.startswith("asr/")]
    one_run = len({(d, a) for d, a, _ in asr}) <= 1  # one dataset × attack: label ASR rows by setting only

    def label(col: str) -> str:
        if col.startswith("asr/"):
            dataset, attack, setting = col.split("/", 3)[1:]
            return f"ASR {setting}" if one_run else f"ASR {dataset}/{attack} {setting}"
        return col

    judge = str(card["judge"].iloc[0]) if "judge" in card and len(card) else ""
    table = Table(title=f"Scorecard ×100 (ASR judge: {judge or '—'}); lower is better for ASR and */refused",
                  title_justify="left")
    table.add_column("metric")
    for model in card["model"]:
        table.add_column(str(model), justify="right")
    for col in metrics:
        table.add_row(label(col), *["—" if pd.isna(v) else f"{100 * float(v):.1f}" for v in card[col]])
    console.print(table)
    console.print("  n and 95% CIs: summary.csv (ASR) and utility.csv (utility) in the run folder")
