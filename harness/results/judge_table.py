"""The report's judge-agreement table: wherever two judges scored the same samples of a run,
Cohen's κ, percent agreement and the confusion counts of each judge pair, over all the run's
attack samples and per model (``judges.agreement.pairwise_agreement``, as in agreement.csv)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from judges.agreement import LABELS, pairwise_agreement
from harness.results.formatting import sort_key
from harness.results.rundir import RunDir

__all__ = ["agreement_rows"]


def _num(x: Any, digits: int) -> str:
    v = float(x)
    return "—" if math.isnan(v) else f"{v:.{digits}f}"


def agreement_rows(runs: Sequence[RunDir]) -> list[dict[str, Any]]:
    """One row per run × scope (all models, then each model) × judge pair, for runs whose samples
    carry two or more judges' verdicts."""
    out = []
    for run in runs:
        if run.kind != "eval":
            continue
        records = [r for r in run.records() if r.get("kind", "attack") == "attack"]
        judges = {j for r in records for j in (r.get("verdicts") or {})}
        if len(judges) < 2:
            continue
        models = list(dict.fromkeys(str(r.get("model")) for r in records))
        scopes = [("all models", records)] + ([(m, [r for r in records if str(r.get("model")) == m]) for m in models]
                                              if len(models) > 1 else [])
        for scope, recs in scopes:
            for _, row in pairwise_agreement(recs).iterrows():
                out.append({"run": run.label, "scope": scope, "a": row["judge_a"], "b": row["judge_b"],
                            "n": int(row["n"]), "agree": _num(row["percent_agreement"], 1),
                            "kappa": _num(row["kappa"], 2), "kappa_sort": sort_key(row["kappa"]),
                            "confusion": [[int(row[f"{x}_{y}"]) for y in LABELS] for x in LABELS],
                            "labels": list(LABELS)})
    return out
