"""Side-by-side comparison of runs (``harness compare``): ASR per matching cell and its change.

Cells are summary.csv rows matched on (model, dataset, attack, setting, reducer, judge); the
first run is the reference and every other run gets its ASR and its difference from it.
Utility rows (utility.csv) are matched on (model, setting, task, metric) the same way. Cells
missing from some run are listed separately, and a matched cell whose dataset, attack or
judge hash differs between runs is flagged (its ASRs measure different things).

The differences here are descriptive; ``harness regress`` tests them (paired, per prompt).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from harness.errors import DataError
from harness.results.formatting import pct, pts
from harness.results.rundir import CELL_KEYS, RunDir

UTILITY_KEYS = ["model", "setting", "task", "metric"]
HASHES = ("dataset_hash", "attack_hash", "judge_hash")


@dataclass
class Comparison:
    """``cells``/``utility``: one row per matched key, with per-run value columns; ``only``:
    (section, key, the runs that have it) for unmatched cells."""

    labels: list[str]
    cells: pd.DataFrame
    utility: pd.DataFrame
    only: pd.DataFrame


def _indexed(df: pd.DataFrame, keys: list[str], where: str) -> dict[tuple, pd.Series]:
    """Rows by key, in file order; a duplicated key is an error naming the file."""
    out: dict[tuple, pd.Series] = {}
    for _, row in df.iterrows():
        key = tuple(str(row[k]) for k in keys)
        if key in out:
            raise DataError(f"{where}: duplicate rows for {dict(zip(keys, key))}")
        out[key] = row
    return out


def _hash_flag(rows: list[pd.Series]) -> str:
    differ = [h.replace("_hash", "") for h in HASHES if h in rows[0] and len({str(r[h]) for r in rows}) > 1]
    return ("differs: " + ", ".join(differ)) if differ else "same"


def _matched(tables: list[dict[tuple, pd.Series]], labels: list[str], keys: list[str], value: str,
             extra: Sequence[str], section: str) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    every = list(dict.fromkeys(k for t in tables for k in t))
    rows, only = [], []
    for key in every:
        found = [t.get(key) for t in tables]
        if any(r is None for r in found):
            have = [lab for lab, r in zip(labels, found) if r is not None]
            only.append((section, " / ".join(key), ", ".join(have)))
            continue
        row: dict[str, object] = dict(zip(keys, key))
        for col in extra:
            row[col] = found[0][col]
        ref = float(found[0][value])
        for lab, r in zip(labels, found):
            row[f"{value}[{lab}]"] = float(r[value])
            row[f"n[{lab}]"] = int(r["n"])
        for lab, r in zip(labels[1:], found[1:]):
            row[f"diff[{lab}]"] = float(r[value]) - ref
        if section == "asr":
            row["config"] = _hash_flag(found)  # type: ignore[arg-type]
        rows.append(row)
    return pd.DataFrame(rows), only


def compare_runs(runs: Sequence[RunDir]) -> Comparison:
    """Match the runs' summary.csv and utility.csv rows (the first run is the reference)."""
    if len(runs) < 2:
        raise DataError("compare: give at least two run folders")
    evals = [r for r in runs if r.kind == "eval"]
    if len(evals) != len(runs):
        bad = [str(r.path) for r in runs if r.kind != "eval"]
        raise DataError(f"compare: {', '.join(bad)} is a diagnostics (analyze) run; compare evaluation runs")
    labels = [r.label for r in runs]
    summaries = [_indexed(r.summary, CELL_KEYS, str(r.path / "summary.csv")) for r in runs]  # type: ignore[arg-type]
    cells, only = _matched(summaries, labels, CELL_KEYS, "asr", ["detail"], "asr")
    utilities = [_indexed(r.utility if r.utility is not None else pd.DataFrame(columns=UTILITY_KEYS + ["mean", "n"]),
                          UTILITY_KEYS, str(r.path / "utility.csv")) for r in runs]
    utility, only_u = _matched(utilities, labels, UTILITY_KEYS, "mean", [], "utility")
    return Comparison(labels, cells, utility, pd.DataFrame(only + only_u, columns=["section", "cell", "present in"]))


# --------------------------------------------------------------------------- rendering


def _cell_name(r: pd.Series, section: str, judges: int) -> str:
    if section == "utility":
        return f"{r['model']} · {r['task']} · {r['metric']}" + ("" if r["setting"] == "default" else f" @{r['setting']}")
    name = f"{r['model']} · {r['dataset']} · {r['attack']} · {r['setting']}"
    return name + (f" [{r['judge']}]" if judges > 1 else "")


def _display_rows(cmp: Comparison, section: str, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows as text; ``compact`` joins the key columns into one (console)."""
    df = cmp.cells if section == "asr" else cmp.utility
    keys = CELL_KEYS if section == "asr" else UTILITY_KEYS
    value = "asr" if section == "asr" else "mean"
    judges = len(set(df["judge"])) if section == "asr" and len(df) else 1
    head = (["cell"] if compact else list(keys)) + [f"{value} {lab}" for lab in cmp.labels]
    head += [f"Δ {lab}" for lab in cmp.labels[1:]] + ["n"] + (["config"] if section == "asr" else [])
    rows = []
    for _, r in df.iterrows():
        ns = sorted({int(r[f"n[{lab}]"]) for lab in cmp.labels})
        cells = [_cell_name(r, section, judges)] if compact else [str(r[k]) for k in keys]
        cells += [pct(r[f"{value}[{lab}]"]) for lab in cmp.labels]
        cells += [pts(r[f"diff[{lab}]"]) for lab in cmp.labels[1:]]
        cells.append("/".join(map(str, ns)))
        if section == "asr":
            cells.append(str(r["config"]))
        rows.append(cells)
    return head, rows


def print_comparison(cmp: Comparison) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    for section, title in (("asr", "ASR %"), ("utility", "utility ×100")):
        head, rows = _display_rows(cmp, section, compact=True)
        if not rows:
            continue
        table = Table(title=f"{title}: {' vs '.join(cmp.labels)} (Δ = run − {cmp.labels[0]}, points)",
                      title_justify="left")
        for h in head:
            table.add_column(h, justify="left" if h in ("cell", "config") else "right",
                             overflow="fold" if h == "cell" else "ellipsis")
        for row in rows:
            table.add_row(*[escape(x) for x in row])
        console.print(table)
    if len(cmp.only):
        console.print("cells not in every run:", markup=False)
        for _, r in cmp.only.iterrows():
            console.print(f"  [{r['section']}] {r['cell']} — only in {r['present in']}", markup=False)


def comparison_csv(cmp: Comparison) -> str:
    """One CSV: matched ASR rows, matched utility rows and unmatched cells (``section`` column)."""
    parts = [cmp.cells.assign(section="asr"), cmp.utility.assign(section="utility"),
             cmp.only.rename(columns={"present in": "present_in"}).assign(section=lambda d: "only:" + d["section"])]
    out = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame()
    if "section" in out:
        out = out[["section"] + [c for c in out.columns if c != "section"]]
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    return buf.getvalue()


def md_cell(text: object) -> str:
    """Text for a Markdown table cell: pipes, backslashes and newlines escaped."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def comparison_markdown(cmp: Comparison) -> str:
    lines = [f"# Run comparison: {' vs '.join(md_cell(lab) for lab in cmp.labels)}", "",
             f"Δ = run − {md_cell(cmp.labels[0])}, in percentage points.", ""]
    for section, title in (("asr", "ASR (%)"), ("utility", "Utility and over-refusal (×100)")):
        head, rows = _display_rows(cmp, section)
        if not rows:
            continue
        lines += [f"## {title}", "", "| " + " | ".join(md_cell(h) for h in head) + " |",
                  "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    if len(cmp.only):
        lines += ["## Cells not in every run", "", "| section | cell | present in |", "|---|---|---|"]
        lines += [f"| {md_cell(r['section'])} | {md_cell(r['cell'])} | {md_cell(r['present in'])} |"
                  for _, r in cmp.only.iterrows()]
        lines.append("")
    return "\n".join(lines)
