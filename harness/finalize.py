"""After generation: run judges on unjudged samples, compact, write summary tables.

Shared by `harness run` and by re-judging a finished run (`harness judge`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from harness.store import SUMMARY, RunStore
from harness.summary import summarize
from judges.agreement import write_judge_tables
from judges.base import Judge, JudgeInput
from judges.cache import default_cache_path


def judge_missing(store: RunStore, judges: Sequence[Judge], progress: bool = True, force: bool = False,
                  cache_path: Path | None = None) -> int:
    """Give every generated sample a verdict from each judge (one batch per judge); returns verdicts
    added. LLM judges read and write the judge cache (default ``<results root>/.cache/judgments.sqlite``)."""
    added = 0
    for judge in judges:
        todo = [r for r in store.records.values() if r.get("kind", "attack") == "attack"
                and not r.get("skipped") and (force or judge.name not in r["verdicts"])]
        if not todo:
            continue
        inputs = [JudgeInput(r["prompt"], r["completion"], r.get("prefill_text", ""), r.get("category", ""))
                  for r in todo]
        if hasattr(judge, "use_cache"):  # LLM judges: cache, progress bar, and a local engine to free after
            judge.use_cache(cache_path or default_cache_path(store.dir))
            judge.progress = progress
        try:
            verdicts = judge.judge(inputs)
        finally:
            if hasattr(judge, "close"):
                judge.close()
        for rec, verdict in zip(todo, verdicts):
            rec["verdicts"][judge.name] = verdict.to_json()
        added += len(todo)
    return added


def score_utility(store: RunStore, tasks: Sequence[Any]) -> None:
    """Give every utility record its task's metrics (once)."""
    for task in tasks:
        todo = [r for r in store.records.values() if r.get("kind") == "utility" and r["attack"] == task.label
                and not r.get("skipped") and "metrics" not in r]
        for rec, metrics in zip(todo, task.score(todo) if todo else []):
            rec["metrics"] = metrics


def finalize(store: RunStore, judges: Sequence[Judge], progress: bool = True, force: bool = False,
             utility_tasks: Sequence[Any] = ()) -> pd.DataFrame:
    """Judge, score utility, compact samples.jsonl, and write summary.csv, utility.csv and scorecard.csv;
    returns the summary."""
    judge_missing(store, judges, progress, force)
    score_utility(store, utility_tasks)
    store.compact()
    summary = summarize(r for r in store.records.values() if r.get("kind", "attack") == "attack")
    summary.to_csv(store.dir / SUMMARY, index=False)
    write_judge_tables(store.dir, store.records.values())  # agreement.csv (≥2 judges), judge_scores.csv
    from harness.utility.table import write_tables  # utility.csv + scorecard.csv (ASR beside utility)

    write_tables(store.dir, store.records.values(), summary, judges[0].name if judges else None)
    return summary
