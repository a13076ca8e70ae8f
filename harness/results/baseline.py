"""The report's comparison view (``harness report … --baseline RUN_DIR``): every cell of every
run given against the same cell of a baseline run, with the verdict ``harness regress`` would
give it (pass / regression / inconclusive; harness.results.regress_decision decides, nothing is
recomputed here).

Cells are those of ``harness regress`` (harness.results.regress.run_cells: per-setting and
any-of-N ASR cells, over-refusal cells), matched by model name (or the only model of each run),
dataset, attack, setting and judge. Unlike the gate, a report does not stop at a difference: a
cell whose configuration differs (dataset, attack, sampling or judge hash) is shown as "not
comparable" with the difference, a run that shares no model with the baseline is named in a
note, and cells of one run only are left out. Holm's adjustment runs over each run's compared
cells, as in the gate. Inconclusive cells are shown as such (the report gates nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.errors import HarnessError
from harness.results.formatting import pct, pts
from harness.results.regress import ConfigMismatch, check_configs, model_pairs, run_cells
from harness.results.regress_decision import GateSettings, decide, evaluate_cell
from harness.results.rundir import RunDir
from harness.results.stats import holm

__all__ = ["BaselineComparison", "compare_with_baseline"]

NOT_COMPARABLE = "not comparable"


@dataclass
class BaselineComparison:
    baseline: str
    settings: GateSettings
    cells: dict[tuple, dict[str, Any]] = field(default_factory=dict)  # cell key -> {delta, verdict, reason, …}
    rows: list[dict[str, Any]] = field(default_factory=list)  # the detail table, in order
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "regression": 0, "inconclusive": 0, NOT_COMPARABLE: 0}
        for r in self.rows:
            out[r["verdict"]] += 1
        return out


def _judges(run: RunDir) -> list[str]:
    out: list[str] = []
    for r in run.records():
        out += [j for j in (r.get("verdicts") or {}) if j not in out]
    return out


def compare_with_baseline(baseline: RunDir, runs: Sequence[RunDir],
                          settings: GateSettings | None = None) -> BaselineComparison:
    """Cells keyed (run label, the run's model name, kind, dataset, attack, setting, reducer, judge)
    (over-refusal: kind "overrefusal", dataset = task, attack "", judge "refused")."""
    settings = settings or GateSettings(allow_inconclusive=True)
    out = BaselineComparison(baseline.label, settings)
    judges = _judges(baseline)
    base = run_cells(baseline, judges)
    for run in runs:
        if run.kind != "eval" or run.path.resolve() == baseline.path.resolve():
            continue
        try:
            mapping, _ = model_pairs(baseline, run, settings)
        except HarnessError as e:
            out.notes.append(f"{run.label}: not compared ({e})")
            continue
        cand = {k: v for k, v in run_cells(run, judges).items() if k.model in mapping}
        compared, rows = [], []
        for key, cell in cand.items():
            bkey = type(key)(key.kind, mapping[key.model], key.dataset, key.attack, key.setting, key.reducer, key.judge)
            if bkey not in base:
                continue
            row = {"run": run.label, "model": key.model, "baseline_model": bkey.model, "cell": bkey.label(),
                   "key": (run.label, key.model, key.kind, key.dataset, key.attack, key.setting, key.reducer,
                           key.judge)}
            try:
                check_configs({bkey: base[bkey]}, {bkey: cell}, GateSettings())
            except ConfigMismatch as e:
                row.update(verdict=NOT_COMPARABLE, reason=str(e).split("\n")[1].strip(), delta="", base="", cand="",
                           n="")
                rows.append(row)
                continue
            result = evaluate_cell(bkey, base[bkey], cell, settings)
            compared.append((row, result))
            rows.append(row)
        for (row, result), p in zip(compared, holm([r.mcnemar.p_value for _, r in compared])):
            result.p_adjusted = p
            decide(result, settings.alpha)
            row.update(verdict=result.verdict, reason=result.reason, n=result.n,
                       delta=pts(result.candidate_rate - result.baseline_rate),
                       base=pct(result.baseline_rate), cand=pct(result.candidate_rate))
        for row in rows:
            out.cells[row["key"]] = {"verdict": row["verdict"], "delta": row["delta"], "reason": row["reason"],
                                     "base": row["base"], "cls": row["verdict"].replace(" ", "-")}
        out.rows += rows
    return out
