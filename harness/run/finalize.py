"""After generation: judge every sample, score utility, write the run's tables.

Shared by `harness run` and by re-judging a finished run (`harness judge`). Verdicts are
always recomputed from the current judge configs (LLM judges answer from their content-
addressed cache), so a verdict can never be older than the judge settings it is shown
under; each carries the ``judge_hash`` of the judge that gave it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from harness.core import ReducerConfig
from harness.run.provenance import judge_hash
from harness.run.store import SUMMARY, write_samples
from harness.run.summary import summarize
from harness.runlog import SampleRecord
from judges.agreement import write_judge_tables
from judges.base import Judge, JudgeInput
from judges.cache import default_cache_path


def judge_records(records: Sequence[SampleRecord], judges: Sequence[tuple[Any, Judge]], progress: bool = True,
                  cache_path: Path | None = None) -> None:
    """Set ``verdicts[judge]`` on every generated attack record, for each (config, judge)."""
    todo = [r for r in records if r.get("kind", "attack") == "attack" and not r.get("skipped")]
    for config, judge in judges:
        if not todo:
            break
        jhash = judge_hash(config, judge)
        inputs = [JudgeInput(r["prompt"], r["completion"], (r.get("attack_info") or {}).get("prefill_text", ""),
                             r.get("category", "")) for r in todo]
        if hasattr(judge, "use_cache"):  # LLM judges: cache, progress bar, and a local engine to free after
            judge.use_cache(cache_path)
            judge.progress = progress
        try:
            verdicts = judge.judge(inputs)
        finally:
            if hasattr(judge, "close"):
                judge.close()
        for rec, verdict in zip(todo, verdicts):
            rec.setdefault("verdicts", {})[judge.name] = dict(verdict.to_json(), judge_hash=jhash)


def mark_recovery(records: Sequence[SampleRecord]) -> None:
    """``recovered`` on every generated sample that continues a harmful prefill: whether the
    continuation turns to a refusal (a refusal phrase of the extended keyword list), the
    paper's "recovers after the prefix". None for an empty continuation."""
    from judges.keyword import KeywordJudgeConfig

    matcher = KeywordJudgeConfig(type="keyword").make()
    for r in records:
        if r.get("kind", "attack") == "attack" and not r.get("skipped") and \
                (r.get("attack_info") or {}).get("prefill_tokens", 0) > 0:
            text = (r.get("completion") or "").strip()
            r["recovered"] = None if not text else matcher.match(text) is not None


def score_utility(records: Sequence[SampleRecord], tasks: Sequence[Any]) -> None:
    """Give every utility record its task's metrics (recomputed: metric options may have changed)."""
    for task in tasks:
        todo = [r for r in records if r.get("kind") == "utility" and r["attack"] == task.label and not r.get("skipped")]
        for rec, metrics in zip(todo, task.score(todo) if todo else []):
            rec["metrics"] = metrics


def write_tables(run_dir: Path, records: Sequence[SampleRecord], reducers: dict[str, Sequence[ReducerConfig]],
                 first_judge: str | None) -> pd.DataFrame:
    """samples.jsonl, summary.csv, agreement/judge_scores, utility.csv and scorecard.csv; returns the summary."""
    write_samples(run_dir, records)
    summary = summarize(records, reducers)
    summary.to_csv(Path(run_dir) / SUMMARY, index=False)
    write_judge_tables(run_dir, records)  # agreement.csv (≥2 judges), judge_scores.csv
    from harness.utility.table import write_tables as write_utility  # utility.csv + scorecard.csv

    write_utility(run_dir, records, summary, first_judge)
    return summary


def finalize(run_dir: Path, records: list[SampleRecord], judges: Sequence[tuple[Any, Judge]],
             reducers: dict[str, Sequence[ReducerConfig]], utility_tasks: Sequence[Any] = (), progress: bool = True,
             cache_path: Path | None = None) -> pd.DataFrame:
    """Judge, score utility and write every table of ``run_dir``; returns the summary."""
    judge_records(records, judges, progress, cache_path or default_cache_path(run_dir))
    mark_recovery(records)
    score_utility(records, utility_tasks)
    return write_tables(run_dir, records, reducers, judges[0][1].name if judges else None)
